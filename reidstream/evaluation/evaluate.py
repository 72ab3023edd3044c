"""Query/gallery evaluation of an Embedder: features, ranking metrics, re-ranking, figures.

``evaluate(cfg, assets)`` is what ``reidstream eval`` runs; ``evaluate_embedder`` is the same
for an Embedder a caller already holds (a training job evaluating its model in memory), and
``save_report`` writes metrics.json and the figures.

Images reach the model exactly as in serving: read as BGR uint8 with OpenCV and handed to
``Embedder.embed``, which resizes and normalises them, so the numbers measure the deployed
preprocessing, not a separate test transform.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from reidstream.assets import Assets
from reidstream.config import Config, EvalConfig
from reidstream.data.crossmodal import modality_name, protocol_split, render
from reidstream.data.market import ImageRecord, load_dataset
from reidstream.evaluation.metrics import RankingMetrics, compute_distance, evaluate_ranking

if TYPE_CHECKING:
    from reidstream.models import Embedder

log = logging.getLogger(__name__)

CAMERA_MODES = ("index", "unknown")


def read_bgr(path: str | Path) -> np.ndarray:
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return image


def _batches(records: Sequence[ImageRecord], size: int) -> Iterator[list[np.ndarray]]:
    """Decoded batches, the next one read on a thread while the model runs on this one."""
    chunks = [records[s : s + size] for s in range(0, len(records), size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_read_chunk, chunks[0])
        for nxt in [*chunks[1:], None]:
            images = pending.result()
            if nxt is not None:
                pending = pool.submit(_read_chunk, nxt)
            yield images


def _read_chunk(records: Sequence[ImageRecord]) -> list[np.ndarray]:
    return [render(r, read_bgr(r.path)) for r in records]


def extract_features(
    embedder: Embedder,
    records: Sequence[ImageRecord],
    batch_size: int = 64,
    cameras: str = "index",
    progress: bool = True,
    desc: str = "features",
    camera_names: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features float32 [N, D] L2-normalised, pids [N], camids [N]) for the records.

    ``cameras="index"`` passes each record's 0-based camera id as the model's camera-table
    index (right when the model was trained on this dataset's cameras); ``"unknown"`` passes
    -1 for every image, so the model's unknown-camera fallback applies (a dataset whose
    cameras it never saw).
    """
    from tqdm.auto import tqdm

    if cameras not in CAMERA_MODES:
        raise ValueError(f"cameras must be one of {CAMERA_MODES}, got {cameras!r}")
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    pids = np.array([r.pid for r in records], dtype=np.int64)
    camids = np.array([r.camid for r in records], dtype=np.int64)
    if camera_names:  # dataset camera k is the deployed camera camera_names[k]
        if camids.max(initial=0) >= len(camera_names):
            raise ValueError(f"eval.camera_names {list(camera_names)} names fewer cameras than "
                             f"the dataset has ({camids.max() + 1})")
        cam_in = [camera_names[c] for c in camids.tolist()]
    else:
        cam_in = camids.tolist() if cameras == "index" else [-1] * len(records)
    modalities = [modality_name(r.modality) for r in records]  # visible / infrared per image
    feats = []
    with tqdm(total=len(records), desc=desc, unit="img", disable=not progress) as bar:
        start = 0
        for images in _batches(records, batch_size):
            stop = start + len(images)
            feats.append(embedder.embed(images, cam_in[start:stop], modalities[start:stop]))
            start += len(images)
            bar.update(len(images))
    dim = embedder.feature_dim
    out = np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
    return out.astype(np.float32, copy=False), pids, camids


def subset_split(
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    max_queries: int = 0,
    max_gallery: int = 0,
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """A deterministic smaller query/gallery pair that stays a meaningful test.

    Queries are whole identities, evenly spaced over the sorted ids, up to ``max_queries``
    images. The gallery keeps images of those identities first, taken round-robin over
    (identity, camera) so each camera of each identity keeps some, then evenly spaced
    distractor identities up to ``max_gallery``. Both keep their original order; 0 means
    no limit.
    """
    query, gallery = list(query), list(gallery)
    if 0 < max_queries < len(query):
        per_id = Counter(r.pid for r in query)
        ids = sorted(per_id)
        guess = max(1, round(max_queries * len(ids) / len(query)))
        chosen: set[int] = set()
        count = 0
        for i in _evenly_spaced(len(ids), guess):
            if count + per_id[ids[i]] > max_queries and chosen:
                break
            chosen.add(ids[i])
            count += per_id[ids[i]]
        query = [r for r in query if r.pid in chosen]
    if 0 < max_gallery < len(gallery):
        wanted = {r.pid for r in query}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(gallery):
            if r.pid in wanted:
                groups.setdefault((r.pid, r.camid), []).append(i)
        own = [i for round_ in zip_longest(*groups.values()) for i in round_ if i is not None]
        own = own[:max_gallery]
        others = [i for i, r in enumerate(gallery) if r.pid not in wanted]
        fill = [others[i] for i in _evenly_spaced(len(others), max_gallery - len(own))]
        gallery = [gallery[i] for i in sorted(own + fill)]
    return query, gallery


def _evenly_spaced(n: int, k: int) -> list[int]:
    if k <= 0 or n <= 0:
        return []
    return sorted(set(np.linspace(0, n - 1, min(k, n)).round().astype(int).tolist()))


@dataclass
class EvalReport:
    model: str
    checkpoint: str
    dataset: str
    scoring: str
    feature_dim: int
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    metrics: RankingMetrics
    distmat: np.ndarray
    reranked: RankingMetrics | None = None
    distmat_reranked: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    date: str = ""
    init: str = ""  # how an untrained model's weights were set (no checkpoint)
    # (query camid, gallery camid) pairs the protocol leaves out (SYSU-MM01's same-room pairs)
    ignored_camera_pairs: list[tuple[int, int]] = field(default_factory=list)

    def results(self) -> dict[str, RankingMetrics]:
        out = {"original": self.metrics}
        if self.reranked is not None:
            out["re-ranked"] = self.reranked
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "checkpoint": self.checkpoint,
            "init": self.init,
            "dataset": self.dataset,
            "scoring": self.scoring,
            "feature_dim": self.feature_dim,
            "num_query": len(self.query),
            "num_gallery": len(self.gallery),
            "num_query_ids": len({r.pid for r in self.query}),
            "date": self.date,
            "timings_s": self.timings,
            "results": {name: m.to_dict() for name, m in self.results().items()},
            "config": self.config,
        }

    def table(self) -> str:
        """The printed summary: one row per ranking (original, re-ranked), metrics in %."""
        head = (
            f"{self.model} ({self.checkpoint or self.init}) on {self.dataset}: "
            f"{len(self.query)} queries, {len(self.gallery)} gallery, "
            f"{self.feature_dim}-d features, {self.scoring}"
        )
        cols = ["Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"]
        lines = [head, f"  {'ranking':<10} " + " ".join(f"{c:>7}" for c in cols) + "  valid q"]
        for name, m in self.results().items():
            vals = [m.rank(k) if k <= len(m.cmc) else float("nan") for k in (1, 5, 10)]
            vals += [m.mAP, m.mINP]
            nums = " ".join(f"{100 * v:>7.2f}" for v in vals)
            lines.append(f"  {name:<10} {nums}  {m.num_valid_queries}/{m.num_queries}")
        return "\n".join(lines)


def evaluate_embedder(
    embedder: Embedder,
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    eval_cfg: EvalConfig,
    dataset: str = "",
    progress: bool = True,
    ignored_camera_pairs: Sequence[tuple[int, int]] = (),
) -> EvalReport:
    """Features, distances (cosine/euclidean, or DIMN's mapped-gallery scores), metrics and,
    when ``eval_cfg.rerank``, k-reciprocal re-ranked metrics. ``ignored_camera_pairs``: the
    dataset's (query camera, gallery camera) exclusions (SYSU-MM01's)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    kw = {"batch_size": eval_cfg.batch_size, "cameras": eval_cfg.cameras, "progress": progress,
          "camera_names": eval_cfg.camera_names}
    qf, q_pids, q_cams = extract_features(embedder, query, desc="query", **kw)
    gf, g_pids, g_cams = extract_features(embedder, gallery, desc="gallery", **kw)
    timings["features"] = time.perf_counter() - t0
    timings["images_per_s"] = (len(query) + len(gallery)) / max(timings["features"], 1e-9)

    t0 = time.perf_counter()
    if hasattr(embedder.model, "map_gallery"):
        # DIMN ranks a probe by its logit against each gallery image's mapped classifier.
        scoring = "dimn gallery mapping"
        distmat = -embedder.score(qf, embedder.map_gallery(gf))
    else:
        scoring = eval_cfg.metric
        distmat = compute_distance(qf, gf, eval_cfg.metric)
    labels = (q_pids, g_pids, q_cams, g_cams)
    rank_kw = {"max_rank": eval_cfg.max_rank, "ignored_camera_pairs": ignored_camera_pairs}
    metrics = evaluate_ranking(distmat, *labels, **rank_kw)
    timings["ranking"] = time.perf_counter() - t0

    reranked = distmat_rr = None
    if eval_cfg.rerank:
        from reidstream.evaluation.rerank import re_rank

        t0 = time.perf_counter()
        distmat_rr = re_rank(
            qf,
            gf,
            k1=eval_cfg.rerank_k1,
            k2=eval_cfg.rerank_k2,
            lambda_value=eval_cfg.rerank_lambda,
            exact_max=eval_cfg.rerank_exact_max,
        )
        reranked = evaluate_ranking(distmat_rr, *labels, **rank_kw)
        timings["rerank"] = time.perf_counter() - t0
    pretrained = embedder.model.cfg.pretrained
    return EvalReport(
        model=embedder.model.cfg.name,
        checkpoint="",
        dataset=dataset,
        scoring=scoring,
        feature_dim=int(qf.shape[1]),
        query=list(query),
        gallery=list(gallery),
        metrics=metrics,
        distmat=distmat,
        reranked=reranked,
        distmat_reranked=distmat_rr,
        timings={k: round(v, 3) for k, v in timings.items()},
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        init=f"untrained, init {pretrained}" if pretrained else "untrained, random init",
        ignored_camera_pairs=[tuple(p) for p in ignored_camera_pairs],
    )


def evaluate(cfg: Config, assets: Assets, progress: bool = True) -> EvalReport:
    """``eval.dataset``'s query/gallery (optionally subset) with the model of ``eval.checkpoint``
    (or ``embed.checkpoint``; neither: ``model.*`` untrained)."""
    from reidstream.models import Embedder

    checkpoint = cfg.eval.checkpoint or cfg.embed.checkpoint
    cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, checkpoint=checkpoint))
    dataset = load_dataset(cfg.eval.dataset, assets, cfg.data)
    query, gallery = protocol_split(dataset.query, dataset.gallery, cfg.eval.protocol)
    query, gallery = subset_split(query, gallery, cfg.eval.max_queries, cfg.eval.max_gallery)
    embedder = Embedder.from_config(cfg, assets)
    embedder.batch_size = cfg.eval.batch_size
    log.info(
        "evaluating on %s (%s), %d queries, %d gallery",
        dataset.name,
        embedder.device,
        len(query),
        len(gallery),
    )
    name = dataset.name if cfg.eval.protocol == "all" else f"{dataset.name} ({cfg.eval.protocol})"
    report = evaluate_embedder(embedder, query, gallery, cfg.eval, name, progress,
                               dataset.ignored_camera_pairs)
    report.checkpoint = checkpoint
    if checkpoint:  # the weights came from the checkpoint, not from model.pretrained
        report.init = f"trained, checkpoint {Path(checkpoint).name}"
    report.config = cfg.to_dict()
    return report


def save_report(
    report: EvalReport, out_dir: str | Path, plot_queries: int = 6, topk: int = 10
) -> dict[str, Path]:
    """metrics.json, cmc.png and (``plot_queries`` > 0) ranked_list.png under ``out_dir``."""
    from reidstream.evaluation.plots import plot_cmc, plot_ranked_lists

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out_dir / "metrics.json"}
    paths["metrics"].write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    name = f"{report.model} on {report.dataset}"
    curves = {k: m.cmc for k, m in report.results().items()}
    paths["cmc"] = plot_cmc(curves, out_dir / "cmc.png", title=f"CMC: {name}")
    if plot_queries > 0:
        valid = np.nonzero(~np.isnan(report.metrics.ap))[0]
        chosen = valid[_evenly_spaced(len(valid), plot_queries)]
        distmat = report.distmat_reranked if report.distmat_reranked is not None else report.distmat
        which = "re-ranked" if report.distmat_reranked is not None else report.scoring
        paths["ranked_list"] = plot_ranked_lists(
            report.query,
            report.gallery,
            distmat,
            chosen.tolist(),
            out_dir / "ranked_list.png",
            topk=topk,
            title=f"{name}: top-{topk} ({which}); green = same identity, red = different",
            ignored_camera_pairs=report.ignored_camera_pairs,
        )
    return paths
