"""Crops in, L2-normalised float32 embeddings out: the one entry point serving code uses.

It owns everything between a detector's BGR crop and a vector a FAISS index can take:
resizing to the model's input, colour order, normalisation, batching, device, fp16 on CUDA,
and turning camera names into the model's side-information indices.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from reidstream.assets import Assets
from reidstream.config import Config, EmbedConfig, InferenceConfig, load_config
from reidstream.device import autocast, select_device
from reidstream.models.base import ReIDModel, build_model, run_model
from reidstream.models.cameras import CameraRegistry
from reidstream.models.checkpoint import load_checkpoint

# int8: the exported graph's matrix products, dynamically quantised (ONNX Runtime, CPU);
# auto: f32 or int8, whichever embeds faster here (timed at start-up).
EMBED_PRECISIONS = ("auto", "f32", "bf16", "fp16", "int8")

if TYPE_CHECKING:
    from reidstream.adaptation.calibration import SiteCalibration

log = logging.getLogger(__name__)


class Embedder:
    """Embeds person crops with a re-id model in eval mode.

    ``embed`` takes BGR uint8 crops of any size (resized with cv2 to the model's input) or a
    float tensor ``[N, 3, H, W]`` already normalised (resized bilinearly when its size differs).
    Camera names go through the registry (-1 when unknown); ints are table indices.

    ``backend``: ``torch`` runs the model as it is; ``onnxruntime`` / ``openvino`` /
    ``tensorrt`` run its ONNX export (made on first use, cached by a hash of the weights);
    ``auto`` times the installed ones on a batch of crops and keeps the fastest. The torch
    model stays loaded either way (DIMN's gallery mapping and training-time uses need it).
    """

    def __init__(
        self,
        model: ReIDModel,
        cameras: CameraRegistry | Sequence[str] = (),
        *,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "auto",
        batch_size: int = 32,
        fp16: bool = True,
        unknown_camera: str | None = None,
        flip: bool = False,
        calibration: SiteCalibration | None = None,
        backend: str = "torch",
        precision: str = "f32",
        inference: InferenceConfig | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("mean and std need one value per colour channel (RGB)")
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.model = model.to(self.device).eval()
        if unknown_camera is not None:
            self.model.unknown_camera = unknown_camera
        self.cameras = cameras if isinstance(cameras, CameraRegistry) else CameraRegistry(cameras)
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0
        self.batch_size = batch_size
        self.fp16 = fp16
        self.flip = flip
        self.calibration = calibration
        self.size = (model.cfg.img_height, model.cfg.img_width)
        if precision not in EMBED_PRECISIONS:
            raise ValueError(f"embed.precision must be one of {EMBED_PRECISIONS}, got "
                             f"{precision!r}")
        self.precision = precision
        self.session = None  # an exported model's runtime; None runs the torch model
        self.backend = self._open_backend(backend, inference)

    def _open_backend(self, backend: str, inference: InferenceConfig | None) -> str:
        if self.precision == "auto":
            return self._open_fastest(backend, inference)
        return self._open(backend, self.precision, inference)

    def _trial_crops(self) -> torch.Tensor:
        return torch.randn(min(8, self.batch_size), 3, *self.size)  # the trial batch of auto

    def _open(self, backend: str, precision: str, inference: InferenceConfig | None) -> str:
        """Open ``backend`` in ``precision``; sets ``session`` and ``precision`` (what runs)."""
        from reidstream.inference import backends as rt
        from reidstream.inference.export import export_embedder

        crops = self._trial_crops()
        device = self.device.type
        # int8 runs in ONNX Runtime only: auto goes there, a named runtime with int8 is an error.
        backend, precision = rt.settle_precision(backend, precision, device, "embed.backend")
        self.precision = precision  # what runs: the torch model is never int8

        def export(folder: Path) -> Path:
            path = export_embedder(self.model, folder, name=self.model.cfg.name)
            if precision == "int8":
                from reidstream.inference.quantize import quantize_embedder

                path = quantize_embedder(path)
            return path

        backend, self.session = rt.open_backend(
            backend, device, inference, export=export,
            runner=lambda name, path: rt.Session(path, name, device, precision=precision),
            trial=lambda session: self._run(session, crops, None),
            key="embed.backend", what=f"model {self.model.cfg.name!r}",
        )
        return backend

    def _open_fastest(self, backend: str, inference: InferenceConfig | None) -> str:
        """``embed.precision: auto``: f32 in ``backend`` (``auto``: its fastest runtime), and
        on a CPU ONNX Runtime's int8 graph too where ``backend`` allows it; the faster on a
        batch of crops is kept (int8 embeds within cosine 0.999 of f32, BENCHMARKS.md)."""
        from reidstream.inference import backends as rt

        chosen = (self._open(backend, "f32", inference), self.session, self.precision)
        if (self.device.type != "cpu" or backend not in ("auto", rt.ONNXRUNTIME)
                or rt.ONNXRUNTIME not in rt.installed_backends("cpu")):
            return chosen[0]
        try:
            int8 = (self._open(rt.ONNXRUNTIME, "int8", inference), self.session, self.precision)
        except Exception as exc:  # e.g. a model that does not export: keep what runs
            log.warning("embed.precision auto: no int8 graph (%s); keeping %s f32", exc,
                        chosen[0])
            int8 = None
        if int8 is not None:
            crops = self._trial_crops()
            repeats = (inference or load_config().inference).auto_repeats
            trials = {f"{b} {p}": functools.partial(self._run, session, crops, None)
                      for b, session, p in (chosen, int8)}
            if rt.pick_fastest(trials, repeats) == f"{int8[0]} {int8[2]}":
                chosen = int8
        backend, self.session, self.precision = chosen
        return backend

    def _run(
        self, session, images: torch.Tensor, cams: torch.Tensor | None,
        modalities: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw features ``[N, D]`` float32 of a preprocessed batch, by torch or a session
        (a model that reads modalities runs in torch: its export refuses)."""
        if session is None:
            with torch.inference_mode(), autocast(self.device, self.fp16):
                return run_model(self.model, images, cams, modalities).float()
        if cams is None:
            cams = torch.full((len(images),), -1, dtype=torch.long)
        feed = {"images": images.detach().cpu().numpy(), "camera_ids": cams.cpu().numpy()}
        return torch.from_numpy(session.run(feed)).to(self.device)

    @property
    def feature_dim(self) -> int:
        return self.model.feature_dim

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        embed_cfg: EmbedConfig,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        inference: InferenceConfig | None = None,
    ) -> Embedder:
        """Mean/std: given, else the checkpoint's ``meta["mean"]/["std"]`` (what it was trained
        with), else the ``data.mean/std`` defaults."""
        from reidstream.adaptation.calibration import SiteCalibration

        loaded = load_checkpoint(path)
        for alias, target in embed_cfg.camera_aliases.items():
            loaded.cameras.add_alias(alias, target)
        data_defaults = load_config().data
        calibration = SiteCalibration.from_meta(loaded.meta) if embed_cfg.site_calibration else None
        return cls(
            loaded.model,
            loaded.cameras,
            mean=mean or loaded.meta.get("mean") or data_defaults.mean,
            std=std or loaded.meta.get("std") or data_defaults.std,
            calibration=calibration,
            inference=inference,
            **_runtime_kwargs(embed_cfg),
        )

    @classmethod
    def from_config(cls, cfg: Config, assets: Assets) -> Embedder:
        """``cfg.embed.checkpoint`` when set (a path, or an asset name), else ``cfg.model`` as
        built (ImageNet init, untrained) with no named cameras."""
        if cfg.embed.checkpoint:
            path = Path(cfg.embed.checkpoint).expanduser()
            if not path.is_file():
                path = assets.asset(cfg.embed.checkpoint)
            return cls.from_checkpoint(path, cfg.embed, inference=cfg.inference)
        if cfg.embed.camera_aliases:
            raise ValueError("embed.camera_aliases needs a checkpoint (one with named cameras)")
        model = build_model(cfg.model, assets)
        return cls(model, (), mean=cfg.data.mean, std=cfg.data.std, inference=cfg.inference,
                   **_runtime_kwargs(cfg.embed))

    def embed(
        self,
        crops: Sequence[np.ndarray] | torch.Tensor,
        cameras: Sequence[str | int] | None = None,
        modalities: Sequence[str] | None = None,
    ) -> np.ndarray:
        """``float32 [N, feature_dim]``, each row of unit length. ``modalities`` (visible /
        infrared per crop) choose the side information of cameras the model has no row for
        (:meth:`reidstream.models.cameras.CameraRegistry.indices`)."""
        n = len(crops)
        if cameras is not None and len(cameras) != n:
            raise ValueError(f"{n} crops but {len(cameras)} camera ids")
        if modalities is not None and len(modalities) != n:
            raise ValueError(f"{n} crops but {len(modalities)} modalities")
        if n == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        camera_ids = None
        if cameras is not None:
            camera_ids = torch.tensor(self.cameras.indices(cameras, modalities), dtype=torch.long)
        modality_ids = modality_indices(modalities) if modalities is not None else None
        self._check_unknown(camera_ids, n)
        out = []
        with torch.inference_mode():
            for start in range(0, n, self.batch_size):
                stop = min(n, start + self.batch_size)
                images = self._batch(crops[start:stop], start)
                cams = None if camera_ids is None else camera_ids[start:stop].to(self.device)
                mods = None if modality_ids is None else modality_ids[start:stop].to(self.device)
                feats = self._run(self.session, images, cams, mods)
                if self.flip:
                    # The mirrored person is the same person: averaging both views
                    # cancels left/right pose and carrying-side differences.
                    feats = feats + self._run(self.session, images.flip(3), cams, mods)
                out.append(F.normalize(feats, dim=1).cpu())
        vectors = torch.cat(out).numpy()
        if self.calibration is not None and cameras is not None:
            vectors = self.calibration.centre_vectors(vectors, self._camera_names(cameras))
        return vectors

    def _check_unknown(self, camera_ids: torch.Tensor | None, n: int) -> None:
        """The "error" policy for an exported graph (the torch model checks it itself)."""
        if self.session is None or self.model.unknown_camera != "error":
            return
        if getattr(self.model, "sie", None) is None:  # no side information: cameras unused
            return
        unknown = n if camera_ids is None else int((camera_ids == -1).sum())
        if unknown:
            raise ValueError(
                f"{unknown} sample(s) with an unknown camera (id -1) and unknown_camera='error'; "
                "map the camera in the camera registry or choose 'zero' or 'mean'"
            )

    def _camera_names(self, cameras: Sequence[str | int]) -> list[str]:
        """Names for the calibration: ints are table rows, names pass through their alias."""
        names = self.cameras.names
        return [
            names[c] if isinstance(c, int) and 0 <= c < len(names) else str(c) for c in cameras
        ]

    def map_gallery(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """DIMN only: classifier weight vectors ``float32 [N, D]`` for gallery features."""
        self._require_dimn("map_gallery")
        feats = torch.as_tensor(np.asarray(features, dtype=np.float32)).reshape(
            -1, self.feature_dim
        )
        with torch.inference_mode():
            return self.model.map_gallery(feats.to(self.device)).float().cpu().numpy()

    def score(self, probe_features: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """DIMN only: logits ``[P, N]`` of probes against weights from :meth:`map_gallery`."""
        self._require_dimn("score")
        probes = torch.as_tensor(np.asarray(probe_features, dtype=np.float32))
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32))
        with torch.inference_mode():
            return self.model.score(probes.to(self.device), w.to(self.device)).cpu().numpy()

    def _require_dimn(self, what: str) -> None:
        if not hasattr(self.model, "map_gallery"):
            raise TypeError(
                f"{what}: model {self.model.cfg.name!r} has no gallery mapping; only dimn maps "
                "gallery features to classifier weights (compare embeddings by cosine instead)"
            )

    def _batch(self, crops: Sequence[np.ndarray] | torch.Tensor, offset: int) -> torch.Tensor:
        height, width = self.size
        if isinstance(crops, torch.Tensor):
            if crops.ndim != 4 or crops.shape[1] != 3:
                raise ValueError(f"tensor input must be [N, 3, H, W], got {tuple(crops.shape)}")
            images = crops.to(self.device, dtype=torch.float32)
            if tuple(images.shape[2:]) != (height, width):
                images = F.interpolate(
                    images, size=(height, width), mode="bilinear", align_corners=False
                )
            return images
        import cv2

        batch = np.empty((len(crops), height, width, 3), dtype=np.float32)
        for i, crop in enumerate(crops):
            if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3:
                raise ValueError(
                    f"crop {offset + i}: expected a BGR uint8 HxWx3 array, got "
                    f"{getattr(crop, 'dtype', type(crop).__name__)} "
                    f"{getattr(crop, 'shape', '')}"
                )
            if crop.shape[2] != 3 or crop.shape[0] == 0 or crop.shape[1] == 0:
                raise ValueError(f"crop {offset + i}: shape {crop.shape} is not a HxWx3 image")
            resized = cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)
            batch[i] = resized[:, :, ::-1]
        batch = (batch - self.mean) / self.std
        return torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous().to(self.device)


def modality_indices(modalities: Sequence[str]) -> torch.Tensor:
    """Modality names -> the model's ``modalities`` tensor (0 visible, 1 infrared)."""
    from reidstream.ingest.wire import MODALITIES

    unknown = sorted({m for m in modalities if m not in MODALITIES})
    if unknown:
        raise ValueError(f"unknown modalities {unknown}: expected one of {list(MODALITIES)}")
    return torch.tensor([MODALITIES.index(m) for m in modalities], dtype=torch.long)


def _runtime_kwargs(embed_cfg: EmbedConfig) -> dict:
    return {
        "device": embed_cfg.device,
        "batch_size": embed_cfg.batch_size,
        "fp16": embed_cfg.fp16,
        "unknown_camera": embed_cfg.unknown_camera,
        "flip": embed_cfg.flip,
        "backend": embed_cfg.backend,
        "precision": embed_cfg.precision,
    }
