"""Site adaptation on tiny hand-built cases: clustering, the hybrid memory, samplers, harvest
shards, calibration and the free constraints (must-link, cannot-link, cameras)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidstream.adaptation.calibration import SiteCalibration, calibrate, track_means
from reidstream.adaptation.cluster import (
    ClusterParams,
    _iou_with,
    centre_per_camera,
    dbscan,
    pair_scores,
    pseudo_labels,
)
from reidstream.adaptation.memory import HybridMemory
from reidstream.config import load_config
from reidstream.data.sampler import ConcatBatchSampler, CycledBatchSampler, PKBatchSampler


def _blobs(centres: int, per: int, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """``centres`` tight groups of ``per`` unit vectors each, far apart."""
    rng = np.random.default_rng(seed)
    means = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:centres]  # orthonormal
    feats = np.concatenate([m + spread * rng.normal(size=(per, dim)) for m in means])
    return (feats / np.linalg.norm(feats, axis=1, keepdims=True)).astype(np.float32), np.repeat(
        np.arange(centres), per
    )


# ---- DBSCAN on a sparse graph ---------------------------------------------------------------


def test_dbscan_core_border_and_noise_by_hand():
    # 0-1-2-3 a chain of close points (core with min_samples 3), 4 hangs on 3 (border),
    # 5 is alone (noise), 6-7-8 a second dense group.
    rows = np.array([0, 1, 2, 3, 6, 6, 7, 3])
    cols = np.array([1, 2, 3, 4, 7, 8, 8, 5])
    dist = np.array([0.1, 0.1, 0.1, 0.2, 0.1, 0.1, 0.1, 0.9])
    labels = dbscan(9, rows, cols, dist, eps=0.5, min_samples=3)
    assert labels[5] == -1  # its only edge is longer than eps
    assert len({labels[i] for i in (0, 1, 2, 3, 4)}) == 1  # 0 joins as border of core 1
    assert len({labels[i] for i in (6, 7, 8)}) == 1
    assert labels[0] != labels[6] and labels.max() == 1
    # A stricter min_samples: only 1 and 2 have 3 points within eps (themselves included)
    strict = dbscan(9, rows, cols, dist, eps=0.5, min_samples=4)
    assert (strict == -1).all()


def test_iou_of_cluster_memberships():
    labels = np.array([0, 0, 0, 0, -1])
    tight = np.array([0, 0, 1, 1, -1])  # the cluster splits in two under a tighter eps
    iou = _iou_with(labels, tight)
    assert iou[:4] == pytest.approx([0.5] * 4)  # |{0,1}| / |{0,1,2,3}|
    assert iou[4] == 1.0  # noise point: itself against itself


# ---- pseudo-labels with the site's constraints ---------------------------------------------


def test_pseudo_labels_find_blobs_and_leave_outliers():
    feats, truth = _blobs(4, 6)
    rng = np.random.default_rng(1)
    outlier = rng.normal(size=(1, feats.shape[1])).astype(np.float32)
    feats = np.concatenate([feats, outlier / np.linalg.norm(outlier)])
    result = pseudo_labels(
        feats, ClusterParams(k1=5, k2=1, eps=0.6, min_samples=3, reliability=False)
    )
    assert result.num_clusters == 4
    labels = result.labels[:-1]
    for group in range(4):  # every blob is one cluster of its own
        assert len(set(labels[truth == group])) == 1
    assert len(set(labels)) == 4
    assert not result.clustered[-1] and result.labels[-1] >= result.num_clusters


def test_must_link_units_share_a_label():
    feats, truth = _blobs(3, 4)
    units = np.arange(len(feats))
    units[1] = units[0] = 100  # two samples of blob 0 are one track
    # and a track split over two blobs: its crops must still get one label
    units[4] = units[8] = 200
    result = pseudo_labels(
        feats, ClusterParams(k1=6, k2=2, eps=0.6, min_samples=2, reliability=False), units=units
    )
    assert result.labels[0] == result.labels[1]
    assert result.labels[4] == result.labels[8]
    assert result.stats["units"] == len(feats) - 2


def test_cannot_link_keeps_two_people_apart():
    feats, truth = _blobs(2, 5, spread=0.02)
    params = ClusterParams(k1=6, k2=2, eps=0.6, min_samples=2, reliability=False)
    plain = pseudo_labels(feats, params)
    assert plain.labels[0] == plain.labels[1]  # the same blob: clustered together
    result = pseudo_labels(feats, params, cannot_link=np.array([[0, 1]]))
    assert result.labels[0] != result.labels[1]  # ... unless they overlap in one camera
    # the rest of the blob stays one cluster with one of them
    rest = set(result.labels[2:5].tolist())
    assert len(rest) == 1 and rest & {result.labels[0], result.labels[1]}


def test_camera_centring_removes_a_camera_offset():
    """Two people seen by two cameras; camera 1 adds a big offset to every feature. Without
    centring the clusters are cameras, with it they are people."""
    rng = np.random.default_rng(0)
    people = np.linalg.qr(rng.normal(size=(16, 16)))[0][:2]
    offset = 3.0 * np.linalg.qr(rng.normal(size=(16, 16)))[0][5]
    feats, pid, cam = [], [], []
    for c in (0, 1):
        for p in (0, 1):
            for _ in range(4):
                feats.append(people[p] + (offset if c else 0) + 0.05 * rng.normal(size=16))
                pid.append(p)
                cam.append(c)
    feats, pid, cam = np.array(feats, np.float32), np.array(pid), np.array(cam)
    params = ClusterParams(k1=6, k2=2, eps=0.6, min_samples=3, reliability=False)
    raw = pseudo_labels(feats, dataclass_replace(params, camera_centre=False), cameras=cam)
    centred = pseudo_labels(feats, params, cameras=cam)
    assert len(set(raw.labels[cam == 0])) < len(set(raw.labels))  # camera-pure clusters
    for p in (0, 1):
        assert len(set(centred.labels[pid == p])) == 1
    assert centred.labels[pid == 0][0] != centred.labels[pid == 1][0]
    centred_feats = centre_per_camera(feats, cam)
    assert np.allclose(np.linalg.norm(centred_feats, axis=1), 1.0, atol=1e-5)


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


def test_pair_scores_by_hand():
    # Clusters {0,1,2} and {3,4}; 5 is un-clustered. People: 0,1 are A; 2,3 are B; 4,5 are C.
    labels = np.array([0, 0, 0, 1, 1, 2])
    clustered = np.array([True, True, True, True, True, False])
    pids = np.array([0, 0, 1, 1, 2, 2])
    cams = np.array([0, 1, 0, 1, 0, 1])
    s = pair_scores(labels, clustered, pids, cams)
    # Cluster pairs: (0,1) right, (0,2), (1,2), (3,4) wrong: 1 of 4. Person pairs: 3, one found.
    assert s["precision"] == pytest.approx(1 / 4)
    assert s["recall"] == pytest.approx(1 / 3)
    # Cross-camera cluster pairs: (0,1), (1,2), (3,4); right: (0,1).
    assert (s["cross_pairs"], s["cross_right"]) == (3, 1)
    assert "cross_pairs" not in pair_scores(labels, clustered, pids)


def test_reliability_dissolves_loose_clusters_and_keeps_thresholds():
    """A tight blob is independent; a strung-out chain grows when eps loosens (not
    independent) and loses members when it tightens (not compact)."""
    tight, _ = _blobs(1, 8, spread=0.01, seed=3)
    rng = np.random.default_rng(4)
    start, end = rng.normal(size=16), rng.normal(size=16)
    chain = np.array([start + t * (end - start) for t in np.linspace(0, 1, 10)])
    chain = (chain / np.linalg.norm(chain, axis=1, keepdims=True)).astype(np.float32)
    feats = np.concatenate([tight, chain])
    params = ClusterParams(k1=6, k2=2, eps=0.6, eps_gap=0.1, min_samples=2,
                           reliable_quantile=0.5)
    first = pseudo_labels(feats, params)
    alpha, beta = first.thresholds
    assert 0.0 < alpha <= 1.0 and 0.0 < beta <= 1.0
    assert first.clustered[:8].all()  # the tight blob survives
    again = pseudo_labels(feats, params, thresholds=first.thresholds)
    assert again.thresholds == first.thresholds  # later epochs keep the first thresholds
    unreliable = pseudo_labels(feats, params, thresholds=(1.01, 1.01))  # nothing can pass
    assert unreliable.num_clusters == 0 and not unreliable.clustered.any()
    assert len(set(unreliable.labels.tolist())) == len(feats)  # each sample its own class


# ---- hybrid memory ----------------------------------------------------------------------------


def test_hybrid_memory_loss_by_hand():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    source = torch.tensor([[-1.0, 0.0]])
    memory = HybridMemory(target, source, temperature=0.5, momentum=0.2)
    memory.set_labels(torch.tensor([0, 1, 1]))  # samples 1 and 2 are one cluster
    assert torch.allclose(memory.target_centroids(), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    feats = torch.tensor([[1.0, 0.0]])
    loss, acc = memory.loss(feats, torch.tensor([True]), torch.tensor([0]))
    # entries: source (-1,0), cluster 0 (1,0), cluster 1 (0,1); logits -2, 2, 0
    expected = -math.log(math.exp(2) / (math.exp(-2) + math.exp(2) + math.exp(0)))
    assert loss.item() == pytest.approx(expected, rel=1e-5) and acc.item() == 1.0
    # a source sample of class 0 against the same entries: positive is the source centroid
    loss_s, acc_s = memory.loss(feats, torch.tensor([False]), torch.tensor([0]))
    assert loss_s.item() == pytest.approx(-math.log(math.exp(-2) / (
        math.exp(-2) + math.exp(2) + 1.0)), rel=1e-5)
    assert acc_s.item() == 0.0


def test_camera_proxies_loss_by_hand():
    """Each pseudo-identity split by camera: an intra-camera softmax over the sample's own
    camera's proxies, plus an inter-camera term (all the identity's proxies positive, each
    against the hardest other-identity proxies); a source sample keeps the unified loss."""
    eye = torch.eye(4)
    source = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    memory = HybridMemory(eye, source, temperature=0.5, momentum=0.2,
                          cameras=torch.tensor([0, 1, 0, 1]))
    memory.set_labels(torch.tensor([0, 0, 1, 1]))  # one person per label, seen by both cameras
    centroids, label, camera, sample_proxy = memory.camera_proxies()
    assert torch.allclose(centroids, eye) and label.tolist() == [0, 0, 1, 1]
    assert camera.tolist() == [0, 1, 0, 1] and sample_proxy.tolist() == [0, 1, 2, 3]

    feats = eye[:1]  # sample 0 (camera 0, label 0): logits 2, 0, 0, 0 against the proxies
    loss, acc = memory.camera_loss(feats, torch.tensor([True]), torch.tensor([0]),
                                   inter_weight=0.5, hard_negatives=1)
    intra = -math.log(math.exp(2) / (math.exp(2) + math.exp(0)))  # camera 0's proxies: 0 and 2
    hard = 0.0  # the one hardest negative's logit (proxies 2, 3: both 0)
    inter = ((math.log(math.exp(2) + math.exp(hard)) - 2)
             + (math.log(math.exp(0) + math.exp(hard)) - 0)) / 2  # positives: proxies 0 and 1
    assert loss.item() == pytest.approx(intra + 0.5 * inter, rel=1e-5) and acc.item() == 1.0

    # A source sample in the batch: its unified loss, averaged with the target sample's.
    both = torch.cat([feats, source])
    mixed, _ = memory.camera_loss(both, torch.tensor([True, False]), torch.tensor([0, 0]),
                                  inter_weight=0.5, hard_negatives=1)
    unified, _ = memory.loss(source, torch.tensor([False]), torch.tensor([0]))
    assert mixed.item() == pytest.approx((loss.item() + unified.item()) / 2, rel=1e-5)

    # One identity in the memory: no negatives at all, and still a finite gradient.
    memory.set_labels(torch.zeros(4, dtype=torch.long))
    grad_feats = eye[:1].clone().requires_grad_(True)
    lone, _ = memory.camera_loss(grad_feats, torch.tensor([True]), torch.tensor([0]))
    lone.backward()
    assert torch.isfinite(lone) and torch.isfinite(grad_feats.grad).all()
    with pytest.raises(ValueError, match="cameras"):
        HybridMemory(eye).camera_proxies()


def test_hybrid_memory_momentum_updates():
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    source = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    memory = HybridMemory(target, source, temperature=0.05, momentum=0.5)
    feats = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    is_target = torch.tensor([True, False, False])
    targets = torch.tensor([0, 1, 1])  # target sample 0; two images of source class 1
    memory.update(feats, is_target, targets)
    s = 1 / math.sqrt(2)
    assert torch.allclose(memory.features[0], torch.tensor([s, s]), atol=1e-6)
    assert torch.allclose(memory.features[1], torch.tensor([0.0, 1.0]))  # untouched
    assert torch.allclose(memory.source[1], torch.tensor([s, s]), atol=1e-6)
    assert torch.allclose(memory.source[0], torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError):
        memory.set_labels(torch.tensor([0]))  # one label per target sample


# ---- samplers ---------------------------------------------------------------------------------


def test_pk_sampler_relabel_and_concat_and_cycle():
    source = PKBatchSampler([0, 0, 1, 1, 2, 2], 2, 2, num_replicas=1, rank=0)
    target = PKBatchSampler(list(range(4)), 2, 2, num_replicas=1, rank=0)
    target.relabel([0, 0, 1, 1])  # pseudo-labels: two clusters of two
    concat = ConcatBatchSampler([source, target], [0, 6])
    concat.set_epoch(0)
    batches = list(concat)
    assert len(batches) == len(target) == 1
    batch = batches[0]
    assert len(batch) == 8 and all(i < 6 for i in batch[:4]) and all(i >= 6 for i in batch[4:])
    cycled = CycledBatchSampler(concat, steps=5)
    cycled.set_epoch(2)
    assert len(list(cycled)) == len(cycled) == 5
    with pytest.raises(ValueError, match="identities"):
        target.relabel([0, 0, 0, 0])  # one pseudo-identity cannot fill P = 2


# ---- calibration ------------------------------------------------------------------------------


def test_calibration_thresholds_and_centring_by_hand():
    cfg = load_config().calibration
    cfg = dataclass_replace(cfg, impostor_quantile=0.5, margin_std=1.0, min_pairs=2)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(6, 8)).astype(np.float32)
    cameras = ["a", "a", "a", "b", "b", "b"]
    cannot = np.array([[0, 1], [1, 2], [3, 4], [4, 5], [0, 2]])
    calib = calibrate(vectors, cameras, cannot, cfg)
    centred = calib.centre_vectors(vectors, cameras)
    sims = np.einsum("ij,ij->i", centred[cannot[:, 0]], centred[cannot[:, 1]])
    assert calib.pooled.threshold == pytest.approx(np.median(sims), abs=1e-4)
    assert calib.pooled.margin == pytest.approx(np.std(sims), abs=1e-4)
    only_a = sims[[0, 1, 4]]
    assert calib.setting("a", "a").threshold == pytest.approx(np.median(only_a), abs=1e-4)
    assert calib.setting("b", "a") == calib.setting("a", "b")  # a pair has one setting
    # a camera's mean is gone after centring; an unknown camera is left as it is
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    assert np.allclose(calib.camera_means[0], unit[:3].mean(0), atol=1e-5)
    expected = unit[:3] - unit[:3].mean(0)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(centred[:3], expected, atol=1e-5)
    same = calib.centre_vectors(vectors[:1], ["unknown"])
    assert np.allclose(same, vectors[:1] / np.linalg.norm(vectors[:1]), atol=1e-6)
    # into a checkpoint's meta and back
    restored = SiteCalibration.from_meta({"site_calibration": calib.to_meta()})
    assert restored.cameras == ["a", "b"] and restored.pairs.keys() == calib.pairs.keys()
    assert np.allclose(restored.camera_means, calib.camera_means)
    assert SiteCalibration.from_meta({}) is None


def test_track_means_average_crops_per_track():
    vectors = np.array([[1, 0], [0, 1], [1, 0]], np.float32)
    ids, means = track_means(vectors, np.array([7, 7, 9]))
    assert ids.tolist() == [7, 9]
    s = 1 / math.sqrt(2)
    assert np.allclose(means, [[s, s], [1, 0]], atol=1e-6)


def test_hybrid_memory_mixed_batch_with_more_source_classes_than_target_samples():
    """Source class ids beyond the target's size must not be read as target rows."""
    memory = HybridMemory(torch.eye(6)[4:], torch.eye(6)[:4], temperature=0.1)
    feats = torch.eye(6)[[3, 4]]
    loss, acc = memory.loss(feats, torch.tensor([False, True]), torch.tensor([3, 0]))
    assert torch.isfinite(loss) and acc.item() == 1.0


# ---- PAUL -----------------------------------------------------------------------------------


def test_patch_generator_starts_as_horizontal_stripes():
    """Untrained, patch k is the mean of the k-th horizontal stripe of the map."""
    from reidstream.models.patches import PatchGenerator, stripe_affines

    torch.manual_seed(0)
    generator = PatchGenerator(channels=3, num_patches=4, patch_size=(4, 8))
    generator.eval()
    for bn in generator.necks:  # identity BN, to read the pooled values themselves
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)
    # every row of the map holds its own row index: stripe k averages rows 4k..4k+3
    fmap = torch.arange(16.0).view(1, 1, 16, 1).expand(2, 3, 16, 8).contiguous()
    patches = generator(fmap)
    assert patches.shape == (2, 4, 3)
    for k in range(4):
        assert patches[0, k, 0].item() == pytest.approx(4 * k + 1.5, abs=0.3)
    assert torch.allclose(generator.affines(fmap)[0], stripe_affines(4))


def _paul_objective(tmp_path, images: int = 6):
    from reidstream.adaptation.paul import PaulObjective
    from reidstream.data.market import UNLABELLED, ImageRecord
    from reidstream.models import build_model
    from reidstream.training.data import TrainData

    cfg = load_config(overrides={
        "model.name": "transreid", "model.backbone": "mobilenetv2", "model.pretrained": "",
        "model.depth": 1, "model.jpm": False, "model.patches": 2, "model.img_height": 64,
        "model.img_width": 32, "data.images_per_id": 2, "paul.neighbours": 2,
    })
    model = build_model(cfg.model)
    records = [ImageRecord(tmp_path / f"{i}.jpg", UNLABELLED, 0) for i in range(images)]
    data = TrainData(records=records, num_classes=0, cameras=["cam1"], sources=[],
                     target="t", target_start=0)
    return PaulObjective(model, cfg.train, cfg, data), model, cfg


def test_paul_losses_and_bank_updates(tmp_path):
    from reidstream.training.context import EpochContext, Rank

    torch.manual_seed(0)
    objective, model, cfg = _paul_objective(tmp_path)
    dim = model.pgn.necks[0].num_features

    def embed(indices):
        return torch.randn(len(indices), model.feature_dim)

    labels = objective.start_epoch(EpochContext(0, Rank(0, 1, torch.device("cpu")), embed))
    assert labels.tolist() == list(range(6))  # every image its own class: two views each
    assert objective.banks.shape == (2, 6, dim)
    assert torch.allclose(objective.banks.norm(dim=2), torch.ones(2, 6), atol=1e-5)
    # PEDAL by hand: a patch equal to its own bank slot, far from the others
    patches = objective.banks[:, [0]].transpose(0, 1).clone()  # [1, K, D], image 0
    loss = objective.pedal_loss(patches, torch.tensor([0]))
    logits = torch.einsum("bkd,knd->bkn", patches, objective.banks) / cfg.paul.temperature
    top = logits.topk(2, dim=2).indices
    expected = -torch.stack([
        torch.logsumexp(logits[0, k].log_softmax(0)[top[0, k]], 0) for k in range(2)
    ]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # a full step: both losses finite, gradients reach the patch generator
    model.train()
    images = torch.randn(4, 3, 64, 32)
    index = torch.tensor([0, 0, 3, 3])  # two views each of images 0 and 3
    total, parts = objective(images, torch.full((4,), -1), torch.zeros(4, dtype=torch.long),
                             index)
    assert torch.isfinite(total) and set(parts) == {"pedal", "ipfl"}
    total.backward()
    assert model.pgn.theta.weight.grad is not None
    before = objective.banks.clone()
    objective.after_step()
    changed = (objective.banks - before).abs().sum(dim=(0, 2)) > 0
    assert changed.tolist() == [True, False, False, True, False, False]


# ---- clothing colour as a clustering prior ------------------------------------------------------


def test_colour_histograms_by_hand():
    from PIL import Image

    from reidstream.adaptation.colour import colour_histograms

    pixels = np.zeros((128, 64, 3), np.uint8)
    pixels[:64] = (255, 0, 0)  # top band red: levels (1, 0, 0) -> code 4 of 2**3
    pixels[64:] = (0, 0, 255)  # bottom band blue: code 1
    half = pixels.copy()
    half[:64, 32:] = (0, 255, 0)  # top band half green: code 2
    hist = colour_histograms([Image.fromarray(pixels), Image.fromarray(half)], stripes=2, bins=2)
    assert hist.shape == (2, 16)
    expected = np.zeros(16, np.float32)
    expected[[4, 8 + 1]] = 1.0
    assert np.allclose(hist[0], expected)
    expected[[2, 4]] = math.sqrt(0.5)
    assert np.allclose(hist[1], expected)
    assert np.allclose(np.linalg.norm(hist.reshape(2, 2, 8), axis=2), 1.0)  # each band counts once
    with pytest.raises(ValueError, match="bins"):
        colour_histograms([], bins=0)


def test_mix_features_weights_the_two_similarities():
    from reidstream.adaptation.cluster import mix_features

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(6, 5)), rng.normal(size=(6, 3))
    cams = np.array([0, 0, 0, 1, 1, 1])

    def cos(x):
        return x @ x.T

    norm = centre_per_camera  # each part camera-centred and normalised
    mixed = mix_features(a, b, cams, 0.25)
    assert np.allclose(cos(mixed), 0.75 * cos(norm(a, cams)) + 0.25 * cos(norm(b, cams)),
                       atol=1e-5)
    plain = mix_features(a, b, None, 1.0)  # all colour, no centring
    unit_b = b / np.linalg.norm(b, axis=1, keepdims=True)
    assert np.allclose(cos(plain), cos(unit_b), atol=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mix_features(a, b, cams, 1.5)


def test_spcl_colour_weight_clusters_by_clothing_colour(tmp_path):
    """Features that say nothing (random) cluster nobody; with spcl.colour_weight=1 the same
    run's pseudo-labels follow the clothes: reds together, blues together, across cameras."""
    from PIL import Image

    from reidstream.adaptation.spcl import SpCLObjective
    from reidstream.data.market import UNLABELLED, ImageRecord
    from reidstream.models import build_model
    from reidstream.training.context import EpochContext, Rank
    from reidstream.training.data import TrainData

    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        colour = (200, 30, 30) if i % 2 == 0 else (30, 30, 200)
        pixels = np.clip(np.array(colour) + rng.normal(0, 8, (128, 64, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / f"{i}.png")
        records.append(ImageRecord(tmp_path / f"{i}.png", UNLABELLED, i % 4 // 2))  # 2 cameras

    def labels_with(weight: float) -> np.ndarray:
        cfg = load_config(overrides={
            "model.name": "bot", "model.pretrained": "", "spcl.mode": "unsupervised",
            "spcl.k1": 4, "spcl.k2": 1, "spcl.eps": 0.5, "spcl.min_samples": 2,
            "spcl.reliability": False, "spcl.colour_weight": weight,
        })
        model = build_model(cfg.model)
        data = TrainData(records=records, num_classes=0, cameras=["cam1", "cam2"], sources=[],
                         target="t", target_start=0)
        objective = SpCLObjective(model, cfg.train, cfg, data)
        noise = torch.from_numpy(np.random.default_rng(1).normal(size=(12, 64))).float()

        def embed(indices):
            return torch.nn.functional.normalize(noise[indices], dim=1)

        return objective.start_epoch(EpochContext(0, Rank(0, 1, torch.device("cpu")), embed))

    by_colour = labels_with(1.0)
    assert len(set(by_colour[0::2])) == 1 and len(set(by_colour[1::2])) == 1
    assert by_colour[0] != by_colour[1]
    assert len(set(labels_with(0.0).tolist())) > 2  # the random features alone: no such pair
    with pytest.raises(ValueError, match="colour_weight"):
        labels_with(-0.1)


# ---- harvest ----------------------------------------------------------------------------------


def _crop(camera: str, session: str, track: int, start: int, end: int, colour: int = 120):
    from reidstream.adaptation.harvest import HarvestCrop

    image = np.full((48, 24, 3), colour, np.uint8)
    image[::4] = 255 - colour  # some texture, so JPEG sizes differ from zero
    return HarvestCrop(image, camera, session, track, start, end, end // 100, end,
                       [1.0, 2.0, 25.0, 50.0], 0.8, "model-a")


def test_harvest_writes_parquet_shards_and_reads_them_back(tmp_path):
    from reidstream.adaptation.harvest import HarvestWriter, harvest_stats, read_harvest
    from reidstream.training.data import harvest_records

    cfg = dataclass_replace(load_config().harvest, dir=str(tmp_path), rows_per_shard=3,
                            flush_seconds=3600.0)
    writer = HarvestWriter(cfg)
    crops = [
        _crop("cam1", "s1", 1, 0, 5000), _crop("cam1", "s1", 1, 0, 5000),
        _crop("cam1", "s1", 2, 4000, 9000),  # overlaps track 1: a cannot-link
        _crop("cam1", "s1", 3, 9500, 12000),  # after both: no constraint
        _crop("cam1", "s2", 1, 0, 5000),  # another tracker life: ids restart, not the same
        _crop("cam2", "s3", 1, 0, 5000),  # another camera: no constraint
    ]
    assert writer.add(crops) == 6
    writer.close()
    table = read_harvest(tmp_path)
    assert table.num_rows == 6
    assert table.column("model_version").to_pylist() == ["model-a"] * 6
    stats = harvest_stats(tmp_path)
    assert stats["crops"] == 6 and stats["tracks"] == 5 and stats["shards"] >= 2
    assert stats["cameras"]["cam1"] == {"crops": 5, "tracks": 4}
    records, cameras, cannot = harvest_records(tmp_path)
    assert cameras == ["cam1", "cam2"]
    assert len({r.track for r in records}) == 5
    assert records[0].track == records[1].track and records[0].data
    # rows keep their order: row 0 is session s1 track 1, row 2 the overlapping track 2
    assert cannot.tolist() == [sorted([records[0].track, records[2].track])]


def test_harvest_budget_evicts_oldest_shards_first(tmp_path):
    from reidstream.adaptation.harvest import HarvestWriter, shard_files

    cfg = dataclass_replace(load_config().harvest, dir=str(tmp_path), rows_per_shard=1,
                            flush_seconds=3600.0, max_bytes=1)
    writer = HarvestWriter(cfg)
    for i in range(3):
        writer.add([_crop("cam1", "s", i, 0, 1000, colour=40 * i)])
        writer.flush()
    writer.close()
    shards = shard_files(tmp_path)
    assert len(shards) == 1  # over budget: only the newest is kept
    assert writer.shards_evicted == 2
    import pyarrow.parquet as pq

    assert pq.read_table(shards[0]).column("track_id").to_pylist() == [2]


def test_harvest_keeps_only_long_tracks_and_good_crops():
    from types import SimpleNamespace

    from reidstream.adaptation.harvest import crops_of_tracks

    def crop(q):
        return SimpleNamespace(image=np.zeros((4, 2, 3), np.uint8), quality=q, frame_index=1,
                               ts_ms=1, box=np.zeros(4))

    cfg = dataclass_replace(load_config().harvest, min_track_ms=800, min_quality=0.3,
                            min_crops=2)
    tracks = [
        SimpleNamespace(camera="c", track_id=1, first_ts_ms=0, last_ts_ms=500,
                        crops=[crop(0.9)] * 3),  # a glimpse
        SimpleNamespace(camera="c", track_id=2, first_ts_ms=0, last_ts_ms=2000,
                        crops=[crop(0.9), crop(0.1)]),  # one good crop only
        SimpleNamespace(camera="c", track_id=3, first_ts_ms=0, last_ts_ms=2000,
                        crops=[crop(0.9), crop(0.5), crop(0.1)]),
    ]
    out = crops_of_tracks(tracks, "s", "m", cfg)
    assert [c.track_id for c in out] == [3, 3]


def test_camera_colour_transfer_shows_a_crop_as_another_camera_sees_it():
    from PIL import Image

    from reidstream.data.transforms import CameraColourTransfer, lab_statistics

    red = Image.fromarray(np.full((8, 4, 3), (200, 40, 40), np.uint8))
    blue = Image.fromarray(np.full((8, 4, 3), (40, 40, 200), np.uint8))
    transfer = CameraColourTransfer(1.0, {0: lab_statistics([red]), 1: lab_statistics([blue])})
    shown, camid = transfer(red, 0)
    assert camid == 1  # it now stands for camera 1's view (and takes its side information)
    assert np.abs(np.asarray(shown).astype(int) - [40, 40, 200]).max() <= 3
    never = CameraColourTransfer(0.0, {0: lab_statistics([red]), 1: lab_statistics([blue])})
    same, camid = never(red, 0)
    assert camid == 0 and np.array_equal(np.asarray(same), np.asarray(red))
    unknown, camid = transfer(red, 7)
    assert camid == 7 and np.array_equal(np.asarray(unknown), np.asarray(red))
