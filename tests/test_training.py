"""Training: losses against hand-computed cases, DIMN episodes, and real Ray Train runs.

The Ray runs are CI-sized (64x32 images, a dozen cuhk03-labeled identities, two steps an epoch)
but real: a TorchTrainer with 2 gloo workers under DDP, a worker killed mid-run and restarted
by Ray Train from the last checkpoint, and a finished run extended with ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reidstream.config import load_config
from reidstream.training.losses import (
    LOSSES,
    BatchHardTriplet,
    CenterLoss,
    CrossEntropyLabelSmooth,
    EpisodeClassification,
    LogitTriplet,
    MappedWeightRegulariser,
    MemoryBankClassification,
)
from reidstream.training.optim import BudgetClock, build_scheduler, warmup_cosine

# ---- losses -------------------------------------------------------------------------------


def test_losses_registered_by_name():
    for name in ("cross_entropy", "triplet", "center", "dimn_episode", "dimn_memory",
                 "dimn_weight_reg", "logit_triplet"):
        assert name in LOSSES
    with pytest.raises(KeyError, match="registered"):
        LOSSES.get("arcface")


def test_label_smoothing_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    eps = 0.1
    expected = 0.0
    for row, t in zip(logits.tolist(), targets.tolist(), strict=True):
        log_z = math.log(sum(math.exp(v) for v in row))
        logp = [v - log_z for v in row]
        q = [eps / 3 + (1 - eps) * (i == t) for i in range(3)]
        expected += -sum(qi * lp for qi, lp in zip(q, logp, strict=True)) / 2
    got = CrossEntropyLabelSmooth(eps)(logits, targets)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    plain = CrossEntropyLabelSmooth(0.0)(logits, targets)
    assert plain.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-6)
    with pytest.raises(ValueError):
        CrossEntropyLabelSmooth(1.0)


def test_batch_hard_triplet_by_hand():
    # 1-D features: distances are |a - b|. ids 0: {0, 2}, ids 1: {3, 7}
    feats = torch.tensor([[0.0], [2.0], [3.0], [7.0]], requires_grad=True)
    pids = torch.tensor([0, 0, 1, 1])
    # anchor: (hardest positive, hardest negative) = (2, 3), (2, 1), (4, 1), (4, 5)
    diffs = [2 - 3, 2 - 1, 4 - 1, 4 - 5]
    hard = BatchHardTriplet(margin=1.5)(feats, pids)
    assert hard.item() == pytest.approx(sum(max(0.0, d + 1.5) for d in diffs) / 4, rel=1e-5)
    soft = BatchHardTriplet(margin=0.0)(feats, pids)
    assert soft.item() == pytest.approx(sum(math.log1p(math.exp(d)) for d in diffs) / 4, rel=1e-5)
    hard.backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    # a batch of one identity has no negative: zero loss, still differentiable
    lone = BatchHardTriplet(0.3)(feats[:2], pids[:2])
    assert lone.item() == 0.0 and lone.requires_grad


def test_center_loss_by_hand():
    loss = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    feats = torch.tensor([[3.0, 4.0], [1.0, 2.0]])
    # 0.5 * mean(25, 1)
    assert loss(feats, torch.tensor([0, 1])).item() == pytest.approx(6.5)


def test_dimn_losses_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.9], [0.0, 2.0, 1.0], [1.0, 1.0, 1.0]])
    ce = EpisodeClassification()(logits)
    by_hand = -sum(
        logits[i, i].item() - math.log(sum(math.exp(v) for v in logits[i].tolist()))
        for i in range(3)
    ) / 3
    assert ce.item() == pytest.approx(by_hand, rel=1e-6)
    # margin 0.3: rows give 0.3-3+2.9=0.2, 0.3-2+1<0 -> 0, 0.3-1+1=0.3
    assert LogitTriplet(0.3)(logits).item() == pytest.approx((0.2 + 0.0 + 0.3) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="square"):
        EpisodeClassification()(logits[:2])

    memory = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # D=2 x C=2, columns (1,0) and (0,2)
    weights = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    reg = MappedWeightRegulariser()(weights, memory, torch.tensor([0, 1]))
    assert reg.item() == pytest.approx(((0 + 1) + (0 + 4)) / 2)  # ||(0,1)||^2, ||(0,-2)||^2

    feats = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    scale = 4.0
    cos = torch.tensor([[1.0, 0.0], [2**-0.5, 2**-0.5]])
    mem = MemoryBankClassification(scale)(feats, memory, torch.tensor([0, 1]))
    assert mem.item() == pytest.approx(F.cross_entropy(scale * cos, torch.tensor([0, 1])).item())


def test_warmup_cosine_schedule():
    args = {"total_steps": 100, "warmup_steps": 10, "warmup_factor": 0.1, "final_factor": 0.01}
    assert warmup_cosine(0, **args) == pytest.approx(0.1)
    assert warmup_cosine(5, **args) == pytest.approx(0.55)
    assert warmup_cosine(10, **args) == pytest.approx(1.0)
    assert warmup_cosine(55, **args) == pytest.approx(0.01 + 0.99 * 0.5)
    assert warmup_cosine(100, **args) == pytest.approx(0.01)
    values = [warmup_cosine(s, **args) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_several_optimizers_step_apart_and_resume_whole():
    """A GAN's generator and discriminator: each step moves only its own parameters, both
    schedules advance every batch, and the state of both comes back on resume."""
    from reidstream.training.optim import Optimization, param_groups
    from reidstream.training.state import optimization_state

    cfg = load_config(None, ["train.lr=0.01", "train.warmup_epochs=1", "train.epochs=4",
                             "train.grad_clip=1.0"]).train
    gen, dis = torch.nn.Linear(4, 4), torch.nn.Linear(4, 1)

    def build():
        return Optimization({"gen": param_groups(gen, cfg), "dis": param_groups(dis, cfg)},
                            cfg, steps_per_epoch=10, clock=None, fp16=False)

    opt = build()
    x = torch.randn(8, 4)
    gen_before, dis_before = gen.weight.detach().clone(), dis.weight.detach().clone()
    opt.step("dis", dis(gen(x).detach()).mean())
    assert torch.equal(gen.weight, gen_before) and not torch.equal(dis.weight, dis_before)
    dis_after = dis.weight.detach().clone()
    opt.step("gen", -dis(gen(x)).mean())
    assert not torch.equal(gen.weight, gen_before)
    assert torch.equal(dis.weight, dis_after)  # the generator's step leaves D alone
    lr_before = opt.lr
    opt.schedule()
    assert opt.lr > lr_before  # warm-up: both schedules moved on
    lrs = {name: o.param_groups[0]["lr"] for name, o in opt.optimizers.items()}
    assert lrs["dis"] == lrs["gen"]

    state = opt.state_dict()
    again = build()
    again.load_state_dict(state)
    assert again.lr == opt.lr
    moment = again.optimizers["gen"].state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moment, opt.optimizers["gen"].state_dict()["state"][0]["exp_avg"])
    with pytest.raises(KeyError, match="optimizers"):
        Optimization({"model": param_groups(gen, cfg)}, cfg, 10, None, False).load_state_dict(
            state)
    # A training state written before several optimizers is the "model" optimizer's.
    old = {"optimizer": 1, "scheduler": 2, "scaler": 3, "progress": {}}
    assert optimization_state(old) == {"model": {"optimizer": 1, "scheduler": 2, "scaler": 3}}


def test_time_budget_schedule_follows_the_clock():
    """With ``max_minutes`` the lr follows the share of the budget spent, not the step count."""
    cfg = load_config(
        None,
        ["train.max_minutes=10", "train.epochs=20", "train.warmup_epochs=2", "train.lr=0.1",
         "train.warmup_factor=0.1", "train.final_lr_factor=0.01"],
    ).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    clock = BudgetClock(cfg.max_minutes)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=1000, clock=clock)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.1)
    seen = []
    for fraction in (0.05, 0.1, 0.55, 1.0):  # warm-up is 2/20 of the budget
        clock.update(fraction * clock.budget_s)  # train seconds spent
        optimizer.step()
        scheduler.step()
        seen.append(optimizer.param_groups[0]["lr"] / cfg.lr)
    assert seen == pytest.approx([0.55, 1.0, 0.01 + 0.99 * 0.5, 0.01])
    # without a budget the same config steps by epochs: 2 steps are still deep in warm-up
    by_steps = load_config(None, ["train.warmup_epochs=2", "train.warmup_factor=0.1"]).train
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    unlimited = BudgetClock(by_steps.max_minutes)
    scheduler = build_scheduler(optimizer, by_steps, steps_per_epoch=1000, clock=unlimited)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 + 0.9 / 2000)


def test_mixed_precision_choice(tmp_path):
    from reidstream.device import cpu_has_bf16, mixed_precision_dtype

    with_bf16 = tmp_path / "zen4"
    with_bf16.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f avx512_bf16\n")
    without = tmp_path / "older"
    without.write_text("processor : 0\nflags : fpu sse2 avx2 avx512f\n")
    assert cpu_has_bf16(str(with_bf16)) and not cpu_has_bf16(str(without))
    assert not cpu_has_bf16(str(tmp_path / "missing"))
    cpu = torch.device("cpu")
    assert mixed_precision_dtype(cpu) is None  # inference on a CPU stays fp32
    expected = torch.bfloat16 if cpu_has_bf16() else None
    assert mixed_precision_dtype(cpu, cpu_bf16=True) == expected
    assert mixed_precision_dtype(torch.device("cuda")) == torch.float16


# ---- DIMN episodes on real images ----------------------------------------------------------


def _tiny_cfg(assets_dir: Path, data_dir: Path, tmp_path: Path, **extra):
    overrides = {
        "assets.assets_dir": str(assets_dir),
        "assets.data_dir": str(data_dir),
        "model.img_height": 64,
        "model.img_width": 32,
        "data.num_workers": 0,
        "data.ids_per_batch": 4,
        "data.images_per_id": 2,
        "train.max_identities": 12,
        "train.epochs": 3,
        "train.max_steps_per_epoch": 2,
        "train.warmup_epochs": 1.0,
        "train.storage_path": str(tmp_path),
        "train.name": "run",
        "train.cpus_per_worker": 0.5,
        "train.progress": False,
        "eval.max_queries": 20,
        "eval.max_gallery": 120,
        "eval.plot_queries": 0,
    }
    overrides.update(extra)
    return load_config(None, overrides)


def test_episode_sampler_two_ranks(assets):
    from reidstream.data.market import load_dataset
    from reidstream.training.episodes import EpisodeBatchSampler

    records = load_dataset("cuhk03-labeled", assets, load_config().data).train[:400]
    samplers = [EpisodeBatchSampler(records, 5, num_replicas=2, rank=r, seed=3) for r in (0, 1)]
    assert len(samplers[0]) == len(samplers[1]) > 1
    for s in samplers:
        s.set_epoch(1)
    for b0, b1 in zip(*samplers, strict=True):
        ids = []
        for batch in (b0, b1):
            gallery, probe = batch[:5], batch[5:]
            assert [records[g].pid for g in gallery] == [records[p].pid for p in probe]
            assert all(records[g].camid != records[p].camid for g, p in zip(gallery, probe,
                                                                            strict=True))
            assert len({records[g].pid for g in gallery}) == 5
            ids.append({records[g].pid for g in gallery})
        assert not ids[0] & ids[1]  # ranks see disjoint identities in a step
    again = EpisodeBatchSampler(records, 5, num_replicas=2, rank=0, seed=3)
    again.set_epoch(1)
    assert list(again) == list(samplers[0])
    again.set_epoch(2)
    assert list(again) != list(samplers[0])


def test_dimn_episode_step_updates_memory_bank(assets_dir, data_dir, tmp_path):
    from reidstream.assets import Assets
    from reidstream.training.data import load_train_data
    from reidstream.training.episodes import EpisodeBatchSampler
    from reidstream.training.loop import Rank, build_loader, build_run_model
    from reidstream.training.objectives import EpisodicObjective, build_objective

    torch.manual_seed(0)
    cfg = _tiny_cfg(assets_dir, data_dir, tmp_path, **{"model.name": "dimn",
                                                       "train.episode_ids": 4})
    assets = Assets.from_config(cfg.assets)
    data = load_train_data(cfg, assets)
    assert data.num_classes == 12
    model = build_run_model(cfg, data, assets)
    objective = build_objective(model, cfg)
    assert isinstance(objective, EpisodicObjective)
    sampler, loader = build_loader(cfg, data, "episodic", Rank(0, 1, torch.device("cpu")))
    assert isinstance(sampler, EpisodeBatchSampler)
    images, pids, camids, _ = next(iter(loader))
    assert images.shape == (8, 3, 64, 32)
    objective.train()
    loss, parts = objective(images, pids, camids)
    assert set(parts) >= {"episode", "memory", "weight_reg", "logit_triplet"}
    assert parts["weight_reg"].item() == 0.0  # empty bank: nothing to pull towards yet
    loss.backward()
    assert model.mapping[0].weight.grad.abs().sum() > 0
    weights = objective._pending[0].clone()  # the episode's mapped gallery weights
    assert weights.shape == (4, model.feature_dim)
    objective.after_step()
    gallery_pids = pids[:4]
    assert model.memory_filled[gallery_pids].all()
    assert int(model.memory_filled.sum()) == 4
    # a column seen for the first time is set to the mapped weight, not averaged with zeros
    assert torch.allclose(model.memory[:, gallery_pids].t(), weights, atol=1e-6)
    # same weights again: the regulariser now sees filled columns, which match exactly
    _, parts2 = objective(images, pids, camids)
    assert parts2["weight_reg"].item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.mapping[-1].bias.add_(0.5)  # a mapping that drifted from the bank's consensus
    _, parts3 = objective(images, pids, camids)
    assert parts3["weight_reg"].item() == pytest.approx(0.25 * model.feature_dim, rel=1e-3)


# ---- real Ray Train runs -------------------------------------------------------------------


def _history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def _check_export(run_dir: Path, expect_half: bool) -> dict:
    from reidstream.models import load_checkpoint

    payload = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    floats = [t for t in payload["state_dict"].values() if t.is_floating_point()]
    assert floats and all((t.dtype == torch.float16) == expect_half for t in floats)
    loaded = load_checkpoint(run_dir / "model.pt")
    assert loaded.cameras.to_list() == ["c1", "c2"]
    assert loaded.meta["train_identities"] == 12
    metrics = json.loads((run_dir / "metrics.json").read_text())
    original = metrics["results"]["original"]
    assert metrics["num_query"] == 20 and 0.0 <= original["mAP"] <= 1.0
    return metrics


@pytest.mark.slow
def test_two_worker_run_survives_a_killed_worker(ray_local, assets_dir, data_dir, tmp_path):
    """2 gloo workers, TransReID hybrid; rank 1 is SIGKILLed at step 3 (epoch 2); Ray Train
    restarts the group, which resumes after epoch 1 instead of starting over."""
    from reidstream.training.job import run_training

    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{
            "model.name": "transreid",
            "model.backbone": "mobilenetv2",
            "model.depth": 1,
            "model.jpm_groups": 2,
            "train.workers": 2,
            "train.max_failures": 1,
            "train.fail_at_step": 3,
        },
    )
    outcome = run_training(cfg)
    run_dir = tmp_path / "run"
    assert outcome.run_dir == run_dir and outcome.model_path == run_dir / "model.pt"
    history = _history(run_dir)
    assert [h["epoch"] for h in history] == [1, 2, 3]  # epoch 1 not trained twice
    assert [h["resumed_from_epoch"] for h in history] == [-1, 1, 1]
    assert [h["step"] for h in history] == [2, 4, 6]
    assert all(math.isfinite(h["loss"]) for h in history)
    assert outcome.metrics["epoch"] == 3 and outcome.metrics["step"] == 6
    metrics = _check_export(run_dir, expect_half=True)
    assert outcome.metrics["mAP"] == pytest.approx(metrics["results"]["original"]["mAP"])
    assert (run_dir / "config.yaml").is_file()


@pytest.mark.slow
def test_dgnet_two_workers_train_generate_and_resume(ray_local, assets_dir, data_dir, tmp_path,
                                                     capsys):
    """DG-Net on 2 gloo workers: three optimizers step in turn on each rank (DDP keeps the
    replicas equal), the discriminative terms switch on at step 2, every checkpoint carries
    the generated-image grid, and an extended run resumes its loss schedule. The part-level
    (stripes) appearance code and a flat generator rate, from training through
    ``reidstream generate``."""
    from reidstream.training.job import config_for_resume, run_training

    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{"model.name": "bot", "model.pretrained": "", "train.objective": "dgnet",
           "train.workers": 2, "train.epochs": 2, "dgnet.structure_dim": 16,
           "dgnet.base_channels": 8, "dgnet.res_blocks": 1, "dgnet.disc_base": 8,
           "dgnet.disc_scales": 2, "dgnet.discriminative_start": 2, "dgnet.primary_ramp": 0,
           "dgnet.appearance": "stripes", "dgnet.gan_final_lr_factor": 1.0},
    )
    outcome = run_training(cfg)
    run_dir = tmp_path / "run"
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4]
    assert all(math.isfinite(h[k]) for h in history for k in ("loss", "d_adv", "recon"))
    assert "fine" not in history[0] and math.isfinite(history[1]["fine"])  # after step 2
    assert (run_dir / "dgnet_generations.png").is_file()
    from PIL import Image

    assert Image.open(run_dir / "dgnet_generations.png").size == (8 * 34 + 2, 3 * 66 + 2)
    (final,) = run_dir.glob("checkpoint_final*")
    assert (final / "dgnet_generations.png").is_file()
    state = torch.load(final / "train_state.pt", map_location="cpu", weights_only=True)
    assert set(state["optimization"]) == {"model", "gen", "dis"}
    assert int(state["loss_state"]["iteration"]) == 4
    mlp_in = state["loss_state"]["gan.generator.appearance_mlp.net.0.weight"].shape[1]
    assert mlp_in == 1280 * 4  # MobileNetV2's last map over four stripes
    longer = config_for_resume(str(run_dir), ["train.epochs=3"])
    run_training(longer, resume=True)
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4, 6]
    assert [h["resumed_from_epoch"] for h in history] == [-1, -1, 2]
    (final,) = run_dir.glob("checkpoint_final*")  # the extended run's: the schedule went on
    state = torch.load(final / "train_state.pt", map_location="cpu", weights_only=True)
    assert int(state["loss_state"]["iteration"]) == 6
    assert outcome.metrics["epoch"] == 2
    # `reidstream generate RUN`: the run's generator swaps test people and scores the swaps
    from reidstream.cli import main

    capsys.readouterr()
    assert main(["generate", str(run_dir), "--dataset", "cuhk03-labeled", "--people", "4",
                 "--show", "3"]) == 0
    printed = capsys.readouterr().out
    assert "12 swaps" in printed and "appearance codes of 4 people: cosine" in printed
    assert Image.open(run_dir / "swap_matrix.png").size == (4 * 34 + 2, 4 * 66 + 2)
    import yaml

    from reidstream.generative.swap import load_trained_generator

    plain = tmp_path / "supervised-run"
    plain.mkdir()
    (plain / "config.yaml").write_text(yaml.safe_dump(load_config().to_dict()))
    with pytest.raises(ValueError, match="has no generator"):
        load_trained_generator(plain)


@pytest.mark.slow
def test_gcl_two_workers_on_a_harvest_with_one_memory_and_resume(
    ray_local, assets_dir, data_dir, tmp_path
):
    """GCL without labels on 2 gloo workers, a real harvest as the target: generator and
    discriminator step on every rank, both ranks end with one memory, every checkpoint has
    the views picture, and an extended run resumes the generator's schedule."""
    from reidstream.models import load_checkpoint
    from reidstream.training.job import config_for_resume, run_training

    harvest = _site_harvest(data_dir, tmp_path / "harvest")
    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{"model.name": "bot", "model.pretrained": "", "train.objective": "gcl",
           "spcl.mode": "unsupervised", "train.workers": 2, "train.epochs": 2,
           "data.target": str(harvest), "spcl.k1": 4, "spcl.k2": 2, "spcl.min_samples": 2,
           "gcl.structure_dim": 16, "gcl.base_channels": 8, "gcl.res_blocks": 1,
           "gcl.disc_base": 8, "gcl.disc_scales": 2, "gcl.joint_start": 2,
           "calibration.min_pairs": 2, "train.export_half": False,
           "spcl.camera_proxies": True},  # the harvest's two cameras split each identity
    )
    outcome = run_training(cfg)
    run_dir = outcome.run_dir
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4]
    assert all(math.isfinite(h[k]) for h in history
               for k in ("loss", "contrast", "view_contrast", "recon", "d_adv"))
    assert (run_dir / "gcl_views.png").is_file()
    loaded = load_checkpoint(outcome.model_path)
    assert loaded.meta["spcl"]["ranks_with_one_memory"] == 2
    assert loaded.cameras.to_list() == ["gate", "lobby"]
    longer = config_for_resume(str(run_dir), ["train.epochs=3"])
    run_training(longer, resume=True)
    (final,) = run_dir.glob("checkpoint_final*")
    state = torch.load(final / "train_state.pt", map_location="cpu", weights_only=True)
    assert set(state["optimization"]) == {"model", "gen", "dis"}
    assert int(state["loss_state"]["iteration"]) == 6


@pytest.mark.slow
def test_ddrl_two_workers_on_the_infrared_proxy_translate_and_resume(
    ray_local, assets_dir, data_dir, tmp_path
):
    """DDRL on 2 gloo workers on cuhk03's infrared proxy: feature-level network, translator and
    both discriminators step on every rank, every checkpoint carries the translation grid,
    the export serves by modality and evaluates in both directions, and an extended run
    resumes all three optimizers."""
    from reidstream.models import load_checkpoint
    from reidstream.training.job import config_for_resume, run_training

    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{"model.name": "ddrl", "train.objective": "ddrl", "model.ddrl_translator_base": 8,
           "model.ddrl_hidden": 64, "model.ddrl_metric": 32, "ddrl.disc_base": 8,
           "ddrl.disc_scales": 2, "data.infrared_proxy_cameras": [2], "train.workers": 2,
           "train.epochs": 2, "eval.protocol": "v2i", "train.export_half": False},
    )
    outcome = run_training(cfg)
    run_dir = outcome.run_dir
    history = _history(run_dir)
    assert [h["step"] for h in history] == [2, 4]
    assert all(math.isfinite(h[k]) for h in history
               for k in ("loss", "recon", "cycle", "g_adv", "id", "metric", "d_adv"))
    from PIL import Image

    assert Image.open(run_dir / "ddrl_translations.png").size == (6 * 34 + 2, 4 * 66 + 2)
    loaded = load_checkpoint(outcome.model_path)
    assert loaded.model.translator is not None and loaded.model.feature_dim == 32
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["dataset"].endswith("(v2i)")
    assert 0.0 <= metrics["results"]["original"]["mAP"] <= 1.0
    # the other direction, from the CLI, as the benchmark scores a run
    from reidstream.cli import main

    out = tmp_path / "i2v"
    assert main(["eval", f"embed.checkpoint={outcome.model_path}", "eval.dataset=cuhk03-labeled",
                 "data.infrared_proxy_cameras=[2]", "eval.protocol=i2v", "eval.max_queries=20",
                 "eval.max_gallery=120", "eval.plot_queries=0", f"eval.output_dir={out}",
                 f"assets.assets_dir={assets_dir}", f"assets.data_dir={data_dir}",
                 "model.img_height=64", "model.img_width=32"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["dataset"].endswith("(i2v)") and report["num_query"] > 0
    longer = config_for_resume(str(run_dir), ["train.epochs=3"])
    run_training(longer, resume=True)
    assert [h["step"] for h in _history(run_dir)] == [2, 4, 6]
    (final,) = run_dir.glob("checkpoint_final*")
    state = torch.load(final / "train_state.pt", map_location="cpu", weights_only=True)
    assert set(state["optimization"]) == {"model", "gen", "dis"}
    assert (final / "ddrl_translations.png").is_file()


@pytest.mark.slow
def test_resume_extends_a_finished_run(ray_local, assets_dir, data_dir, tmp_path):
    """A 1-epoch DIMN run, then ``reidstream train --resume RUN_DIR train.epochs=2``: the
    second run starts from the first one's checkpoint (step and memory bank carried over)."""
    from reidstream.cli import main
    from reidstream.models import load_checkpoint
    from reidstream.training.job import config_for_resume, run_training

    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{"model.name": "dimn", "train.episode_ids": 4, "train.epochs": 1,
           "train.export_half": False},
    )
    first = run_training(cfg)
    run_dir = first.run_dir
    with pytest.raises(ValueError, match="--resume"):
        run_training(cfg)  # the same name again is not silently a continuation
    too_big = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, name="big", workers=5))
    with pytest.raises(ValueError, match="train.workers"):
        run_training(too_big)  # a local Ray would wait forever for 5 workers
    assert not (tmp_path / "big").exists()
    assert [h["epoch"] for h in _history(run_dir)] == [1]
    filled_before = int(load_checkpoint(run_dir / "model.pt").model.memory_filled.sum())
    assert filled_before > 0

    assert main(["train", "--resume", str(run_dir), "train.epochs=2"]) == 0
    history = _history(run_dir)
    assert [h["epoch"] for h in history] == [1, 2]
    assert [h["resumed_from_epoch"] for h in history] == [-1, 1]
    assert [h["step"] for h in history] == [2, 4]
    loaded = load_checkpoint(run_dir / "model.pt")
    assert loaded.meta["epoch"] == 2 and loaded.meta["step"] == 4
    assert int(loaded.model.memory_filled.sum()) >= filled_before
    _check_export(run_dir, expect_half=False)
    assert config_for_resume(run_dir, []).train.epochs == 2  # the extension is remembered
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        config_for_resume(tmp_path / "nope", [])


def test_train_config_in_run_dataclass():
    cfg = load_config(None, ["train.workers=2", "train.optimizer=sgd"])
    assert cfg.train.workers == 2 and cfg.train.optimizer == "sgd"
    as_dict = dataclasses.asdict(cfg)
    assert "train" in as_dict and as_dict["train"]["fail_at_step"] == -1


@pytest.mark.parametrize(
    "name", ["transreid_hybrid_cpu", "transreid_tiny_cpu", "transreid_vitb16_gpu", "bot_cpu",
             "dimn_cpu", "dgnet_cpu", "dgnet_gpu"],
)
def test_shipped_configs_take_a_training_step(name, assets_dir, data_dir, tmp_path):
    """Every config in train/configs builds its model, data and objective and trains a step
    (at 64x32 on a few identities; the ViT-B config without its user-supplied weights)."""
    from reidstream.assets import Assets
    from reidstream.training.data import load_train_data
    from reidstream.training.loop import Rank, build_loader, build_run_model
    from reidstream.training.objectives import build_objective, objective_name
    from reidstream.training.optim import Optimization

    path = Path(__file__).resolve().parent.parent / "train" / "configs" / f"{name}.yaml"
    base = load_config(path)
    overrides = {
        "assets.assets_dir": str(assets_dir),
        "assets.data_dir": str(data_dir),
        "model.img_height": 64,
        "model.img_width": 32,
        "data.num_workers": 0,
        "data.ids_per_batch": 2,
        "data.images_per_id": 2,
        "train.max_identities": 6,
        "train.episode_ids": 3,
    }
    if name.endswith("gpu"):
        overrides["model.pretrained"] = ""
        overrides["model.depth"] = 2
    if name.startswith("dgnet"):  # a teacher knows all 643 identities, this step six
        overrides["dgnet.teacher"] = ""
    cfg = load_config(path, overrides)
    assets = Assets.from_config(cfg.assets)
    data = load_train_data(cfg, assets)
    model = build_run_model(cfg, data, assets)
    objective = build_objective(model, cfg)
    _, loader = build_loader(cfg, data, objective_name(cfg.train, cfg.model.name),
                             Rank(0, 1, torch.device("cpu")))
    opt = Optimization(objective.optimizer_groups(), cfg.train, 10, None, fp16=False)
    images, pids, camids, index = next(iter(loader))
    objective.train()
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    # the step runs under bf16 autocast, as on a CPU with native bf16: the model computes in
    # bf16, the losses must still come out in fp32
    def forward(**phase):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return objective(images, pids, camids, index, **phase)

    loss, parts = objective.train_step(forward, opt)
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and parts
    after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    assert base.train.name and base.train.epochs > 0


def test_init_checkpoint_starts_from_trained_weights(assets, tmp_path):
    """train.init_checkpoint loads every weight of a fitting checkpoint and refuses a misfit."""
    from reidstream.models import build_model, save_checkpoint
    from reidstream.training.loop import init_from_checkpoint

    cfg = load_config(
        overrides={"model.name": "transreid", "model.depth": 1, "model.jpm": False,
                   "model.pretrained": "", "model.num_classes": 5, "model.num_cameras": 2}
    )
    torch.manual_seed(0)
    trained = build_model(cfg.model)
    path = save_checkpoint(tmp_path / "trained.pt", trained, ["c1", "c2"], {})
    torch.manual_seed(1)
    fresh = build_model(cfg.model)
    assert not all(torch.equal(a, b) for a, b in
                   zip(fresh.state_dict().values(), trained.state_dict().values(), strict=True))
    init_from_checkpoint(fresh, str(path), assets)
    want = trained.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in fresh.state_dict().items())
    # More identities than the checkpoint was trained on: the classifier does not fit.
    other = build_model(dataclasses.replace(cfg.model, num_classes=7))
    with pytest.raises(ValueError, match="does not fit.*classifier"):
        init_from_checkpoint(other, str(path), assets)
    with pytest.raises(FileNotFoundError):
        init_from_checkpoint(fresh, str(tmp_path / "missing.pt"), assets)


def test_ablation_variants_are_valid_configs():
    """bench/ablations.py's variants load (config + overrides) and differ where they say."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("ablations", root / "bench" / "ablations.py")
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    loaded = {
        name: load_config(ablations.CONFIGS / f"{config}.yaml", [*overrides, "train.max_minutes=8"])
        for name, (config, overrides, _) in ablations.VARIANTS.items()
    }
    base = loaded["transreid"]
    assert base.model.sie and base.model.jpm and base.model.backbone == "mobilenetv2"
    assert not loaded["no-sie"].model.sie and loaded["no-sie"].model.jpm
    assert not loaded["no-jpm"].model.jpm and loaded["no-jpm"].model.sie
    assert loaded["pure-vit"].model.backbone == "vit"
    assert loaded["bot"].model.name == "bot" and loaded["dimn"].model.name == "dimn"
    assert loaded["dimn"].train.datasets == [base.data.dataset]  # same data as TransReID
    assert all(cfg.train.max_minutes == 8 for cfg in loaded.values())


# ---- site adaptation objectives on Ray Train ------------------------------------------------


def _site_harvest(data_dir: Path, folder: Path) -> Path:
    """A harvest folder from real test-split images: each (person, camera) a track of two
    crops in camera "gate" or "lobby"; tracks of one camera overlap in time in pairs."""
    import cv2

    from reidstream.adaptation.harvest import HarvestCrop, HarvestWriter
    from reidstream.data.market import read_market_folder

    records = read_market_folder(data_dir / "cuhk03-labeled" / "bounding_box_test")
    by_key: dict = {}
    for rec in records:
        by_key.setdefault((rec.pid, rec.camid), []).append(rec)
    keys = [k for k in sorted(by_key) if len(by_key[k]) >= 2][:24]
    cfg = dataclasses.replace(load_config().harvest, dir=str(folder), flush_seconds=3600.0)
    writer = HarvestWriter(cfg)
    per_camera: dict[int, int] = {}
    for i, (pid, camid) in enumerate(keys):
        n = per_camera[camid] = per_camera.get(camid, -1) + 1
        start = (n // 2) * 10_000  # two tracks of a camera share each 10 s window
        crops = [
            HarvestCrop(cv2.imread(str(rec.path)), ["gate", "lobby"][camid], "s1", i, start,
                        start + 4_000, j, start + 1000 * j, [0, 0, 64, 128], 0.9, "test")
            for j, rec in enumerate(by_key[(pid, camid)][:2])
        ]
        writer.add(crops)
    writer.close()
    return folder


def _start_checkpoint(tmp_path: Path):
    """(config, path) of a small supervised TransReID checkpoint (cameras c1, c2, 5 classes):
    the start of a fine-tune."""
    from reidstream.models import build_model, save_checkpoint

    base = load_config(overrides={
        "model.name": "transreid", "model.backbone": "mobilenetv2", "model.depth": 1,
        "model.jpm": False, "model.pretrained": "", "model.num_cameras": 2,
        "model.num_classes": 5, "model.img_height": 64, "model.img_width": 32,
    })
    torch.manual_seed(0)
    return base, save_checkpoint(tmp_path / "start.pt", build_model(base.model), ["c1", "c2"], {})


@pytest.mark.slow
def test_spcl_two_workers_adapt_with_one_memory_and_export_a_calibration(
    ray_local, assets_dir, data_dir, tmp_path
):
    """Domain adaptation on 2 gloo workers: labelled source + a real harvest; the export has
    SIE rows for the site's cameras, a site calibration, and both ranks ended with the same
    memory (checked by the objective itself)."""
    from reidstream.adaptation.calibration import SiteCalibration
    from reidstream.models import load_checkpoint
    from reidstream.training.job import run_training

    harvest = _site_harvest(data_dir, tmp_path / "harvest")
    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{
            "model.name": "transreid", "model.backbone": "mobilenetv2", "model.depth": 1,
            "model.jpm_groups": 2, "train.objective": "spcl", "train.workers": 2,
            "train.epochs": 2, "data.target": str(harvest), "data.camera_transfer": 0.5,
            "spcl.k1": 4, "spcl.k2": 2, "spcl.min_samples": 2,
            "calibration.min_pairs": 2, "train.export_half": False,
        },
    )
    outcome = run_training(cfg)
    history = _history(outcome.run_dir)
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(math.isfinite(h["loss"]) and "contrast" in h for h in history)
    loaded = load_checkpoint(outcome.model_path)
    assert loaded.cameras.to_list() == ["c1", "c2", "gate", "lobby"]
    assert loaded.model.cfg.num_classes == 0  # trained without a classifier
    assert loaded.meta["spcl"]["ranks_with_one_memory"] == 2
    calib = SiteCalibration.from_meta(loaded.meta)
    assert calib.cameras == ["gate", "lobby"] and calib.pooled is not None
    from reidstream.training.data import harvest_records

    _, _, cannot = harvest_records(harvest)
    assert calib.pooled.impostors == len(cannot) >= 10  # one pair per shared window
    assert loaded.meta["train_target_images"] == 48


@pytest.mark.slow
def test_paul_trains_end_to_end_from_a_checkpoint(ray_local, assets_dir, data_dir, tmp_path):
    """PAUL on two workers: a patch generator added to a trained checkpoint, two views of each
    harvested crop, both losses (DDP told that the cls head gets no gradient from them), the
    export embeds with the patches."""
    from reidstream.models import load_checkpoint
    from reidstream.training.job import run_training

    harvest = _site_harvest(data_dir, tmp_path / "harvest")
    base, trained = _start_checkpoint(tmp_path)
    cfg = _tiny_cfg(
        assets_dir, data_dir, tmp_path,
        **{
            "model.name": "transreid", "model.backbone": "mobilenetv2", "model.depth": 1,
            "model.jpm": False, "model.pretrained": "", "model.patches": 2,
            "train.objective": "paul", "train.init_checkpoint": str(trained), "train.workers": 2,
            "train.epochs": 1, "data.target": str(harvest), "data.images_per_id": 2,
            "paul.neighbours": 3, "calibration.min_pairs": 2, "train.blend_init": 1.0,
        },
    )
    outcome = run_training(cfg)
    history = _history(outcome.run_dir)
    assert history[0]["pedal"] > 0 and math.isfinite(history[0]["ipfl"])
    loaded = load_checkpoint(outcome.model_path)
    assert loaded.model.pgn is not None and loaded.model.feature_dim == 192 * 3
    assert loaded.cameras.to_list() == ["gate", "lobby"]  # target only: the site's cameras
    # train.blend_init 1.0: every weight the start had is the start's again (new modules, the
    # patch generator, keep what they learned: they have no start to go back to)
    start_model = load_checkpoint(trained).model
    assert torch.allclose(loaded.model.blocks[0].attn.qkv.weight,
                          start_model.blocks[0].attn.qkv.weight, atol=1e-3)
    assert torch.allclose(loaded.model.sie.table[0], start_model.sie.table.mean(0), atol=1e-3)


def test_init_checkpoint_maps_cameras_by_name_and_leaves_out_the_classifier(assets, tmp_path):
    """A site's cameras get new SIE rows (the trained rows' mean), trained cameras keep
    theirs by name in any order; a model without classifier leaves the checkpoint's out."""
    from reidstream.models import build_model, save_checkpoint
    from reidstream.training.loop import init_from_checkpoint

    base = load_config(overrides={
        "model.name": "transreid", "model.depth": 1, "model.jpm": False, "model.pretrained": "",
        "model.num_classes": 5, "model.num_cameras": 2,
    })
    torch.manual_seed(0)
    trained = build_model(base.model)
    path = save_checkpoint(tmp_path / "trained.pt", trained, ["c1", "c2"], {})
    site = build_model(dataclasses.replace(base.model, num_classes=0, num_cameras=3))
    init_from_checkpoint(site, str(path), assets, ["c2", "gate", "c1"])
    table = trained.sie.table.detach()
    assert torch.equal(site.sie.table[0], table[1]) and torch.equal(site.sie.table[2], table[0])
    assert torch.allclose(site.sie.table[1], table.mean(0))
    assert torch.equal(site.blocks[0].attn.qkv.weight, trained.blocks[0].attn.qkv.weight)


def test_blend_moves_float_weights_on_the_line_back_to_the_start(assets, tmp_path):
    """WiSE-FT: ``(1 - w) * tuned + w * start`` on every float weight, the start aligned as for
    init (a site camera's SIE row: the start's mean row); counters stay; bad weights refused."""
    from reidstream.models import build_model, load_checkpoint, save_checkpoint
    from reidstream.models.transfer import blend_weights, start_weights

    base = load_config(overrides={
        "model.name": "transreid", "model.depth": 1, "model.jpm": False, "model.pretrained": "",
        "model.num_classes": 5, "model.num_cameras": 2,
    })
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "start.pt", build_model(base.model), ["c1", "c2"], {})
    start_ckpt = load_checkpoint(path)
    torch.manual_seed(1)
    tuned = build_model(dataclasses.replace(base.model, num_classes=0, num_cameras=3))
    tuned.state_dict()["heads.0.bn.num_batches_tracked"].fill_(7)
    before = {k: v.clone() for k, v in tuned.state_dict().items()}
    start = start_weights(tuned, start_ckpt, ["c2", "gate", "c1"])
    assert torch.allclose(start["sie.table"][1], start_ckpt.model.sie.table.detach().mean(0))
    assert blend_weights(tuned, start, 0.0) == 0
    assert all(torch.equal(v, before[k]) for k, v in tuned.state_dict().items())
    moved = blend_weights(tuned, start, 0.25)
    after = tuned.state_dict()
    floats = [k for k, v in before.items() if v.is_floating_point()]
    assert moved == len(floats) > 10
    for key in floats:
        assert torch.allclose(after[key], 0.75 * before[key] + 0.25 * start[key], atol=1e-6), key
    assert int(after["heads.0.bn.num_batches_tracked"]) == 7  # not a float: stays
    tuned.load_state_dict(before)
    blend_weights(tuned, start, 1.0)
    assert all(torch.equal(tuned.state_dict()[k], start[k]) for k in floats)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        blend_weights(tuned, start, 1.5)
    with pytest.raises(ValueError, match="lacks 1"):
        blend_weights(tuned, {k: v for k, v in start.items() if k != "sie.table"}, 0.5)


def test_blend_init_needs_the_checkpoint_it_blends_with(tmp_path):
    """train.blend_init without train.init_checkpoint, or outside [0, 1], fails before Ray."""
    from reidstream.training.job import build_trainer

    for overrides, match in (({"train.blend_init": 0.5}, "needs train.init_checkpoint"),
                             ({"train.blend_init": -0.1}, r"in \[0, 1\]")):
        with pytest.raises(ValueError, match=match):
            build_trainer(load_config(None, overrides), str(tmp_path), "run")


def test_blend_command_blends_and_recalibrates_on_the_harvest(assets_dir, data_dir, tmp_path):
    """``reidstream blend``: the weights are the blend of the two checkpoints, the site
    calibration is derived again on the harvest (refused without one: it would be stale)."""
    from reidstream.adaptation.calibration import META_KEY, SiteCalibration
    from reidstream.cli import main
    from reidstream.models import build_model, load_checkpoint, save_checkpoint

    harvest = _site_harvest(data_dir, tmp_path / "harvest")
    base, start = _start_checkpoint(tmp_path)
    torch.manual_seed(1)
    site_model = build_model(dataclasses.replace(base.model, num_classes=0, num_cameras=4))
    stale = {"mean": "not this model's"}
    tuned = save_checkpoint(tmp_path / "tuned.pt", site_model, ["c1", "c2", "gate", "lobby"],
                            {META_KEY: stale}, half=True)
    common = ["--start", str(start), "--weight", "0.5", "--out", str(tmp_path / "blend.pt"),
              f"assets.assets_dir={assets_dir}", "calibration.min_pairs=2"]
    with pytest.raises(SystemExit, match="pass --harvest"):
        main(["blend", str(tuned), *common])
    bad_weight = [*common[:2], "--weight", "1.5", *common[4:]]
    with pytest.raises(SystemExit, match="0..1; got 1.5"):
        main(["blend", str(tmp_path / "not-loaded-first.pt"), *bad_weight])
    with pytest.raises(SystemExit, match="no such folder"):
        main(["blend", str(tuned), *common, "--harvest", str(tmp_path / "no-harvest")])
    assert main(["blend", str(tuned), *common, "--harvest", str(harvest)]) == 0
    blended = load_checkpoint(tmp_path / "blend.pt")
    rows = load_checkpoint(start).model.sie.table  # c1, c2; the site's cameras: their mean
    rows = torch.cat([rows, rows.mean(0, keepdim=True).expand(2, -1)])
    want = 0.5 * load_checkpoint(tuned).model.sie.table + 0.5 * rows
    assert torch.allclose(blended.model.sie.table, want, atol=2e-3)  # stored in fp16, as tuned
    assert blended.meta["blend"]["start_weight"] == 0.5
    calib = SiteCalibration.from_meta(blended.meta)
    assert calib.cameras == ["gate", "lobby"] and calib.pooled.impostors >= 10
    assert blended.cameras.to_list() == ["c1", "c2", "gate", "lobby"]


def test_frozen_batchnorm_is_only_what_came_with_statistics():
    """``train.freeze_bn_stats`` keeps the statistics a checkpoint brought; a layer new to the
    run (PAUL's patch generator) has none and must still learn its own."""
    from reidstream.training.loop import batchnorm_with_statistics

    loaded, new = torch.nn.BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    loaded.train()(torch.randn(8, 4))  # as a checkpoint's layer: it has seen batches
    model = torch.nn.Sequential(loaded, torch.nn.Linear(4, 4), new)
    assert batchnorm_with_statistics(model) == [loaded]
