"""The GPU path in one script, for the few minutes a GPU is lent (``device`` tool).

    python bench/gpu_check.py [--out DIR] [--cameras 4 8 16] [--seconds 20]

Steps, each printed and written to ``DIR/gpu_check.json`` as it finishes (a later failure
keeps the earlier figures): the GPU and runtimes seen; the detector on CUDA fp16 (torch) and
through every installed CUDA runtime (ONNX Runtime CUDA / TensorRT), ms per frame at batch
1 and 8, boxes against fp32; the embedder's crops/s at batch 64 in fp16 (FastReID's FastRT
anchor: ~1,050 crops/s fp16 ResNet-50 on a 2080 Ti) and its cosine to fp32; FAISS on the GPU
(which wheel, whether it has kernels for this GPU: ``faiss-gpu-cu12`` has none for sm_90,
the ``[gpu]`` extra's ``faiss-gpu`` 1.15 has); then ``bench pipeline`` with many cameras.
Nothing here runs without CUDA: it says so and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "False")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def main() -> int:
    import numpy as np
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/gpu"))
    parser.add_argument("--cameras", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}

    def save(step: str, value) -> None:
        report[step] = value
        print(f"== {step}: {json.dumps(value, default=str)}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))

    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to check", file=sys.stderr)
        return 2
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout
    from reidstream.inference.backends import installed_backends

    save("gpu", {"nvidia-smi": smi.strip(), "torch": torch.__version__,
                 "capability": torch.cuda.get_device_capability(0),
                 "backends": installed_backends("cuda")})

    from reidstream.assets import Assets
    from reidstream.config import load_config
    from reidstream.detection import PersonDetector
    from reidstream.detection.boxes import box_iou
    from reidstream.detection.video import read_video_frames
    from reidstream.models import Embedder

    cfg = load_config(overrides=["detection.device=cuda", "embed.device=cuda"])
    assets = Assets.from_config(cfg.assets)
    frames = read_video_frames(str(assets.asset("vtest.avi")), 64, step=2)

    def step(name, fn) -> None:
        try:
            save(name, fn())
        except Exception as exc:  # one runtime failing must not lose the others' figures
            save(name, {"error": f"{type(exc).__name__}: {exc}",
                        "trace": traceback.format_exc(limit=3)})

    def detector_rows():
        rows, ref = {}, None
        for backend in ["torch", *[b for b in installed_backends("cuda") if b != "torch"]]:
            for half in (False, True):
                det_cfg = dataclasses.replace(cfg.detection, backend=backend, half=half,
                                              precision="fp16" if half else "f32")
                det = PersonDetector(det_cfg, assets, cfg.inference)
                row = {}
                for batch in (1, 8):
                    det.detect(frames[:batch])
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                    found = []
                    for i in range(0, len(frames), batch):
                        found += det.detect(frames[i : i + batch])
                    torch.cuda.synchronize()
                    elapsed = time.perf_counter() - start
                    row[f"ms_per_frame_b{batch}"] = elapsed / len(frames) * 1e3
                if ref is None:
                    ref = found
                ious = [box_iou(a.boxes, b.boxes).max(1).min() for a, b in
                        zip(ref, found, strict=True) if len(a) and len(b)]
                row["min_box_iou_vs_torch_fp32"] = float(min(ious, default=float("nan")))
                rows[f"{det.backend} {'fp16' if half else 'fp32'}"] = row
        return rows

    def embedder_rows():
        crops = [f[100:356, 200:328].copy() for f in frames]  # 64 person-sized crops
        rows, ref = {}, None
        for backend in ["torch", *[b for b in installed_backends("cuda") if b != "torch"]]:
            for half in (False, True):
                emb_cfg = dataclasses.replace(cfg.embed, backend=backend, fp16=half,
                                              batch_size=64, precision="fp16" if half else "f32")
                emb = Embedder.from_checkpoint(assets.asset(cfg.embed.checkpoint), emb_cfg,
                                               inference=cfg.inference)
                emb.embed(crops, ["c1"] * 64)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(10):
                    vectors = emb.embed(crops, ["c1"] * 64)
                torch.cuda.synchronize()
                rate = 640 / (time.perf_counter() - start)
                if ref is None:
                    ref = vectors
                rows[f"{emb.backend} {'fp16' if half else 'fp32'}"] = {
                    "crops_per_s_b64": rate,
                    "min_cosine_vs_torch_fp32": float(np.min(np.sum(ref * vectors, axis=1))),
                }
        return rows

    def faiss_row():
        import faiss

        row = {"faiss": faiss.__version__, "gpus": faiss.get_num_gpus()}
        if row["gpus"]:
            data = np.random.default_rng(0).standard_normal((100_000, 256), dtype=np.float32)
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0,
                                           faiss.IndexFlatIP(256))
            index.add(data)
            start = time.perf_counter()
            _, found = index.search(data[:1000], 10)
            row["flat_100k_1000q_ms"] = (time.perf_counter() - start) * 1e3
            row["self_found"] = float(np.mean(found[:, 0] == np.arange(1000)))
        return row

    step("detector", detector_rows)
    step("embedder", embedder_rows)
    step("faiss", faiss_row)
    bench = subprocess.run(
        [sys.executable, "-m", "reidstream.cli", "bench", "pipeline", "--cameras",
         *map(str, args.cameras), "--seconds", str(args.seconds), "--out",
         str(out / "pipeline.json"), "detection.device=cuda", "embed.device=cuda"],
        capture_output=True, text=True,
    )
    save("pipeline", {"rc": bench.returncode, "tail": bench.stdout[-3000:] + bench.stderr[-1500:]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
