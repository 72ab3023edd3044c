"""The training set of a run: one or several source datasets, optionally cut to a few ids.

Several sources are combined with disjoint identities and cameras (a person in two datasets is
two classes; camera 1 of each source is its own SIE row), unless ``train.merge_identities``
says they show the same people through the same cameras (CUHK03's hand-drawn and detected
boxes). Camera names in the checkpoint say where each SIE row came from, so a deployment can
alias its cameras to the right ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from reidstream.assets import Assets
from reidstream.config import Config
from reidstream.data.market import (
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
    records: list[ImageRecord]
    num_classes: int
    cameras: list[str]  # SIE table order
    sources: list[str]

    @property
    def num_cameras(self) -> int:
        return len(self.cameras)

    def summary(self) -> str:
        cams = len({r.camid for r in self.records})
        return (
            f"train data {'+'.join(self.sources)}: {self.num_classes} identities, "
            f"{len(self.records)} images, {cams} cameras in use of {self.num_cameras}"
        )


def source_names(cfg: Config) -> list[str]:
    return list(cfg.train.datasets) or split_dataset_names(cfg.data.dataset)


def load_train_data(cfg: Config, assets: Assets) -> TrainData:
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
