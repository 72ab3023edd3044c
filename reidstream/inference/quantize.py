"""int8 post-training quantisation of exported models (ONNX Runtime's quantisers).

For CPUs without native bf16 (AVX2 only, e.g. AMD Zen 3): there bf16 is emulated and f32 is
the only fast float path.

**The detector** (:func:`quantize_detector`, static): alone it takes ~45 ms a frame in f32,
so two cameras do not keep up on two cores (BENCHMARKS.md, "A CPU without bf16"). Static int8
with per-channel weights cuts that to ~30 ms. Activation ranges (min/max) are read from real
frames put through the detector's own letterbox, so the ranges are those the pipeline will
meet. The quantised file is cached beside the f32 export, named by the f32 file and a digest
of the calibration (the video's hash and the settings): a new model or new calibration never
reuses a stale file, and a detector start that finds the file reads no frame. The result is a
QDQ graph for ONNX Runtime's CPU provider. OpenVINO reads such graphs but scored them wrongly
here (a third of the boxes lost), so int8 runs in ONNX Runtime only.

**The embedder** (:func:`quantize_embedder`, dynamic): only its matrix products (a
transformer's linear layers and attention) become int8, with each batch's activation range
measured as it runs, so no calibration set is needed and no crop's range can fall outside
one. Its convolutions stay f32: statically quantised they took the shipped model's crops to
cosine 0.33 of f32 (BENCHMARKS.md, "int8 embedder"), and on an AVX2 CPU int8 convolutions are
barely faster than ONNX Runtime's f32 ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidstream.assets import sha256_of
from reidstream.inference.export import write_atomically, write_manifest

# Operators quantised; the detection head's box decoding (DFL, the final concatenation and
# arithmetic of /model.22/) stays float: it mixes pixel offsets and scores in one tensor.
QUANTISED_OPS = ("Conv", "Mul", "Add", "Concat", "MaxPool", "Resize", "Sigmoid")
HEAD_DECODE = ("dfl", "Concat", "Sigmoid", "Split", "Sub", "Add", "Div", "Mul")
HEAD_PREFIX = "/model.22/"
# The person graph (detection.head: person) has no decoding; its head's activations and last
# convolutions (the raw box bins and the person logit that decode() reads) stay float: all
# quantised, they were slower and kept one fewer of 221 confident boxes (BENCHMARKS.md,
# "A person-only detector head").
PERSON_HEAD_PREFIXES = ("/box.", "/score.")
PERSON_HEAD_FLOAT_OPS = ("Sigmoid", "Mul")
# Bump when the recipe changes in a way the settings below do not show.
RECIPE = 1


def _float_nodes(graph: Any) -> list[str]:
    """The detector nodes left in float (see the constants above), by the graph's kind."""
    names = [(node.name, node.op_type) for node in graph.node]
    if any(name.startswith(PERSON_HEAD_PREFIXES) for name, _ in names):
        return [name for name, op in names if name.startswith(PERSON_HEAD_PREFIXES)
                and (op in PERSON_HEAD_FLOAT_OPS or _last_conv_of_branch(name))]
    return [name for name, _ in names
            if name.startswith(HEAD_PREFIX) and any(k in name for k in HEAD_DECODE)]


def _last_conv_of_branch(name: str) -> bool:
    """``/box.0/box.0.2/Conv``: the third (last, 1x1) layer of a head branch."""
    parts = name.split("/")
    return len(parts) > 2 and parts[2].endswith(".2")


@dataclass(frozen=True)
class Int8Calibration:
    """Which frames set the activation ranges: every ``step``-th of the first ``frames *
    step`` of ``video``, letterboxed to ``imgsz``. Its :meth:`digest` names the cached file, so
    a detector start finds the file without reading the video (only a hash of it)."""

    video: Path
    frames: int
    step: int
    imgsz: int

    def digest(self) -> str:
        settings = {"recipe": RECIPE, "ops": QUANTISED_OPS, "float": HEAD_DECODE,
                    "person_float": PERSON_HEAD_FLOAT_OPS,
                    "video_sha256": sha256_of(Path(self.video)), "frames": self.frames,
                    "step": self.step, "imgsz": self.imgsz}
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def read(self) -> list[np.ndarray]:
        """The BGR frames; a video that does not open or has no frames is an error."""
        from reidstream.detection.video import read_video_frames

        frames = read_video_frames(str(self.video), self.frames, step=self.step)
        if not frames:
            raise ValueError(f"int8 calibration video {self.video}: no frames to calibrate on")
        return frames

    def check(self) -> None:
        """Fail now, with a clear error, on a video that is missing or does not decode (not
        later inside an export, where ``auto`` would quietly fall back to torch)."""
        from reidstream.detection.video import read_video_frames

        if not Path(self.video).is_file():
            raise FileNotFoundError(f"int8 calibration video {self.video} does not exist")
        if not read_video_frames(str(self.video), 1):
            raise ValueError(f"int8 calibration video {self.video}: no frames to calibrate on")


def quantize_detector(
    f32_path: str | Path,
    calibration: Int8Calibration,
    preprocess: Callable[[Sequence[np.ndarray]], np.ndarray],
    force: bool = False,
) -> Path:
    """The int8 twin of ``f32_path`` (cached by the f32 file's name and the calibration's
    digest), calibrated on the calibration's frames one at a time through ``preprocess``
    (frames -> the model's ``images`` input). The frames are read only to build it."""
    f32_path = Path(f32_path)
    tag = calibration.digest()
    target = f32_path.with_name(f"{f32_path.stem}-int8-{tag}.onnx")
    if target.is_file() and not force:
        return target
    batches = [preprocess([frame]) for frame in calibration.read()]

    def write(tmp_file: Path) -> None:
        import onnx
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        class Frames(CalibrationDataReader):
            def __init__(self) -> None:
                self._left = iter(batches)

            def get_next(self) -> dict[str, np.ndarray] | None:
                batch = next(self._left, None)
                return None if batch is None else {"images": batch}

        prepared = tmp_file.with_name("prepared.onnx")
        # Symbolic shape inference cannot follow the dynamic letterbox sizes: ONNX's own only.
        quant_pre_process(str(f32_path), str(prepared), skip_symbolic_shape=True)
        keep_float = _float_nodes(onnx.load(str(prepared)).graph)
        quantize_static(
            str(prepared), str(tmp_file), Frames(),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=keep_float,
        )

    write_atomically(target, write)
    write_manifest(target, {"kind": "detector-int8", "source": f32_path.name,
                            "calibration": {"video": str(calibration.video),
                                            "frames": len(batches), "step": calibration.step,
                                            "imgsz": calibration.imgsz, "digest": tag,
                                            "method": "minmax, per-channel int8 weights"}})
    return target


# The embedder's quantised operators (dynamic: activation ranges measured per batch).
EMBEDDER_OPS = ("MatMul", "Gemm")
EMBEDDER_RECIPE = 1


def quantize_embedder(f32_path: str | Path, force: bool = False) -> Path:
    """The int8 twin of an exported embedder (``f32_path``), cached beside it: dynamic
    quantisation of :data:`EMBEDDER_OPS`, int8 weights, the rest of the graph f32."""
    f32_path = Path(f32_path)
    target = f32_path.with_name(f"{f32_path.stem}-int8dyn-r{EMBEDDER_RECIPE}.onnx")
    if target.is_file() and not force:
        return target

    def write(tmp_file: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process

        prepared = tmp_file.with_name("prepared.onnx")
        quant_pre_process(str(f32_path), str(prepared), skip_symbolic_shape=True)
        quantize_dynamic(str(prepared), str(tmp_file), weight_type=QuantType.QInt8,
                         op_types_to_quantize=list(EMBEDDER_OPS))

    write_atomically(target, write)
    write_manifest(target, {"kind": "embedder-int8", "source": f32_path.name,
                            "method": f"dynamic, int8 weights, ops {list(EMBEDDER_OPS)}"})
    return target
