"""Figures a re-id engineer looks at first: ranked lists and the CMC curve.

Drawn on matplotlib's Agg canvas directly (no pyplot), so plotting never needs a display
and never changes the process-wide backend of whoever imported us.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from reidstream.data.market import ImageRecord
from reidstream.evaluation.metrics import ranked_gallery

CORRECT, WRONG, QUERY = "#1a9e3f", "#d62728", "#1f3a93"
_THUMB = (64, 128)  # width, height of each thumbnail


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _thumbnail(path: Path) -> np.ndarray:
    from reidstream.data.transforms import load_image

    return np.asarray(load_image(path).resize(_THUMB))


def _show(ax, image: np.ndarray, colour: str, label: str) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(4)
    ax.set_title(label, fontsize=7, color=colour)


def plot_ranked_lists(
    query: Sequence[ImageRecord],
    gallery: Sequence[ImageRecord],
    distmat: np.ndarray,
    query_indices: Sequence[int],
    out_path: str | Path,
    topk: int = 10,
    title: str = "",
    ignored_camera_pairs: Sequence[tuple[int, int]] = (),
) -> Path:
    """One row per query: the query, then its top-k gallery images under the protocol
    (same-camera same-identity, junk and the dataset's ignored camera pairs removed, as the
    metrics count them), green border = same identity, red = not."""
    if not len(query_indices):
        raise ValueError("no queries to plot")
    g_pids = np.array([r.pid for r in gallery])
    g_camids = np.array([r.camid for r in gallery])
    rows = len(query_indices)
    fig = _figure(1.0 * (topk + 1) + 0.4, 2.1 * rows + 0.5)
    axes = fig.subplots(rows, topk + 1, squeeze=False)
    for row, qi in enumerate(query_indices):
        q = query[qi]
        _show(axes[row, 0], _thumbnail(q.path), QUERY, f"query id {q.pid}\ncam {q.camid + 1}")
        ranked = ranked_gallery(distmat[qi], q.pid, q.camid, g_pids, g_camids,
                                ignored_camera_pairs)[:topk]
        for col in range(topk):
            ax = axes[row, col + 1]
            if col >= len(ranked):
                ax.axis("off")
                continue
            g = gallery[ranked[col]]
            colour = CORRECT if g.pid == q.pid else WRONG
            label = f"#{col + 1} id {g.pid} c{g.camid + 1}\nd={distmat[qi, ranked[col]]:.3f}"
            _show(ax, _thumbnail(g.path), colour, label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path


def plot_cmc(curves: Mapping[str, np.ndarray], out_path: str | Path, title: str = "CMC") -> Path:
    """CMC curves (Rank-k accuracy against k, in %), one line per labelled curve."""
    if not curves:
        raise ValueError("no CMC curves to plot")
    fig = _figure(6.0, 4.2)
    ax = fig.subplots()
    for label, cmc in curves.items():
        cmc = np.asarray(cmc, dtype=float)
        ranks = np.arange(1, len(cmc) + 1)
        ax.plot(
            ranks, 100.0 * cmc, marker="o", markersize=3, label=f"{label} (R1 {100 * cmc[0]:.1f}%)"
        )
    ax.set_xlabel("rank k")
    ax.set_ylabel("matching rate (%)")
    peak = 100.0 * max(float(np.max(c)) for c in curves.values())
    ax.set_ylim(0, min(100.0, max(10.0, 10.0 * np.ceil(peak / 10.0) + 5.0)))  # low curves legible
    ax.set_xlim(1, max(len(c) for c in curves.values()))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path)
    return out_path
