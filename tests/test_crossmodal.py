"""Visible-infrared data: the RegDB and SYSU-MM01 layouts on small hand-built folders, the
v2i / i2v protocols, SYSU's same-room exclusion, and the labelled infrared proxy."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from reidstream.config import load_config
from reidstream.data.crossmodal import infrared_proxy, protocol_split, render
from reidstream.data.market import DATASETS, INFRARED, VISIBLE, ImageRecord
from reidstream.evaluation.metrics import evaluate_ranking, ranked_gallery


def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 8, 3), value, np.uint8))


def _regdb(root: Path) -> Path:
    """Four people, two images each per modality; trial 1 trains on people 1-2, trial 2 on 3-4."""
    for pid in range(1, 5):
        for k in range(2):
            _image(root / "Visible" / str(pid) / f"female_front_v_{pid}{k}.bmp", 10 * pid)
            _image(root / "Thermal" / str(pid) / f"female_front_t_{pid}{k}.bmp", 10 * pid + 1)
    (root / "idx").mkdir()
    for trial, (train, test) in {1: ((1, 2), (3, 4)), 2: ((3, 4), (1, 2))}.items():
        for split, people in (("train", train), ("test", test)):
            for kind, folder, letter in (("visible", "Visible", "v"), ("thermal", "Thermal", "t")):
                lines = [f"{folder}/{pid}/female_front_{letter}_{pid}{k}.bmp {label}"
                         for label, pid in enumerate(people) for k in range(2)]
                (root / "idx" / f"{split}_{kind}_{trial}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_regdb_layout_trials_and_protocols(tmp_path):
    root = _regdb(tmp_path / "RegDB")
    cfg = load_config(None, ["data.layout=regdb"]).data
    ds = DATASETS.build("regdb", root, cfg, "regdb")
    assert len(ds.train) == 8 and {r.pid for r in ds.train} == {0, 1}
    assert {(r.modality, r.camid) for r in ds.train} == {(VISIBLE, 0), (INFRARED, 1)}
    assert all(r.path.is_file() for r in ds.train)
    test_people = {int(r.path.parent.name) for r in ds.query}
    assert test_people == {3, 4} and {r.pid for r in ds.query}.isdisjoint({0, 1})
    q, g = protocol_split(ds.query, ds.gallery, "v2i")
    assert {r.modality for r in q} == {VISIBLE} and {r.modality for r in g} == {INFRARED}
    assert len(q) == len(g) == 4
    q, g = protocol_split(ds.query, ds.gallery, "i2v")
    assert {r.modality for r in q} == {INFRARED} and {r.modality for r in g} == {VISIBLE}
    other = DATASETS.build("regdb", root, load_config(None, ["data.trial=2"]).data, "regdb")
    assert {int(r.path.parent.name) for r in other.query} == {1, 2}
    with pytest.raises(FileNotFoundError, match="train_visible_3"):
        DATASETS.build("regdb", root, load_config(None, ["data.trial=3"]).data, "regdb")
    with pytest.raises(ValueError, match="1-10"):
        DATASETS.build("regdb", root, load_config(None, ["data.trial=11"]).data, "regdb")


def _sysu(root: Path) -> Path:
    """Train ids 1, 2 (val 3), test ids 4, 5; three images per person per camera, id 5
    never seen by camera 4."""
    for cam in range(1, 7):
        for pid in range(1, 6):
            if pid == 5 and cam == 4:
                continue
            for k in range(3):
                _image(root / f"cam{cam}" / f"{pid:04d}" / f"{k + 1:04d}.jpg", 20 * cam + pid)
    (root / "exp").mkdir()
    (root / "exp" / "train_id.txt").write_text("1,2\n")
    (root / "exp" / "val_id.txt").write_text("3\n")
    (root / "exp" / "test_id.txt").write_text("4,5\n")
    return root


def test_sysu_layout_search_modes_single_shot_gallery_and_same_room(tmp_path):
    root = _sysu(tmp_path / "SYSU-MM01")
    ds = DATASETS.build("sysu", root, load_config(None, ["data.layout=sysu"]).data, "sysu")
    assert {r.pid for r in ds.train} == {0, 1, 2}  # train + val, relabelled
    assert {r.camid + 1 for r in ds.train if r.modality == INFRARED} == {3, 6}
    assert {r.pid for r in ds.query} == {4, 5} and len(ds.query) == 3 * (6 + 5)
    per_view = {(r.pid, r.camid) for r in ds.gallery}
    assert len(ds.gallery) == len(per_view) == 11  # one image per person per camera
    q, g = protocol_split(ds.query, ds.gallery, "i2v")  # SYSU's standard direction
    assert {r.camid + 1 for r in q} == {3, 6} and {r.camid + 1 for r in g} == {1, 2, 4, 5}
    assert ds.ignored_camera_pairs == [(2, 1)]  # camera 3's queries skip camera 2
    indoor = DATASETS.build("sysu", root, load_config(None, ["data.sysu_search=indoor"]).data)
    q, g = protocol_split(indoor.query, indoor.gallery, "i2v")
    assert {r.camid + 1 for r in q} == {3, 6} and {r.camid + 1 for r in g} == {1, 2}
    again = DATASETS.build("sysu", root, load_config(None, []).data)
    other = DATASETS.build("sysu", root, load_config(None, ["data.trial=2"]).data)
    assert [r.path for r in again.gallery] == [r.path for r in ds.gallery]  # seeded draw
    assert [r.path for r in other.gallery] != [r.path for r in ds.gallery]
    with pytest.raises(ValueError, match="sysu_search"):
        DATASETS.build("sysu", root, load_config(None, ["data.sysu_search=outdoor"]).data)


def test_same_room_exclusion_and_protocols_on_a_hand_built_ranking():
    """Query (pid 1, camera 3 zero-based 2) ranks a camera-2 gallery image of itself first:
    it counts normally, and is left out when (2, 1) is an ignored pair: Rank-1 then comes
    from the camera-1 image at rank 2 of the raw list."""
    dist = np.array([[0.1, 0.2, 0.3]])
    q_pids, q_cams = [1], [2]
    g_pids, g_cams = [1, 2, 1], [1, 0, 0]
    plain = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams)
    assert plain.rank(1) == 1.0 and plain.mAP == pytest.approx((1 + 2 / 3) / 2)
    same_room = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams,
                                 ignored_camera_pairs=[(2, 1)])
    assert same_room.rank(1) == 0.0 and same_room.mAP == pytest.approx(0.5)
    # The ranked-list picture shows what the metrics scored: the camera-2 image is left out.
    row, g_pids, g_cams = dist[0], np.array(g_pids), np.array(g_cams)
    assert ranked_gallery(row, 1, 2, g_pids, g_cams).tolist() == [0, 1, 2]
    assert ranked_gallery(row, 1, 2, g_pids, g_cams, [(2, 1)]).tolist() == [1, 2]
    records = [ImageRecord(Path(f"{i}.jpg"), 1, i % 2, modality=i % 2) for i in range(4)]
    with pytest.raises(ValueError, match="eval.protocol must be"):
        protocol_split(records, records, "ir")
    visible_only = [r for r in records if r.modality == VISIBLE]
    with pytest.raises(ValueError, match="infrared_proxy_cameras"):
        protocol_split(visible_only, visible_only, "v2i")


def test_infrared_proxy_loses_colour_keeps_texture_and_repeats(tmp_path, assets, data_dir):
    """One channel from a red-heavy mix: a red and a blue shirt of equal luminance come out
    different greys (luminance would make them equal); edges survive; the same file renders
    the same. On cuhk03 with data.infrared_proxy_cameras=[2], camera 2 is infrared, rendered
    through the loaders of evaluation and training alike."""
    red, blue = np.zeros((32, 16, 3), np.uint8), np.zeros((32, 16, 3), np.uint8)
    red[..., 2], red[..., 1] = 200, 40  # BGR; luma 0.299 R + 0.587 G + 0.114 B = 83.3
    blue[..., 0], blue[..., 1] = 255, 92  # luma 83.1
    out_red = infrared_proxy(red, 1)
    assert (out_red[..., 0] == out_red[..., 2]).all()  # one channel, repeated
    stripes = np.zeros((32, 16, 3), np.uint8)
    stripes[::8] = 255
    edged = infrared_proxy(stripes, 3)[..., 0].astype(float)
    assert edged[::8].mean() > edged[4::8].mean() + 100  # texture kept through the blur
    pair = np.concatenate([red, blue], axis=1)
    grey = infrared_proxy(pair, 5)[..., 0].astype(float)
    assert abs(grey[:, 4:12].mean() - grey[:, 20:28].mean()) > 60  # not luminance
    assert np.array_equal(infrared_proxy(pair, 5), infrared_proxy(pair, 5))

    from reidstream.data.market import load_dataset
    from reidstream.data.transforms import load_record_image
    from reidstream.evaluation.evaluate import _read_chunk

    cfg = load_config(None, ["data.infrared_proxy_cameras=[2]"]).data
    ds = load_dataset("cuhk03-labeled", assets, cfg)
    assert {(r.camid, r.modality) for r in ds.query} == {(0, VISIBLE), (1, INFRARED)}
    ir = next(r for r in ds.query if r.modality == INFRARED)
    shown = np.asarray(load_record_image(ir))
    assert (shown[..., 0] == shown[..., 1]).all()
    assert np.array_equal(_read_chunk([ir])[0][..., ::-1], shown)  # eval sees the same
    assert np.array_equal(render(ds.query[0], _read_chunk([ds.query[0]])[0]),
                          _read_chunk([ds.query[0]])[0])  # visible images as stored
    q, g = protocol_split(ds.query, ds.gallery, "v2i")
    assert len(q) == 200 and {r.camid for r in g} == {1}


@pytest.mark.parametrize("protocol", ["v2i", "i2v"])
def test_eval_cli_cross_modality_protocols_on_the_proxy(assets_dir, data_dir, tmp_path, capsys,
                                                        protocol):
    """``reidstream eval eval.protocol=v2i|i2v data.infrared_proxy_cameras=[2]``: queries of
    one modality, gallery of the other, the protocol in the report."""
    import json

    from reidstream.cli import main

    out = tmp_path / "eval"
    argv = ["eval", f"assets.assets_dir={assets_dir}", f"assets.data_dir={data_dir}",
            "eval.max_queries=12", "eval.max_gallery=40", "eval.plot_queries=0",
            "data.infrared_proxy_cameras=[2]", f"eval.protocol={protocol}",
            f"eval.output_dir={out}", "--no-progress"]
    assert main(argv) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"] == f"cuhk03-labeled ({protocol})"
    assert report["num_query"] == 12 and report["num_gallery"] == 40
    assert report["config"]["eval"]["protocol"] == protocol
    assert f"({protocol})" in capsys.readouterr().out
