"""Typed configuration.

Every default lives in ``reidstream/cfg/default.yaml``; the dataclasses here only give the
values their types. A config is built by layering the defaults, an optional user YAML file
and ``section.key=value`` overrides from the command line, then checked strictly: an unknown
key or a value of the wrong type is an error that names the key, never a silent default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG_PATH = Path(__file__).parent / "cfg" / "default.yaml"


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class AssetsConfig:
    assets_dir: str
    data_dir: str
    verify_sha256: bool


@dataclass
class ModelConfig:
    name: str
    size: str
    backbone: str
    img_height: int
    img_width: int
    feat_dim: int
    num_classes: int
    num_cameras: int
    num_views: int
    sie: bool
    sie_coef: float
    jpm: bool
    jpm_groups: int
    jpm_shift: int
    patch_stride: int
    drop_path: float
    pretrained: str
    neck: str
    dimn_mapping_layers: int
    dimn_memory_momentum: float
    depth: int
    last_stride: int
    hybrid_blocks: int
    patches: int
    ddrl_translator_base: int
    ddrl_hidden: int
    ddrl_metric: int
    ddrl_gate_init: float


@dataclass
class DataConfig:
    dataset: str
    target: str
    layout: str
    train_split: str
    query_split: str
    gallery_split: str
    ids_per_batch: int
    images_per_id: int
    num_workers: int
    flip_prob: float
    pad: int
    erase_prob: float
    degrade_prob: float
    degrade_min_height: int
    degrade_jpeg_quality: list[int]
    camera_transfer: float
    infrared_proxy_cameras: list[int]
    trial: int
    sysu_search: str
    mean: list[float]
    std: list[float]


@dataclass
class EvalConfig:
    checkpoint: str
    dataset: str
    batch_size: int
    rerank: bool
    rerank_k1: int
    rerank_k2: int
    rerank_lambda: float
    rerank_exact_max: int
    max_rank: int
    metric: str
    cameras: str
    camera_names: list[str]
    max_queries: int
    max_gallery: int
    protocol: str
    output_dir: str
    plot_queries: int
    plot_topk: int


@dataclass
class EmbedConfig:
    checkpoint: str
    batch_size: int
    device: str
    fp16: bool
    unknown_camera: str
    camera_aliases: dict[str, str]
    flip: bool
    site_calibration: bool
    backend: str
    precision: str


@dataclass
class InferenceConfig:
    cache_dir: str
    auto_repeats: int


@dataclass
class KafkaConfig:
    bootstrap_servers: str
    frames_topic: str
    events_topic: str
    tracks_topic: str
    group_id: str
    security_protocol: str
    sasl_mechanism: str
    sasl_username: str
    sasl_password: str  # must stay empty: secrets come from the *_env / *_file keys below
    sasl_password_env: str
    sasl_password_file: str
    sasl_oauth_token_env: str
    sasl_oauth_token_file: str
    ssl_cafile: str
    session_timeout_ms: int
    max_poll_interval_ms: int
    heartbeat_interval_ms: int
    max_message_bytes: int
    ssl_certfile: str
    ssl_keyfile: str
    ssl_password_env: str
    ssl_password_file: str
    cameras: list[str]
    partitions: int
    auto_offset_reset: str
    request_timeout_ms: int
    connect_timeout_ms: int
    delivery_timeout_ms: int
    max_block_ms: int
    retry_backoff_ms: int
    reconnect_backoff_max_ms: int
    linger_ms: int
    idempotent_producer: bool
    jpeg_quality: int
    max_frame_pixels: int
    max_ts_jump_ms: int
    ts_confirm_frames: int
    dead_letter_topic: str

    def __post_init__(self) -> None:
        # A config value ends up in argv (visible to every user in `ps`), in files that get
        # committed or uploaded with Ray jobs, and in every actor's pickled arguments.
        if self.sasl_password:
            raise ConfigError(
                "kafka.sasl_password: a password in a config file or a command-line override "
                "is refused (command lines show in `ps` and shell history; config files get "
                "committed and uploaded with Ray jobs). Put it in the environment variable "
                "named by kafka.sasl_password_env (default REIDSTREAM_KAFKA_SASL_PASSWORD) or "
                "in a file named by kafka.sasl_password_file (docs/secrets.md). If it was typed "
                "on a command line, consider it exposed and rotate it."
            )


@dataclass
class SpclConfig:
    mode: str
    temperature: float
    momentum: float
    k1: int
    k2: int
    eps: float
    eps_gap: float
    min_samples: int
    reliability: bool
    reliable_quantile: float
    must_link: bool
    cannot_link: bool
    camera_centre: bool
    camera_proxies: bool
    inter_weight: float
    hard_negatives: int
    colour_weight: float


@dataclass
class GeneratorConfig:
    """What every generative objective's section has: the generator's and discriminator's
    sizes and learning rates, and the generation losses' weights."""

    structure_dim: int
    base_channels: int
    res_blocks: int
    disc_scales: int
    disc_base: int
    gen_lr: float
    dis_lr: float
    gan_final_lr_factor: float | None
    appearance: str
    appearance_norm: str
    image_recon: float
    chroma_weight: float
    code_recon: float
    adversarial: float


@dataclass
class DGNetConfig(GeneratorConfig):
    teacher: str
    self_identity: float
    cross_identity: float
    primary: float
    fine_ratio: float
    discriminative_start: int
    primary_ramp: int


@dataclass
class GCLConfig(GeneratorConfig):
    view_contrast: float
    joint_start: int
    joint_ramp: int
    views: list[str]
    max_shift: float


@dataclass
class DDRLConfig:
    """DDRL's joint training (``train.objective: ddrl``): discriminators and the image-level
    losses' weights; the networks' sizes are ``model.ddrl_*``."""

    disc_scales: int
    disc_base: int
    gen_lr: float
    dis_lr: float
    gate_lr: float
    image_level: float
    recon: float
    kl: float
    cycle: float
    adversarial: float


@dataclass
class PaulConfig:
    temperature: float
    neighbours: int
    margin: float
    momentum: float
    pedal_weight: float
    ipfl_weight: float


@dataclass
class CalibrationConfig:
    enabled: bool
    camera_centre: bool
    impostor_quantile: float
    margin_std: float
    min_pairs: int


@dataclass
class DetectionConfig:
    model: str
    imgsz: int
    conf: float
    iou: float
    max_det: int
    device: str
    half: bool
    min_box_height: int
    backend: str
    precision: str
    int8_calibration: str
    int8_frames: int
    int8_frame_step: int
    stride: int
    max_stride: int
    shed_latency_s: float
    restore_latency_s: float
    shed_hold_s: float
    restore_busy: float
    head: str

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise ConfigError(f"detection.stride must be >= 1, got {self.stride}")
        if not 0 <= self.restore_latency_s < self.shed_latency_s:
            raise ConfigError(f"detection.restore_latency_s ({self.restore_latency_s}) must be "
                              f">= 0 and below detection.shed_latency_s ({self.shed_latency_s})")
        if not 0 < self.restore_busy <= 1:
            raise ConfigError(f"detection.restore_busy must be in (0, 1], got {self.restore_busy}")
        if self.shed_hold_s < 0:
            raise ConfigError(f"detection.shed_hold_s must be >= 0, got {self.shed_hold_s}")
        if self.max_stride < 1:
            raise ConfigError(f"detection.max_stride must be >= 1, got {self.max_stride}")


@dataclass
class TrackingConfig:
    tracker: str
    track_high_thresh: float
    track_low_thresh: float
    new_track_thresh: float
    match_thresh: float
    fuse_score: bool
    gmc_method: str
    max_lost_frames: int
    history_len: int
    max_crops: int
    min_crop_gap: int
    min_crops: int
    refresh_crops: int
    min_quality: float
    min_crop_height: int
    ref_crop_height: int
    border_margin: int
    truncation_penalty: float
    stride_buffer: float


@dataclass
class PipelineConfig:
    ray_address: str
    default_fps: float
    infrared_cameras: list[str]
    num_workers: int
    num_detectors: int
    num_embedders: int
    max_poll_records: int
    poll_timeout_ms: int
    detect_ahead: bool
    torch_threads: int
    detector_threads: int
    detector_num_cpus: float
    embedder_num_cpus: float
    worker_num_cpus: float
    detector_num_gpus: float
    embedder_num_gpus: float
    detector_resources: dict[str, float]
    embedder_resources: dict[str, float]
    worker_resources: dict[str, float]
    control_resources: dict[str, float]
    model_version: str
    run_seconds: float
    idle_stop_seconds: float
    stats_interval_s: float
    step_budget_s: float
    commit_hold_s: float
    silent_camera_s: float
    max_cameras_per_worker: int
    restart_backoff_max_s: float
    metrics_port: int


@dataclass
class LinkerConfig:
    threshold: float
    margin: float
    top_k: int
    same_camera_gap_ms: int
    min_track_ms: int
    revise: bool
    forget_after_ms: int
    journal: str
    keep_crops: int
    site_calibration: bool
    state_dir: str
    snapshot_interval_s: float


@dataclass
class TrainConfig:
    address: str
    init_checkpoint: str
    workers: int
    device: str
    cpus_per_worker: float
    gpus_per_worker: float
    storage_path: str
    name: str
    max_failures: int
    keep_checkpoints: int
    datasets: list[str]
    merge_identities: bool
    max_identities: int
    objective: str
    episode_ids: int
    epochs: int
    max_steps_per_epoch: int
    max_minutes: float
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    warmup_epochs: float
    warmup_factor: float
    final_lr_factor: float
    amp: bool
    freeze_bn_stats: bool
    blend_init: float
    grad_clip: float
    seed: int
    id_loss: str
    label_smoothing: float
    metric_loss: str
    triplet_margin: float
    id_weight: float
    metric_weight: float
    global_weight: float
    local_weight: float
    center_weight: float
    center_lr: float
    dimn_episode_weight: float
    dimn_memory_weight: float
    dimn_memory_scale: float
    dimn_reg_weight: float
    dimn_triplet_weight: float
    dimn_triplet_margin: float
    eval_at_end: bool
    eval_dataset: str
    export_half: bool
    progress: bool
    fail_at_step: int


@dataclass
class ScenesConfig:
    dataset: str
    splits: list[str]
    cameras: list[str]
    identities: int
    seed: int
    fps: float
    width: int
    height: int
    start_ms: int
    video_ext: str
    background: str
    background_video: str
    walk_seconds: list[float]
    entry_gap_seconds: list[float]
    transit_seconds: list[float]
    person_height: list[float]
    crop_period_frames: int
    feather: float
    noise_std: float
    style: str
    camera_styles: list[dict[str, Any]]
    pool: list[int]
    out_dir: str
    iou_threshold: float
    min_visibility: float
    time_offset_ms: int
    auto_time_offset: bool
    kafka_idle_s: float


@dataclass
class HarvestConfig:
    dir: str
    max_bytes: int
    rows_per_shard: int
    flush_seconds: float
    min_track_ms: int
    min_crops: int
    min_quality: float
    jpeg_quality: int


@dataclass
class GalleryConfig:
    num_shards: int
    index: str
    nlist: int
    nprobe: int
    ivf_train_per_list: int
    ivf_storage: str
    hnsw_m: int
    hnsw_ef_construction: int
    hnsw_ef_search: int
    tombstone_rebuild_fraction: float
    use_gpu: bool | str
    actor_num_cpus: float
    actor_num_gpus: float
    actor_resources: dict[str, float]
    threads: int
    max_vectors_per_shard: int
    norm_tolerance: float


@dataclass
class Config:
    assets: AssetsConfig
    model: ModelConfig
    data: DataConfig
    eval: EvalConfig
    embed: EmbedConfig
    inference: InferenceConfig
    kafka: KafkaConfig
    detection: DetectionConfig
    tracking: TrackingConfig
    train: TrainConfig
    spcl: SpclConfig
    paul: PaulConfig
    dgnet: DGNetConfig
    gcl: GCLConfig
    ddrl: DDRLConfig
    calibration: CalibrationConfig
    pipeline: PipelineConfig
    linker: LinkerConfig
    scenes: ScenesConfig
    harvest: HarvestConfig
    gallery: GalleryConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    schema: type = Config,
) -> Any:
    """Defaults, then the YAML file at ``path``, then overrides, checked against ``schema``."""
    merged = _read_yaml(DEFAULT_CONFIG_PATH)
    if path is not None:
        _deep_merge(merged, _read_yaml(Path(path)), where=str(path))
    for key, value in _parse_overrides(overrides):
        _set_dotted(merged, key, value)
    return build_dataclass(schema, merged, where="config")


def build_dataclass(cls: type, values: Mapping[str, Any], where: str) -> Any:
    """Build ``cls`` from a mapping, coercing and checking each field by its annotation."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name not in values:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ConfigError(f"{key}: missing (every key needs a default in default.yaml)")
        kwargs[name] = _coerce(hints[name], values[name], key)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _coerce(option, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: {value!r} fits none of {tp}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is str and value is None:
        return ""
    if tp is str and isinstance(value, str | int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {getattr(tp, '__name__', tp)}, got {value!r}")


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any], where: str) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value, f"{where}:{key}")
        else:
            base[key] = value


def _parse_overrides(overrides: Iterable[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(overrides, Mapping):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else ""))
    return parsed


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {part!r} is not a config section")
        node = child
    node[parts[-1]] = value
