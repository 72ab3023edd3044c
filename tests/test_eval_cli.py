"""`reidstream eval` end to end on a small real subset, plus the pieces it is made of."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.data.market import read_market_folder
from reidstream.evaluation.evaluate import subset_split
from reidstream.evaluation.metrics import compute_distance, evaluate_ranking
from reidstream.evaluation.plots import CORRECT, QUERY, WRONG


def _edge_bands(px: np.ndarray, colour: str) -> int:
    """Horizontal bands of image rows that hold a long run of one frame colour."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    rows = np.nonzero((np.abs(px - rgb).sum(axis=2) < 30).sum(axis=1) >= 50)[0]
    return 0 if len(rows) == 0 else 1 + int((np.diff(rows) > 1).sum())


def _shared_overrides(assets_dir: Path, data_dir: Path) -> list[str]:
    # No checkpoint: these tests evaluate model.* as built, not the shipped default.
    return [f"assets.assets_dir={assets_dir}", f"assets.data_dir={data_dir}", "embed.checkpoint="]


def test_subset_keeps_every_query_scorable(data_dir: Path):
    root = data_dir / "cuhk03-labeled"
    query = read_market_folder(root / "query")
    gallery = read_market_folder(root / "bounding_box_test")
    q, g = subset_split(query, gallery, max_queries=30, max_gallery=90)
    assert 0 < len(q) <= 30 and len(g) == 90
    assert len({r.pid for r in q}) * 2 == len(q)  # whole identities (2 cameras each here)
    assert subset_split(query, gallery, 30, 90) == (q, g)  # deterministic

    def scorable(r, pool):
        return any(x.pid == r.pid and x.camid != r.camid for x in pool)

    # Each query keeps a same-identity image from another camera if the full gallery has one
    # (not all do: pid 815 has gallery images from camera 2 only).
    assert all(scorable(r, g) for r in q if scorable(r, gallery))
    assert sum(scorable(r, gallery) for r in query) < len(query)
    assert [gallery.index(x) for x in g] == sorted(gallery.index(x) for x in g)
    assert subset_split(query, gallery) == (query, gallery)


@pytest.fixture(scope="module")
def small_embedder(assets):
    """The untrained bot model at a small input size (the tests check plumbing, not accuracy)."""
    from reidstream.models import Embedder

    # f32: batching must not change f32 features (int8 ranges are per batch: test_inference.py)
    cfg = load_config(overrides=["model.img_height=64", "model.img_width=32",
                                 "embed.precision=f32"])
    return Embedder.from_config(cfg, assets)


def test_extract_features_with_untrained_bot(assets, small_embedder):
    from reidstream.evaluation.evaluate import extract_features

    embedder = small_embedder
    records = read_market_folder(assets.dataset("cuhk03-labeled") / "query")[:10]
    feats, pids, camids = extract_features(embedder, records, batch_size=4, progress=False)
    assert feats.shape == (10, embedder.feature_dim) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    assert pids.tolist() == [r.pid for r in records]
    assert camids.tolist() == [r.camid for r in records]
    # Batching must not change the features (batch of 4 vs 10).
    again, _, _ = extract_features(embedder, records, batch_size=10, progress=False)
    np.testing.assert_allclose(feats, again, atol=1e-4)
    with pytest.raises(ValueError, match="cameras"):
        extract_features(embedder, records, cameras="guess", progress=False)


def test_extract_features_passes_each_image_its_camera(assets, small_embedder, monkeypatch):
    """Records from both cameras, several batches: each image must reach the model with its
    own camera index ("index"), or -1 ("unknown"), and its own modality, whatever the batch
    boundaries."""
    from dataclasses import replace

    from reidstream.data.market import INFRARED
    from reidstream.evaluation.evaluate import extract_features

    embedder = small_embedder
    seen: list = []
    seen_modalities: list = []
    real_embed = embedder.embed

    def recording_embed(crops, cameras=None, modalities=None):
        seen.extend(cameras)
        seen_modalities.extend(modalities)
        return real_embed(crops, cameras, modalities)

    monkeypatch.setattr(embedder, "embed", recording_embed)
    records = read_market_folder(assets.dataset("cuhk03-labeled") / "query")[:7]
    assert {r.camid for r in records} == {0, 1}
    records = [replace(r, modality=INFRARED) if r.camid == 1 else r for r in records]
    extract_features(embedder, records, batch_size=3, progress=False)
    assert seen == [r.camid for r in records]
    assert seen_modalities == ["infrared" if r.camid == 1 else "visible" for r in records]
    seen.clear()
    extract_features(embedder, records, batch_size=3, cameras="unknown", progress=True)
    assert seen == [-1] * 7


def test_eval_cli_end_to_end(assets_dir: Path, data_dir: Path, tmp_path: Path, capsys):
    from PIL import Image

    from reidstream.cli import main

    out = tmp_path / "eval"
    argv = [
        "eval",
        *_shared_overrides(assets_dir, data_dir),
        "model.img_height=128",
        "model.img_width=64",
        "eval.max_queries=16",
        "eval.max_gallery=60",
        "eval.rerank=true",
        "eval.rerank_k1=8",
        "eval.rerank_k2=3",
        "eval.plot_queries=3",
        "eval.plot_topk=5",
        "eval.batch_size=40",
        f"eval.output_dir={out}",
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Rank-1" in printed and "mAP" in printed and "mINP" in printed
    assert "re-ranked" in printed and str(out / "metrics.json") in printed

    root = data_dir / "cuhk03-labeled"
    q, g = subset_split(
        read_market_folder(root / "query"), read_market_folder(root / "bounding_box_test"), 16, 60
    )
    scorable = sum(any(x.pid == r.pid and x.camid != r.camid for x in g) for r in q)
    report = json.loads((out / "metrics.json").read_text())
    assert report["model"] == "bot" and report["dataset"] == "cuhk03-labeled"
    assert report["num_query"] == 16 and report["num_gallery"] == 60
    assert report["feature_dim"] == 1280 and report["scoring"] == "cosine"
    for name in ("original", "re-ranked"):
        res = report["results"][name]
        cmc = np.array(res["cmc"])
        assert len(cmc) == 50 and np.all(np.diff(cmc) >= 0) and cmc[0] == res["rank1"]
        assert 0.0 < res["mINP"] <= 1.0 and 0.0 < res["mAP"] <= 1.0
        assert res["num_valid_queries"] == scorable and res["num_queries"] == 16
        # Printed figures are the ones in the JSON (percent, two decimals).
        assert f"{100 * res['rank1']:.2f}" in printed and f"{100 * res['mAP']:.2f}" in printed
    assert report["config"]["eval"]["max_gallery"] == 60

    with Image.open(out / "cmc.png") as cmc_png:
        assert cmc_png.format == "PNG" and cmc_png.size[0] >= 400
    with Image.open(out / "ranked_list.png") as ranked:
        assert ranked.format == "PNG" and min(ranked.size) >= 400
        px = np.asarray(ranked.convert("RGB")).astype(int)
    # 3 queries: 3 blue-framed query thumbnails (a top and a bottom edge each), and their
    # top-5 gallery thumbnails framed in green (same identity) or red (different).
    assert _edge_bands(px, QUERY) == 2 * 3
    assert _edge_bands(px, CORRECT) + _edge_bands(px, WRONG) >= 2


def test_eval_matches_metrics_on_its_own_features(assets, tmp_path: Path):
    """evaluate() = extract features, cosine distances, evaluate_ranking; nothing else."""
    from reidstream.evaluation.evaluate import evaluate, extract_features, save_report
    from reidstream.models import Embedder

    overrides = [
        "embed.checkpoint=",
        "model.img_height=64",
        "model.img_width=32",
        "eval.max_queries=8",
        "eval.max_gallery=30",
        "eval.metric=euclidean",
    ]
    cfg = load_config(overrides=overrides)
    report = evaluate(cfg, assets, progress=False)
    embedder = Embedder.from_config(cfg, assets)
    qf, qp, qc = extract_features(embedder, report.query, progress=False)
    gf, gp, gc = extract_features(embedder, report.gallery, progress=False)
    expected = evaluate_ranking(compute_distance(qf, gf, "euclidean"), qp, gp, qc, gc)
    assert report.metrics.mAP == pytest.approx(expected.mAP, abs=1e-6)
    np.testing.assert_allclose(report.metrics.cmc, expected.cmc)
    assert report.reranked is None and "re-ranked" not in report.table()
    paths = save_report(report, tmp_path, plot_queries=0)
    assert sorted(paths) == ["cmc", "metrics"] and not (tmp_path / "ranked_list.png").exists()


def test_eval_cli_errors_and_light_import(assets_dir: Path, data_dir: Path, capsys):
    from reidstream.cli import main

    argv = ["eval", *_shared_overrides(assets_dir, data_dir), "eval.dataset=no-such-set"]
    assert main(argv) == 2
    assert "no-such-set" in capsys.readouterr().err
    code = "import sys, reidstream.evaluation.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_dimn_is_scored_through_its_gallery_mapping(assets):
    """DIMN ranks by probe logits against mapped gallery classifiers, not by cosine."""
    from reidstream.evaluation.evaluate import evaluate_embedder, extract_features
    from reidstream.models import Embedder

    dimn = ["model.name=dimn", "model.img_height=64", "model.img_width=32", "embed.checkpoint="]
    cfg = load_config(overrides=dimn)
    embedder = Embedder.from_config(cfg, assets)
    root = assets.dataset("cuhk03-labeled")
    q, g = subset_split(
        read_market_folder(root / "query"), read_market_folder(root / "bounding_box_test"), 6, 24
    )
    report = evaluate_embedder(embedder, q, g, cfg.eval, "cuhk03-labeled", progress=False)
    assert report.scoring == "dimn gallery mapping"
    qf, *_ = extract_features(embedder, q, progress=False)
    gf, *_ = extract_features(embedder, g, progress=False)
    logits = embedder.score(qf, embedder.map_gallery(gf))
    np.testing.assert_allclose(report.distmat, -logits, atol=1e-4)
    assert not np.allclose(report.distmat, compute_distance(qf, gf), atol=1e-3)
