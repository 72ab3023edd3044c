"""Person re-id datasets in the Market-1501 folder layout, and several of them combined.

A Market-1501 style dataset is a folder with one sub-folder per split (``bounding_box_train``,
``query``, ``bounding_box_test``; a split a job does not use may be absent) whose image names
carry the labels:
``PPPP_cCsS_FFFFFF_NN.jpg`` (person id, camera, sequence, frame). Person id -1 marks junk
boxes (never used) and 0 marks distractors (kept in the gallery, where they are negatives
for every query, but not trained on since they are not one identity).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from reidstream.assets import Assets
from reidstream.config import DataConfig
from reidstream.registry import Registry

log = logging.getLogger(__name__)

JUNK_PID = -1
DISTRACTOR_PID = 0
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_NAME = re.compile(r"^(-?\d+)_c(\d+)(?:s\d+)?_")


UNLABELLED = -1  # pid of a target-domain image (site adaptation: labels unknown)
VISIBLE, INFRARED = 0, 1  # ImageRecord.modality (visible-infrared sets: reidstream.data.crossmodal)
INFRARED_PROXY = "infrared-proxy"  # ImageRecord.render of a visible image shown as infrared


@dataclass(frozen=True)
class ImageRecord:
    """One image. ``camid`` is 0-based (``c1`` in a file name is camera 0).

    Images harvested from the pipeline carry their JPEG bytes in ``data`` (``path`` then
    names the shard and row, for messages) and what the site knows for free: ``track``, a
    unit id shared by the crops of one track (-1: none), and the track's time span.
    """

    path: Path
    pid: int
    camid: int
    domain: int = 0  # index of the source dataset when several are combined
    data: bytes | None = field(default=None, repr=False, compare=False)
    track: int = -1
    start_ms: int = 0
    end_ms: int = 0
    modality: int = VISIBLE  # or INFRARED
    render: str = ""  # how the image is rendered at load time ("": as stored; an infrared proxy)


def parse_market_name(name: str) -> tuple[int, int] | None:
    """(pid, 0-based camid) from a Market-1501 file name, or None when it does not parse."""
    match = _NAME.match(name)
    if match is None or int(match.group(2)) < 1:
        return None
    return int(match.group(1)), int(match.group(2)) - 1


def read_market_folder(
    folder: str | Path, relabel: bool = False, keep_distractors: bool | None = None
) -> list[ImageRecord]:
    """Records of one split folder, sorted by file name.

    Junk (pid -1) is always skipped. Distractors (pid 0) are kept unless ``keep_distractors``
    is false; it defaults to ``not relabel`` since relabelling is for training, where a
    distractor is not an identity. ``relabel`` maps the pids to 0..N-1 in sorted order so
    they can index a classifier.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset split folder not found: {folder}")
    if keep_distractors is None:
        keep_distractors = not relabel
    records: list[ImageRecord] = []
    bad: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        parsed = parse_market_name(path.name)
        if parsed is None:
            bad.append(path.name)
            continue
        pid, camid = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        if pid < JUNK_PID:
            bad.append(path.name)
            continue
        records.append(ImageRecord(path, pid, camid))
    if bad:
        raise ValueError(
            f"{folder}: {len(bad)} image name(s) do not follow the Market-1501 pattern "
            f"PPPP_cC[sS]_..., first: {bad[0]!r}"
        )
    if not records:
        raise ValueError(f"{folder}: no labelled images found")
    if relabel:
        mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
        records = [replace(r, pid=mapping[r.pid]) for r in records]
    return records


class MissingSplit(Sequence[ImageRecord]):
    """Stands in for a split folder the dataset does not have.

    Jobs use different splits (evaluating: query and gallery; a target to adapt to: train), so
    a missing folder only fails when its split is used, and the error then says which.
    """

    def __init__(self, folder: Path, split: str, key: str) -> None:
        self.folder, self.split, self.key = folder, split, key

    def error(self) -> FileNotFoundError:
        return FileNotFoundError(
            f"dataset split folder not found: {self.folder} (the {self.split} split, "
            f"data.{self.key}={self.folder.name}), and this job needs it"
        )

    def __len__(self) -> int:
        raise self.error()

    def __getitem__(self, index):  # type: ignore[override]
        raise self.error()

    def __iter__(self) -> Iterator[ImageRecord]:
        raise self.error()

    def __repr__(self) -> str:
        return f"MissingSplit({str(self.folder)!r})"


def present(split: Sequence[ImageRecord]) -> Sequence[ImageRecord]:
    """The split's records, or none for a :class:`MissingSplit` (for figures over every split)."""
    return () if isinstance(split, MissingSplit) else split


@dataclass
class ReIDDataset:
    """Train/query/gallery splits of one dataset (or several combined for training).

    A split whose folder is absent is a :class:`MissingSplit`, which raises when used.
    """

    name: str
    train: Sequence[ImageRecord]
    query: Sequence[ImageRecord]
    gallery: Sequence[ImageRecord]
    domain_names: list[str] = field(default_factory=list)
    # (query camid, gallery camid): that gallery camera does not count for that camera's
    # queries (SYSU-MM01: cameras 2 and 3 share a room)
    ignored_camera_pairs: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_cameras(self) -> int:
        """Size of a camera table covering every split there is (camera ids are 0-based)."""
        splits = (self.train, self.query, self.gallery)
        return 1 + max((r.camid for split in splits for r in present(split)), default=-1)

    @property
    def num_domains(self) -> int:
        return max(1, len(self.domain_names))

    def summary(self) -> str:
        def line(split: str, recs: Sequence[ImageRecord]) -> str:
            if isinstance(recs, MissingSplit):
                return f"  {split:<8} (no {recs.folder.name} folder)"
            cams = len({r.camid for r in recs})
            return f"  {split:<8} {len({r.pid for r in recs}):>6} {len(recs):>8} {cams:>7}"

        return "\n".join(
            [
                f"dataset {self.name}: {self.num_cameras} cameras",
                f"  {'split':<8} {'ids':>6} {'images':>8} {'cameras':>7}",
                line("train", self.train),
                line("query", self.query),
                line("gallery", self.gallery),
            ]
        )


DatasetBuilder = Callable[..., ReIDDataset]
DATASETS: Registry[DatasetBuilder] = Registry("dataset layout")


@DATASETS.register("market1501")
def build_market1501(root: Path, cfg: DataConfig, name: str | None = None) -> ReIDDataset:
    """A Market-1501 layout folder; CUHK03 (labeled/detected) in ../shared/data is one too.
    ``data.infrared_proxy_cameras`` turn cameras into the labelled infrared proxy
    (:mod:`reidstream.data.crossmodal`).

    Absent split folders become :class:`MissingSplit` (an error when used), so an evaluation
    set needs no train folder; a folder with none of the three is not this layout at all.
    """
    root = Path(root)
    keys = {"train": "train_split", "query": "query_split", "gallery": "gallery_split"}
    folders = {split: root / getattr(cfg, key) for split, key in keys.items()}
    if not any(folder.is_dir() for folder in folders.values()):
        raise FileNotFoundError(
            f"{root}: no Market-1501 split folder "
            f"({', '.join(folder.name for folder in folders.values())}) in it"
        )
    proxy = {c - 1 for c in cfg.infrared_proxy_cameras}  # rendered as infrared at load time
    splits: dict[str, Sequence[ImageRecord]] = {
        split: [replace(r, modality=INFRARED, render=INFRARED_PROXY) if r.camid in proxy else r
                for r in read_market_folder(folder, relabel=split == "train")]
        if folder.is_dir()
        else MissingSplit(folder, split, keys[split])
        for split, folder in folders.items()
    }
    return ReIDDataset(name=name or root.name, **splits, domain_names=[name or root.name])


def split_dataset_names(name_or_path: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``: how configs name several sources."""
    items = name_or_path.split(",") if isinstance(name_or_path, str) else list(name_or_path)
    names = [n.strip() for n in items if n.strip()]
    if not names:
        raise ValueError("no dataset name given")
    return names


def load_dataset(name_or_path: str | Sequence[str], assets: Assets, cfg: DataConfig) -> ReIDDataset:
    """A dataset by name under the data dir, an explicit path, or several (``"a,b"``) combined."""
    datasets = [
        DATASETS.build(cfg.layout, assets.dataset(name), cfg, name)
        for name in split_dataset_names(name_or_path)
    ]
    return datasets[0] if len(datasets) == 1 else combine_datasets(datasets)


def combine_datasets(datasets: Sequence[ReIDDataset], name: str | None = None) -> ReIDDataset:
    """One dataset whose identities and cameras are disjoint per source (multi-domain training).

    Train pids are offset so the sources' identities never collide; camera ids are offset
    per source (camera 0 of the second dataset is a different camera). Query and gallery
    ids are offset too, keeping distractor pid 0 as is, so evaluating the union stays correct.
    """
    if not datasets:
        raise ValueError("combine_datasets needs at least one dataset")
    train: list[ImageRecord] = []
    query: list[ImageRecord] = []
    gallery: list[ImageRecord] = []
    domain_names: list[str] = []
    pid_offset = eval_pid_offset = cam_offset = domain_offset = 0
    for ds in datasets:
        offsets = (cam_offset, domain_offset)
        ds_train, ds_query, ds_gallery = present(ds.train), present(ds.query), present(ds.gallery)
        train += [_shift(r, pid_offset, *offsets, eval_split=False) for r in ds_train]
        query += [_shift(r, eval_pid_offset, *offsets, eval_split=True) for r in ds_query]
        gallery += [_shift(r, eval_pid_offset, *offsets, eval_split=True) for r in ds_gallery]
        pid_offset += 1 + max((r.pid for r in ds_train), default=-1)
        eval_pid_offset += max((r.pid for r in (*ds_query, *ds_gallery)), default=0)
        cam_offset += ds.num_cameras
        domain_offset += ds.num_domains
        domain_names += ds.domain_names or [ds.name]

    def combined(split: str, records: list[ImageRecord]) -> Sequence[ImageRecord]:
        """A split one source lacks is missing from the union too (its first gap says where)."""
        gaps = [getattr(ds, split) for ds in datasets]
        return next((g for g in gaps if isinstance(g, MissingSplit)), records)

    return ReIDDataset(
        name=name or "+".join(ds.name for ds in datasets),
        train=combined("train", train),
        query=combined("query", query),
        gallery=combined("gallery", gallery),
        domain_names=domain_names,
    )


def _shift(
    r: ImageRecord, pid_offset: int, cam_offset: int, domain_offset: int, eval_split: bool
) -> ImageRecord:
    """Move a record into a combined dataset's id/camera/domain ranges. In query/gallery
    splits pid 0 is a distractor and stays 0; in train splits (relabelled) it is an identity."""
    keep = eval_split and r.pid == DISTRACTOR_PID
    pid = r.pid if keep else r.pid + pid_offset
    return replace(r, pid=pid, camid=r.camid + cam_offset, domain=r.domain + domain_offset)
