"""The training set of a run: one or several source datasets, optionally cut to a few ids.

Several sources are combined with disjoint identities and cameras (a person in two datasets is
two classes; camera 1 of each source is its own SIE row), unless ``train.merge_identities``
says they show the same people through the same cameras (CUHK03's hand-drawn and detected
boxes). Camera names in the checkpoint say where each SIE row came from, so a deployment can
alias its cameras to the right ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from reidstream.assets import Assets
from reidstream.config import Config
from reidstream.data.market import (
    UNLABELLED,
    ImageRecord,
    ReIDDataset,
    combine_datasets,
    load_dataset,
    parse_market_name,
    split_dataset_names,
)

log = logging.getLogger(__name__)


@dataclass
class TrainData:
    """Labelled source records first, then unlabelled target records (``data.target``)."""

    records: list[ImageRecord]
    num_classes: int  # source identities
    cameras: list[str]  # SIE table order: source cameras, then target cameras
    sources: list[str]
    target: str = ""  # the target folder or dataset ("" when none)
    target_start: int = -1  # index of the first target record (-1: no target)
    # [M, 2] unit ids (ImageRecord.track) of target tracks that are different people
    cannot_link: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    @property
    def source_records(self) -> list[ImageRecord]:
        return self.records[: self.target_start] if self.target_start >= 0 else self.records

    @property
    def target_records(self) -> list[ImageRecord]:
        return self.records[self.target_start :] if self.target_start >= 0 else []

    def summary(self) -> str:
        cams = len({r.camid for r in self.records})
        text = (
            f"train data {'+'.join(self.sources) or '(no labelled source)'}: "
            f"{self.num_classes} identities, {len(self.source_records)} images"
        )
        if self.target_start >= 0:
            tracks = len({r.track for r in self.target_records if r.track >= 0})
            text += (
                f"; unlabelled target {self.target}: {len(self.target_records)} images, "
                f"{tracks} tracks, {len(self.cannot_link)} cannot-link pairs"
            )
        return text + f"; {cams} cameras in use of {self.num_cameras}"


def source_names(cfg: Config) -> list[str]:
    return list(cfg.train.datasets) or split_dataset_names(cfg.data.dataset)


def load_train_data(cfg: Config, assets: Assets, with_sources: bool = True) -> TrainData:
    """The run's training data: the labelled sources (unless ``with_sources`` is false: fully
    unsupervised training) and the unlabelled target of ``data.target`` when set."""
    if with_sources:
        data = load_source_data(cfg, assets)
    elif not cfg.data.target:
        raise ValueError("training without labelled sources needs data.target")
    else:
        data = TrainData(records=[], num_classes=0, cameras=[], sources=[])
    if cfg.data.target:
        add_target(data, cfg, assets)
    return data


def load_source_data(cfg: Config, assets: Assets) -> TrainData:
    names = source_names(cfg)
    datasets = [load_dataset(name, assets, cfg.data) for name in names]
    if len(datasets) > 1 and cfg.train.merge_identities:
        records, cameras = merge_same_people(datasets)
    else:
        combined = datasets[0] if len(datasets) == 1 else combine_datasets(datasets)
        records = combined.train
        cameras = []
        for name, ds in zip(names, datasets, strict=True):
            prefix = f"{name}/" if len(datasets) > 1 else ""
            cameras += [f"{prefix}c{i + 1}" for i in range(ds.num_cameras)]
    records = subset_identities(records, cfg.train.max_identities)
    return TrainData(
        records=records,
        num_classes=1 + max(r.pid for r in records),
        cameras=cameras,
        sources=names,
    )


def add_target(data: TrainData, cfg: Config, assets: Assets) -> None:
    """Append the unlabelled target: a harvest folder (track crops from the pipeline) or the
    train split of a Market-layout dataset (its labels are not read)."""
    from reidstream.adaptation.harvest import is_harvest

    target = cfg.data.target
    path = Path(target).expanduser()
    if is_harvest(path):
        records, cameras, cannot = harvest_records(path)
        clash = sorted(set(cameras) & set(data.cameras))
        if clash:
            raise ValueError(
                f"data.target {target}: camera name(s) {clash} are also labelled source "
                "cameras; a site's cameras need names of their own"
            )
    else:
        ds = load_dataset(target, assets, cfg.data)
        prefix = f"{Path(target).name}/" if data.cameras else ""
        cameras = [f"{prefix}c{i + 1}" for i in range(ds.num_cameras)]
        records = [
            ImageRecord(r.path, UNLABELLED, r.camid, 0, track=-1)
            for r in subset_identities(ds.train, cfg.train.max_identities)
        ]
        cannot = np.zeros((0, 2), np.int64)
    offset = len(data.cameras)
    domain = 1 + max((r.domain for r in data.records), default=-1)
    data.target_start = len(data.records)
    data.records = data.records + [
        replace(r, camid=r.camid + offset, domain=domain) for r in records
    ]
    data.cameras = data.cameras + cameras
    data.target = str(target)
    data.cannot_link = cannot


def harvest_records(folder: Path) -> tuple[list[ImageRecord], list[str], np.ndarray]:
    """Records of a harvest (JPEG bytes in memory), its camera names and the cannot-link pairs:
    two tracks of one camera and one tracker life that overlap in time are two people."""
    from reidstream.adaptation.harvest import read_harvest

    cols = read_harvest(folder).to_pydict()
    cameras = sorted(set(cols["camera"]))
    cam_index = {c: i for i, c in enumerate(cameras)}
    units: dict[tuple[str, str, int], int] = {}
    spans: dict[int, tuple[str, str, int, int]] = {}
    records = []
    for row, (image, cam, session, tid, start, end) in enumerate(zip(
        cols["image"], cols["camera"], cols["session"], cols["track_id"],
        cols["track_start_ms"], cols["track_end_ms"], strict=True,
    )):
        unit = units.setdefault((cam, session, tid), len(units))
        spans[unit] = (cam, session, int(start), int(end))
        records.append(ImageRecord(
            Path(f"{folder}#{row}"), UNLABELLED, cam_index[cam], 0,
            data=image, track=unit, start_ms=int(start), end_ms=int(end),
        ))
    if not records:
        raise ValueError(f"{folder}: the harvest holds no crops")
    return records, cameras, overlapping_tracks(spans)


def overlapping_tracks(spans: dict[int, tuple[str, str, int, int]]) -> np.ndarray:
    """[M, 2] unit pairs (a < b) of the same camera and session whose time spans overlap."""
    by_stream: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for unit, (cam, session, start, end) in spans.items():
        by_stream.setdefault((cam, session), []).append((start, end, unit))
    pairs = []
    for tracks in by_stream.values():
        tracks.sort()
        for i, (_, end, unit) in enumerate(tracks):
            for other_start, _, other in tracks[i + 1 :]:
                if other_start > end:
                    break
                pairs.append((min(unit, other), max(unit, other)))
    return np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def merge_same_people(datasets: list[ReIDDataset]) -> tuple[list[ImageRecord], list[str]]:
    """Train splits of sources that show the same people from the same cameras (CUHK03
    labeled and detected boxes): one class per person id in the file names, one camera table.

    The per-source relabelling is undone from the file name, so a person missing from one
    source still gets the same class in the other.
    """
    merged: list[ImageRecord] = []
    for domain, ds in enumerate(datasets):
        for rec in ds.train:
            parsed = parse_market_name(rec.path.name)
            if parsed is None:
                raise ValueError(f"{rec.path}: cannot merge identities, name does not parse")
            merged.append(replace(rec, pid=parsed[0], domain=domain))
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in merged}))}
    num_cameras = max(ds.num_cameras for ds in datasets)
    return [replace(r, pid=mapping[r.pid]) for r in merged], [
        f"c{i + 1}" for i in range(num_cameras)
    ]


def subset_identities(records: list[ImageRecord], max_ids: int) -> list[ImageRecord]:
    """Keep ``max_ids`` identities spread evenly over the pid range (so every source keeps
    some) and relabel them 0..max_ids-1; ``max_ids <= 0`` keeps everything as is."""
    pids = sorted({r.pid for r in records})
    if max_ids <= 0 or max_ids >= len(pids):
        return list(records)
    keep = [pids[int(i)] for i in np.linspace(0, len(pids) - 1, max_ids).round()]
    mapping = {pid: i for i, pid in enumerate(sorted(set(keep)))}
    return [replace(r, pid=mapping[r.pid]) for r in records if r.pid in mapping]
