"""Gallery search micro-benchmark: latency and throughput of the sharded FAISS gallery on Ray.

For each embedding width, gallery size, index kind and shard count it builds a real
``ShardedGallery`` (Ray actors, as the pipeline runs it), fills it with re-id-like synthetic
embeddings (identities as random unit centres, their views as noisy copies), then times batches
of queries (fresh views of gallery identities) and reports ms per batch, queries/s and
recall@k against exact numpy search. Prints a Markdown table.

    python bench/gallery_bench.py                      # the full grid (a few minutes on 2 cores)
    python bench/gallery_bench.py --sizes 10000 --dims 512 --kinds flat
    python bench/gallery_bench.py --fit cuhk03-labeled --fit-dim 256 --sizes 1000000 --kinds ivf \
        --shards 1 --threads 1 --nlist 1414 --nprobe 56 --per-identity 1 --single 500 \
        --queries 200                                  # the 1M-identity row (BENCHMARKS.md)

``--single N`` also times N one-query searches (what the linker does per track) and reports
their p50 / p99 in ms; MB/shard is the resident memory of a shard actor after the build.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dims", type=int, nargs="+", default=[1280, 512])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"])
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--queries", type=int, default=32, help="queries per search batch")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent per setting")
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs given to local Ray")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nlist", type=int, default=0,
                        help="ivf: lists per shard (0: ~sqrt(vectors per shard))")
    parser.add_argument("--nprobe", type=int, default=0, help="ivf: lists visited (0: nlist/8)")
    parser.add_argument("--threads", type=int, default=0,
                        help="FAISS threads per shard (0: the cores shared out among the shards)")
    parser.add_argument("--single", type=int, default=0, help="one-query searches to time")
    parser.add_argument("--ivf-storage", default="", help="ivf: f32 | fp16 (default: the config's)")
    parser.add_argument("--per-identity", type=int, default=8, help="vectors per identity")
    parser.add_argument("--family", type=int, default=0,
                        help="identities per look-alike family (0: all independent)")
    parser.add_argument("--fit", default="",
                        help="a Market-layout dataset: draw identities and views from a Gaussian "
                        "fitted to the shipped embedder's features of its test split (--dims is "
                        "then the embedder's width)")
    parser.add_argument("--fit-dim", type=int, default=0,
                        help="with --fit: project the real features on their top principal "
                        "directions first (a deployment can store PCA-reduced embeddings)")
    return parser.parse_args()


def embeddings(
    n: int, dim: int, rng: np.random.Generator, per_identity: int = 8, family: int = 0
):
    """Unit vectors clustered by identity; returns (vectors, identity centres, identity ids).

    ``family`` > 0: identities come in look-alike families of that many (centres drawn around
    a family centre), as re-id embeddings do (similar clothes, one camera's colour cast); 0:
    independent identities, the worst case for an approximate index."""
    from reidstream.gallery import l2_normalize

    count = n // per_identity + 1
    centres = rng.standard_normal((count, dim), dtype=np.float32)
    if family > 0:
        families = rng.standard_normal((count // family + 1, dim), dtype=np.float32)
        centres = families[np.arange(count) // family] + 0.8 * centres
    centres = l2_normalize(centres)
    gid = np.arange(n) // per_identity
    vecs = np.empty((n, dim), np.float32)
    for lo in range(0, n, 20_000):  # in chunks: the noise of 100k x 1280 at once is 1 GB
        hi = min(n, lo + 20_000)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) * (0.6 / math.sqrt(dim))
        vecs[lo:hi] = l2_normalize(centres[gid[lo:hi]] + noise)
    return vecs, centres, gid


def fitted_embeddings(
    dataset: str, n: int, rng: np.random.Generator, per_identity: int, fit_dim: int = 0
):
    """Vectors drawn like real re-id embeddings, to second order: the shipped embedder's
    features of a real test split give the spread of identity means (between) and of views
    around them (within); 1M identities are drawn from the first, their views from the second.
    Random isotropic vectors are far harder for an index than learned features, which
    concentrate in a few directions."""
    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.data.market import load_dataset
    from reidstream.evaluation.evaluate import extract_features
    from reidstream.gallery import l2_normalize
    from reidstream.models import Embedder

    cfg = load_config()
    assets = Assets.from_config(cfg.assets)
    split = load_dataset(dataset, assets, cfg.data)
    embedder = Embedder.from_config(cfg, assets)
    feats, ids, _ = extract_features(embedder, split.query + split.gallery, progress=False)
    if fit_dim:
        centred = feats - feats.mean(0)
        _, sv, vt = np.linalg.svd(centred, full_matrices=False)
        kept = float((sv[:fit_dim] ** 2).sum() / (sv**2).sum())
        print(f"# top {fit_dim} principal directions keep {kept:.1%} of the features' variance")
        feats = l2_normalize((feats @ vt[:fit_dim].T).astype(np.float32))
    means = np.stack([feats[ids == i].mean(0) for i in np.unique(ids)])
    within = feats - means[np.searchsorted(np.unique(ids), ids)]
    mu, between = means.mean(0), np.cov(means, rowvar=False)
    within_cov = np.cov(within, rowvar=False)

    def sampler(cov: np.ndarray):
        vals, vecs = np.linalg.eigh(cov)
        return (vecs * np.sqrt(np.clip(vals, 0, None))).astype(np.float32)

    b, w = sampler(between), sampler(within_cov)
    dim = feats.shape[1]
    count = n // per_identity + 1
    centres = (mu + rng.standard_normal((count, dim), dtype=np.float32) @ b.T).astype(np.float32)
    gid = np.arange(n) // per_identity
    vecs = np.empty((n, dim), np.float32)
    for lo in range(0, n, 20_000):
        hi = min(n, lo + 20_000)
        noise = rng.standard_normal((hi - lo, dim), dtype=np.float32) @ w.T
        vecs[lo:hi] = l2_normalize(centres[gid[lo:hi]] + noise)
    print(f"# fitted to {len(feats)} real features of {len(means)} identities ({dataset}); "
          f"view-to-view cosine of one identity ~{_pair_cosine(feats, ids):.2f}")
    return vecs, centres, gid, w


def fresh_views(centres: np.ndarray, of: np.ndarray, rng: np.random.Generator,
                view_noise: np.ndarray | None) -> np.ndarray:
    """New views of identities ``of``: the queries (fitted noise, else isotropic)."""
    from reidstream.gallery import l2_normalize

    dim = centres.shape[1]
    noise = rng.standard_normal((len(of), dim), dtype=np.float32)
    if view_noise is not None:
        return l2_normalize(centres[of] + noise @ view_noise.T)
    return l2_normalize(centres[of] + noise * (0.6 / math.sqrt(dim)))


def _pair_cosine(feats: np.ndarray, ids: np.ndarray) -> float:
    sims = feats @ feats.T
    same = (ids[:, None] == ids[None, :]) & ~np.eye(len(ids), dtype=bool)
    return float(sims[same].mean())


def index_config(base, kind: str, size: int, shards: int, args: argparse.Namespace):
    """Index sizes scaled to the vectors each shard will hold."""
    per_shard = size // shards
    nlist = args.nlist or max(16, int(round(math.sqrt(per_shard))))
    return dataclasses.replace(
        base,
        index=kind,
        num_shards=shards,
        nlist=nlist,
        nprobe=args.nprobe or max(8, nlist // 8),
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction,
        ivf_storage=args.ivf_storage or base.ivf_storage,
        # One shard gets every core, four share them; the pipeline's shard actor has one thread.
        threads=args.threads or max(1, args.num_cpus // shards),
        use_gpu=False,
    )


def main() -> int:
    args = parse_args()
    import ray

    from reidstream.config import load_config
    from reidstream.gallery import ShardedGallery

    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        object_store_memory=1024**3,
        log_to_driver=False,
    )
    base = load_config().gallery
    rng = np.random.default_rng(args.seed)
    print(
        f"# gallery bench: {platform.node()} {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, Ray num_cpus={args.num_cpus}, Q={args.queries}, k={args.k}"
    )
    header = (
        "| D | vectors | index | shards | threads/shard | build s | ms/batch p50 | ms/batch p95 "
        "| queries/s | recall@k | ms/query p50 / p99 | MB/shard | params |"
    )
    print(header)
    print("|---" * 13 + "|")
    t_all = time.perf_counter()
    for dim in [0] if args.fit else args.dims:  # fitted: the features' width
        view_noise = None
        if args.fit:
            vecs_all, centres, gid_all, view_noise = fitted_embeddings(
                args.fit, max(args.sizes), rng, args.per_identity, args.fit_dim
            )
            dim = vecs_all.shape[1]
        else:
            vecs_all, centres, gid_all = embeddings(
                max(args.sizes), dim, rng, args.per_identity, args.family
            )
        for size in args.sizes:
            vecs, gid = vecs_all[:size], gid_all[:size]
            ids = np.arange(size, dtype=np.int64)
            probe_gid = rng.integers(0, gid[-1] + 1, args.queries)
            queries = fresh_views(centres, probe_gid, rng, view_noise)
            singles = fresh_views(
                centres, rng.integers(0, gid[-1] + 1, max(args.single, 1)), rng, view_noise
            )
            exact = exact_top_k(queries, vecs, args.k)
            meta = [
                {"global_id": int(g), "camera": "cam1", "track_id": int(i), "start_ms": int(i),
                 "end_ms": int(i)}
                for i, g in zip(ids.tolist(), gid.tolist(), strict=True)
            ]  # fmt: skip
            for kind in args.kinds:
                for shards in args.shards:
                    cfg = index_config(base, kind, size, shards, args)
                    row = run_one(ShardedGallery, cfg, dim, ids, vecs, meta, queries, exact, args,
                                  singles)
                    ivf = f"nlist={cfg.nlist} nprobe={cfg.nprobe} {cfg.ivf_storage}"
                    params = {"flat": "exact", "ivf": ivf}
                    params["hnsw"] = (
                        f"M={cfg.hnsw_m} efC={cfg.hnsw_ef_construction} efS={cfg.hnsw_ef_search}"
                    )
                    print(
                        f"| {dim} | {size} | {kind} | {shards} | {cfg.threads} "
                        f"| {row['build_s']:.1f} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} "
                        f"| {row['qps']:.0f} | {row['recall']:.3f} | {row['single']} "
                        f"| {row['mb_per_shard']:.0f} | {params[kind]} |",
                        flush=True,
                    )
        del vecs_all
    print(f"# total {time.perf_counter() - t_all:.0f} s")
    ray.shutdown()
    return 0


def exact_top_k(queries: np.ndarray, vecs: np.ndarray, k: int) -> np.ndarray:
    """Exact inner-product top k, in chunks of the gallery (1M x 960 at once is 4 GB of sims)."""
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for lo in range(0, len(vecs), 100_000):
        sims = queries @ vecs[lo : lo + 100_000].T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        best_s = np.concatenate([best_s, np.take_along_axis(sims, top, axis=1)], axis=1)
        best_i = np.concatenate([best_i, top + lo], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, keep, axis=1)
        best_i = np.take_along_axis(best_i, keep, axis=1)
    return best_i


def run_one(gallery_cls, cfg, dim, ids, vecs, meta, queries, exact, args, singles) -> dict:
    t0 = time.perf_counter()
    gallery = gallery_cls.create(cfg, dim)
    try:
        chunk = 10_000
        for lo in range(0, ids.size, chunk):
            gallery.add(ids[lo : lo + chunk], vecs[lo : lo + chunk], meta[lo : lo + chunk])
        assert gallery.size() == ids.size
        build_s = time.perf_counter() - t0
        _, found = gallery.search(queries, args.k)  # warm-up, and the recall sample
        recall = np.mean([len(set(f) & set(e)) / args.k for f, e in zip(found, exact, strict=True)])
        times = []
        start = time.perf_counter()
        while len(times) < 3 or (time.perf_counter() - start < args.seconds and len(times) < 200):
            t = time.perf_counter()
            gallery.search(queries, args.k)
            times.append(time.perf_counter() - t)
        single = "-"
        if args.single:
            one = []
            for q in singles:
                t = time.perf_counter()
                gallery.search(q[None], args.k)
                one.append((time.perf_counter() - t) * 1000)
            single = f"{np.percentile(one, 50):.2f} / {np.percentile(one, 99):.2f}"
        mb = max(s["rss_bytes"] for s in gallery.stats()) / 1e6
    finally:
        gallery.shutdown()
    ms = np.asarray(times) * 1000
    return {
        "build_s": build_s,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "qps": args.queries / float(np.median(ms) / 1000),
        "recall": float(recall),
        "single": single,
        "mb_per_shard": mb,
    }


if __name__ == "__main__":
    raise SystemExit(main())
