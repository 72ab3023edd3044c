"""int8 post-training quantisation of an exported detector (ONNX Runtime's static quantiser).

For CPUs without native bf16 (AVX2 only, e.g. AMD Zen 3): there bf16 is emulated, f32 is the
only fast float path and the detector alone takes ~45 ms a frame, so two cameras do not keep
up on two cores (BENCHMARKS.md, "A CPU without bf16"). Static int8 with per-channel weights cuts
that to ~30 ms.

Calibration: activation ranges (min/max) are read from real frames put through the
detector's own letterbox, so the ranges are those the pipeline will meet. The quantised file
is cached beside the f32 export, named by the f32 file and a digest of the calibration
(frames and settings): a new model or new calibration never reuses a stale file.

The result is a QDQ graph for ONNX Runtime's CPU provider. OpenVINO reads such graphs but
scored them wrongly here (a third of the boxes lost), so int8 runs in ONNX Runtime only.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from reidstream.inference.export import _manifest, _write_atomically

# Operators quantised; the detection head's box decoding (DFL, the final concatenation and
# arithmetic of /model.22/) stays float: it mixes pixel offsets and scores in one tensor.
QUANTISED_OPS = ("Conv", "Mul", "Add", "Concat", "MaxPool", "Resize", "Sigmoid")
HEAD_DECODE = ("dfl", "Concat", "Sigmoid", "Split", "Sub", "Add", "Div", "Mul")
HEAD_PREFIX = "/model.22/"


def calibration_digest(batches: Sequence[np.ndarray]) -> str:
    digest = hashlib.sha256(json.dumps([QUANTISED_OPS, HEAD_DECODE]).encode())
    for batch in batches:
        digest.update(str(batch.shape).encode())
        digest.update(np.ascontiguousarray(batch).tobytes())
    return digest.hexdigest()[:12]


def quantize_detector(
    f32_path: str | Path,
    frames: Sequence[np.ndarray],
    preprocess: Callable[[Sequence[np.ndarray]], np.ndarray],
    force: bool = False,
) -> Path:
    """The int8 twin of ``f32_path`` (cached), calibrated on ``frames`` (BGR) one at a time
    through ``preprocess`` (frames -> the model's ``images`` input)."""
    if not frames:
        raise ValueError("int8 calibration needs at least one frame")
    f32_path = Path(f32_path)
    batches = [preprocess([frame]) for frame in frames]
    tag = calibration_digest(batches)
    target = f32_path.with_name(f"{f32_path.stem}-int8-{tag}.onnx")
    if target.is_file() and not force:
        return target

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
        graph = onnx.load(str(prepared)).graph
        keep_float = [
            node.name for node in graph.node
            if node.name.startswith(HEAD_PREFIX) and any(k in node.name for k in HEAD_DECODE)
        ]
        quantize_static(
            str(prepared), str(tmp_file), Frames(),
            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=True,
            calibrate_method=CalibrationMethod.MinMax,
            op_types_to_quantize=list(QUANTISED_OPS), nodes_to_exclude=keep_float,
        )

    _write_atomically(target, write)
    _manifest(target, {"kind": "detector-int8", "source": f32_path.name,
                       "calibration": {"frames": len(frames), "digest": tag,
                                       "method": "minmax, per-channel int8 weights"}})
    return target
