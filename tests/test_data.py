"""Market-1501 reader (real CUHK03 folders and a tiny hand-made one), transforms, PK sampler."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from reidstream.config import load_config
from reidstream.data.market import (
    DATASETS,
    ReIDDataset,
    combine_datasets,
    load_dataset,
    parse_market_name,
    read_market_folder,
)
from reidstream.data.sampler import PKBatchSampler

# reidstream.data.transforms (torchvision) is imported inside the tests that use it, so the
# gloo workers spawned below, which import this module, start quickly.

DATA_CFG = load_config().data

# ----------------------------------------------------------------------------- reader


def _listing(folder: Path) -> list[tuple[int, int]]:
    """(pid, camera number) straight from the file names, independent of the reader."""
    out = []
    for name in os.listdir(folder):
        pid, rest = name.split("_", 1)
        out.append((int(pid), int(rest[1])))
    return out


def test_reader_on_real_cuhk03_labeled(data_dir: Path):
    root = data_dir / "cuhk03-labeled"
    train = read_market_folder(root / "bounding_box_train", relabel=True)
    query = read_market_folder(root / "query")
    gallery = read_market_folder(root / "bounding_box_test")
    assert (len(train), len(query), len(gallery)) == (6264, 400, 1513)  # shared/README.md
    assert sorted({r.pid for r in train}) == list(range(643))  # relabelled 0..642
    assert len({r.pid for r in query}) == len({r.pid for r in gallery}) == 200
    for split, recs in (("query", query), ("bounding_box_test", gallery)):
        expected = Counter((p, c - 1) for p, c in _listing(root / split) if p != -1)
        assert Counter((r.pid, r.camid) for r in recs) == expected
    assert {r.camid for r in (*train, *query, *gallery)} == {0, 1}
    raw_train_ids = {p for p, _ in _listing(root / "bounding_box_train")}
    assert raw_train_ids.isdisjoint({r.pid for r in query})  # disjoint train/test identities
    assert all(r.path.is_file() and r.path.parent.name == "query" for r in query)


def test_load_dataset_by_name_and_combined(assets):
    one = load_dataset("cuhk03-labeled", assets, DATA_CFG)
    assert isinstance(one, ReIDDataset) and one.name == "cuhk03-labeled"
    assert (one.num_train_pids, one.num_cameras, one.num_domains) == (643, 2, 1)
    both = load_dataset("cuhk03-labeled, cuhk03-detected", assets, DATA_CFG)
    assert both.num_train_pids == 643 + 643
    assert both.num_cameras == 4 and both.domain_names == ["cuhk03-labeled", "cuhk03-detected"]
    assert len(both.train) == 2 * len(one.train)
    by_domain = {d: {r.pid for r in both.train if r.domain == d} for d in (0, 1)}
    assert by_domain[0].isdisjoint(by_domain[1])  # same people, but separate domains
    assert {r.camid for r in both.train if r.domain == 1} == {2, 3}
    # Query/gallery ids stay consistent within a domain and disjoint across domains.
    q0 = {r.pid for r in both.query if r.domain == 0}
    g1 = {r.pid for r in both.gallery if r.domain == 1}
    assert q0 == {r.pid for r in one.query} and q0.isdisjoint(g1)
    assert "cuhk03-labeled" in one.summary() and "643" in one.summary()


def test_unknown_layout_and_missing_dataset(assets):
    bad_layout = load_config(overrides=["data.layout=duke"]).data
    with pytest.raises(KeyError, match="market1501"):
        load_dataset("cuhk03-labeled", assets, bad_layout)
    with pytest.raises(FileNotFoundError, match="no-such-set"):
        load_dataset("no-such-set", assets, DATA_CFG)
    assert "market1501" in DATASETS


def _touch_images(folder: Path, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.new("RGB", (32, 64), (i * 20 % 255, 100, 50)).save(folder / name)


def test_reader_on_tiny_folder_with_junk_and_distractors(tmp_path: Path):
    names = [
        "0002_c1s1_000010_00.jpg",
        "0002_c3s2_000011_00.jpg",
        "0007_c2s1_000012_01.jpg",
        "-1_c1s1_000013_00.jpg",  # junk: never used
        "0000_c6s1_000014_00.jpg",  # distractor: gallery only
        "0031_c2_f0046182.jpg",  # DukeMTMC style (no sequence) parses too
    ]
    _touch_images(tmp_path / "split", names)
    (tmp_path / "split" / "Thumbs.db").write_bytes(b"not an image")
    gallery = read_market_folder(tmp_path / "split")
    assert [(r.pid, r.camid) for r in gallery] == [(0, 5), (2, 0), (2, 2), (7, 1), (31, 1)]
    train = read_market_folder(tmp_path / "split", relabel=True)
    # Distractor and junk dropped, ids 2, 7, 31 -> 0, 1, 2 in sorted order.
    assert sorted((r.path.name[:4], r.pid) for r in train) == [
        ("0002", 0),
        ("0002", 0),
        ("0007", 1),
        ("0031", 2),
    ]


def test_reader_errors_name_the_problem(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_market_folder(tmp_path / "missing")
    _touch_images(tmp_path / "bad", ["0001_c1s1_000001_00.jpg", "zz_holiday.jpg", "x.jpg"])
    with pytest.raises(ValueError, match=r"2 image name\(s\).*first: 'x.jpg'"):
        read_market_folder(tmp_path / "bad")
    _touch_images(tmp_path / "junk_only", ["-1_c1s1_000001_00.jpg"])
    with pytest.raises(ValueError, match="no labelled images"):
        read_market_folder(tmp_path / "junk_only")
    assert parse_market_name("0001_c0s1_000001_00.jpg") is None  # cameras are 1-based


def test_combine_keeps_eval_distractors_and_offsets(tmp_path: Path):
    def tiny(root: Path, first_id: int) -> ReIDDataset:
        ids = [first_id, first_id + 1]
        _touch_images(root / "bounding_box_train", [f"{p:04d}_c1s1_00000{p}_00.jpg" for p in ids])
        _touch_images(root / "query", [f"{p:04d}_c1s1_00010{p}_00.jpg" for p in ids])
        gallery = [f"{p:04d}_c2s1_00020{p}_00.jpg" for p in ids] + ["0000_c1s1_000300_00.jpg"]
        _touch_images(root / "bounding_box_test", gallery)
        return DATASETS.build("market1501", root, DATA_CFG, root.name)

    a, b = tiny(tmp_path / "a", 1), tiny(tmp_path / "b", 1)
    both = combine_datasets([a, b])
    assert both.name == "a+b" and both.num_train_pids == 4
    assert [r.camid for r in both.query] == [0, 0, 2, 2]  # each source has 2 cameras
    assert [r.pid for r in both.query] == [1, 2, 3, 4]
    assert sorted(r.pid for r in both.gallery) == [0, 0, 1, 2, 3, 4]  # distractors stay 0
    assert sorted(r.pid for r in both.train) == [0, 1, 2, 3]  # train id 0 is an identity
    nested = combine_datasets([both, a])
    assert nested.num_domains == 3 and sorted({r.domain for r in nested.train}) == [0, 1, 2]
    assert nested.num_train_pids == 6 and nested.num_cameras == 6


# ----------------------------------------------------------------------------- transforms


def test_train_and_test_transforms(data_dir: Path):
    from PIL import Image

    from reidstream.data.transforms import build_test_transform, build_train_transform, load_image

    path = next((data_dir / "cuhk03-labeled" / "query").iterdir())
    img = load_image(path)
    test_tf = build_test_transform(DATA_CFG, 256, 128)
    x = test_tf(img)
    assert x.shape == (3, 256, 128) and x.dtype == torch.float32
    # Test transform is resize + normalise, nothing random.
    ref = torch.from_numpy(np.asarray(img.resize((128, 256), Image.BILINEAR), np.float32) / 255)
    ref = (ref - torch.tensor(DATA_CFG.mean)) / torch.tensor(DATA_CFG.std)
    assert torch.allclose(x, ref.permute(2, 0, 1), atol=0.05)
    assert torch.equal(x, test_tf(img))

    train_tf = build_train_transform(DATA_CFG, 256, 128)
    torch.manual_seed(0)
    outs = torch.stack([train_tf(img) for _ in range(8)])
    assert outs.shape == (8, 3, 256, 128)
    low = (0 - max(DATA_CFG.mean)) / min(DATA_CFG.std)
    high = (1 - min(DATA_CFG.mean)) / min(DATA_CFG.std)
    assert outs.min() >= low - 1e-4 and outs.max() <= high + 1e-4
    assert not torch.equal(outs[0], outs[1])  # augmentations are random

    # A small image of another aspect ratio still comes out at the model's input size.
    small = Image.new("RGB", (40, 30), (200, 10, 10))
    assert train_tf(small).shape == test_tf(small).shape == (3, 256, 128)


def test_flip_and_erasing_do_what_they_say(data_dir: Path):
    from reidstream.data.transforms import build_test_transform, build_train_transform, load_image

    img = load_image(next((data_dir / "cuhk03-labeled" / "query").iterdir()))
    plain = build_test_transform(DATA_CFG, 64, 32)(img)
    cfg = load_config(overrides=["data.flip_prob=1.0", "data.pad=0", "data.erase_prob=0"]).data
    flipped = build_train_transform(cfg, 64, 32)(img)
    assert torch.allclose(flipped, torch.flip(plain, dims=[2]), atol=1e-5)
    cfg = load_config(overrides=["data.flip_prob=0", "data.pad=0", "data.erase_prob=1.0"]).data
    torch.manual_seed(1)
    erased = build_train_transform(cfg, 64, 32)(img)
    changed = (erased != plain).any(dim=0)
    assert changed.any() and torch.all(erased[:, changed] == 0)  # erased to the mean colour
    cfg = load_config(overrides=["data.flip_prob=0", "data.pad=10", "data.erase_prob=0"]).data
    shifted = [build_train_transform(cfg, 64, 32)(img) for _ in range(6)]
    assert any(not torch.allclose(s, plain) for s in shifted)  # pad + random crop moves it


def test_degrade_shrinks_and_compresses_like_a_far_camera(data_dir: Path):
    import random

    from PIL import Image

    from reidstream.data.transforms import RandomDegrade, build_train_transform, load_image

    img = load_image(next((data_dir / "cuhk03-labeled" / "query").iterdir()))
    random.seed(0)
    always = RandomDegrade(1.0, 64, [30, 60])
    outs = [always(img) for _ in range(12)]
    heights = {o.size[1] for o in outs}
    assert all(o.mode == "RGB" and 64 <= o.size[1] < img.size[1] for o in outs)
    assert len(heights) > 3  # a random height each time
    for out in outs[:3]:  # the aspect ratio is kept
        assert abs(out.size[0] / out.size[1] - img.size[0] / img.size[1]) < 0.05
    # Compression, not only scaling: the result differs from a clean resize of the same size.
    out = outs[0]
    clean = np.asarray(img.resize(out.size, Image.BILINEAR), np.float32)
    assert np.abs(np.asarray(out, np.float32) - clean).mean() > 0.5
    # A tiny image is only compressed; p=0 leaves the image alone.
    tiny = img.resize((20, 40))
    assert always(tiny).size == (20, 40)
    assert RandomDegrade(0.0, 64, [30, 60])(img) is img
    for bad in [(1.5, 64, [30, 60]), (0.5, 4, [30, 60]), (0.5, 64, [60, 30]), (0.5, 64, [0, 9])]:
        with pytest.raises(ValueError, match="degrade needs"):
            RandomDegrade(*bad)
    cfg = load_config(overrides=["data.degrade_prob=1.0", "data.erase_prob=0"]).data
    assert build_train_transform(cfg, 256, 128)(img).shape == (3, 256, 128)


def test_image_dataset_and_pk_loader_on_real_images(data_dir: Path):
    from reidstream.data.transforms import ImageDataset, build_train_transform

    records = read_market_folder(data_dir / "cuhk03-labeled" / "bounding_box_train", True)[:120]
    ds = ImageDataset(records, build_train_transform(DATA_CFG, 64, 32))
    image, pid, camid, index = ds[5]
    assert image.shape == (3, 64, 32) and (pid, camid) == (records[5].pid, records[5].camid)
    assert index == 5
    sampler = PKBatchSampler(ds.pids, ids_per_batch=4, images_per_id=3, seed=1)
    # A real worker process, as in training.
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=1)
    batches = list(loader)
    assert len(batches) == len(loader.batch_sampler) > 0
    for images, pids, camids, idx in batches:
        assert images.shape == (12, 3, 64, 32) and images.dtype == torch.float32
        assert sorted(Counter(pids.tolist()).values()) == [3, 3, 3, 3]
        assert [records[i].pid for i in idx.tolist()] == pids.tolist()
        assert [records[i].camid for i in idx.tolist()] == camids.tolist()
    loader.batch_sampler.set_epoch(1)
    assert [b[3].tolist() for b in loader] != [b[3].tolist() for b in batches]


# ----------------------------------------------------------------------------- PK sampler


def _pids(counts: list[int]) -> list[int]:
    """An interleaved label list: identity i has counts[i] images."""
    labels = [i for i, c in enumerate(counts) for _ in range(c)]
    return list(np.random.default_rng(0).permutation(labels))


def test_pk_batches_have_p_ids_times_k_images():
    pids = _pids([2, 9, 4, 4, 7, 1, 12, 5, 6, 3])
    sampler = PKBatchSampler(pids, ids_per_batch=3, images_per_id=4, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) >= 3
    for batch in batches:
        counts = Counter(pids[i] for i in batch)
        assert len(batch) == 12 and len(counts) == 3 and set(counts.values()) == {4}
    small = {i for i, p in enumerate(pids) if p == 5}  # one image: sampled with replacement
    for batch in batches:
        if any(pids[i] == 5 for i in batch):
            assert [i for i in batch if pids[i] == 5] == [next(iter(small))] * 4
    used = Counter(i for b in batches for i in b)
    # Identities with >= K images never repeat an image within an epoch.
    assert all(n == 1 for i, n in used.items() if Counter(pids)[pids[i]] >= 4)


def test_pk_is_deterministic_per_seed_and_epoch():
    pids = _pids([5] * 30)
    a = PKBatchSampler(pids, 4, 2, seed=7)
    b = PKBatchSampler(pids, 4, 2, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKBatchSampler(pids, 4, 2, seed=8)) != first


def _check_ranks(per_rank: list[list[list[int]]], pids: list[int], p: int, k: int) -> None:
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) > 0  # equal step counts
    for step in zip(*per_rank, strict=True):
        ids = [{pids[i] for i in batch} for batch in step]
        assert all(len(s) == p for s in ids) and all(len(b) == p * k for b in step)
        assert set.intersection(*ids) == set()  # disjoint identities in the same step


def test_pk_two_ranks_get_disjoint_ids_and_equal_steps():
    pids = _pids([3, 8, 4, 6, 5, 2, 9, 4, 7, 3, 5, 6, 4, 8, 2, 6])
    for epoch in range(3):
        per_rank = []
        for rank in (0, 1):
            s = PKBatchSampler(pids, 3, 2, num_replicas=2, rank=rank, seed=5)
            s.set_epoch(epoch)
            per_rank.append(list(s))
        _check_ranks(per_rank, pids, 3, 2)
    with pytest.raises(ValueError, match="identities"):
        PKBatchSampler(_pids([4] * 5), 3, 2, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="rank"):
        PKBatchSampler(pids, 3, 2, num_replicas=2, rank=2)


def _gloo_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        pids = _pids([3, 8, 4, 6, 5, 2, 9, 4, 7, 3, 5, 6, 4, 8, 2, 6])
        sampler = PKBatchSampler(pids, 3, 2, seed=11)  # world size and rank from the group
        assert (sampler.num_replicas, sampler.rank) == (world, rank)
        sampler.set_epoch(2)
        gathered: list = [None] * world
        dist.all_gather_object(gathered, list(sampler))
        if rank == 0:
            _check_ranks(gathered, pids, 3, 2)
            Path(out_dir, "ok").write_text(str(len(gathered[0])))
    finally:
        dist.destroy_process_group()


def test_pk_under_a_real_gloo_group(tmp_path: Path):
    import torch.multiprocessing as mp

    mp.spawn(_gloo_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    assert int((tmp_path / "ok").read_text()) > 0
