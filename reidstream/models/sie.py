"""Side Information Embedding (TransReID): a learned vector per camera (and/or view).

The table is sized at training time. Id -1 means "not in the table" (a camera deployed after
training, see ``reidstream/models/cameras.py``) and gets the model's ``unknown_camera`` policy:
``zero`` adds nothing, ``mean`` adds the mean of the learned rows, ``error`` refuses. An id past
the end of the table is always an error: it would silently index a neighbour's embedding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class SideInfoEmbedding(nn.Module):
    """Table ``[num_cameras * max(1, num_views), dim]`` (camera-only or view-only when one of
    the counts is 0), indexed ``camera * num_views + view`` when both are used."""

    def __init__(self, num_cameras: int, num_views: int, dim: int) -> None:
        super().__init__()
        if num_cameras <= 0 and num_views <= 0:
            raise ValueError("side information needs num_cameras > 0 or num_views > 0")
        self.num_cameras = max(0, num_cameras)
        self.num_views = max(0, num_views)
        self.table = nn.Parameter(torch.zeros(max(1, num_cameras) * max(1, num_views), dim))
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(
        self, camera_ids: Tensor | None, view_ids: Tensor | None, batch: int, unknown: str
    ) -> Tensor:
        """``[batch, 1, dim]``: one vector per sample, broadcast over its tokens."""
        axes = []  # (ids, size, name) for each axis the table has
        if self.num_cameras:
            axes.append((self._ids(camera_ids, batch, "camera"), self.num_cameras, "camera"))
        if self.num_views:
            axes.append((self._ids(view_ids, batch, "view"), self.num_views, "view"))
        grid = self.table.view(*[size for _, size, _ in axes], -1)
        known = torch.ones(batch, dtype=torch.bool, device=self.table.device)
        for ids, size, name in axes:
            if ((ids < -1) | (ids >= size)).any():
                bad = ids[(ids < -1) | (ids >= size)][0].item()
                raise ValueError(
                    f"{name} id {bad} is outside the side-information table ({size} {name}s "
                    f"0..{size - 1}; -1 for unknown)"
                )
            missing = ids == -1
            if missing.any() and unknown == "error":
                raise ValueError(
                    f"{int(missing.sum())} sample(s) with an unknown {name} (id -1) and "
                    "unknown_camera='error'; map the camera in the camera registry or choose "
                    "'zero' or 'mean'"
                )
            known = known & ~missing  # not in place: ONNX export has no in-place and
        if len(axes) == 1:
            ids = axes[0][0]
            out = grid[ids.clamp(min=0)]
            if unknown == "mean":
                out = torch.where((ids == -1)[:, None], grid.mean(dim=0).expand_as(out), out)
        else:
            cam, view = axes[0][0], axes[1][0]
            out = grid[cam.clamp(min=0), view.clamp(min=0)]
            if unknown == "mean":
                out = torch.where(
                    ((cam == -1) & (view >= 0))[:, None], grid.mean(0)[view.clamp(min=0)], out
                )
                out = torch.where(
                    ((view == -1) & (cam >= 0))[:, None], grid.mean(1)[cam.clamp(min=0)], out
                )
                both = ((cam == -1) & (view == -1))[:, None]
                out = torch.where(both, grid.mean(dim=(0, 1)).expand_as(out), out)
        if unknown == "zero":
            out = out * known[:, None].to(out.dtype)
        return out.unsqueeze(1)

    @torch.no_grad()
    def add_cameras(self, count: int, init: str = "mean") -> None:
        """Append ``count`` camera rows (each with all its views): the mean row, or zeros."""
        if count < 1 or init not in ("mean", "zero"):
            raise ValueError(f"add_cameras needs count >= 1 and init mean|zero: {count}, {init}")
        grid = self.table.view(self.num_cameras, max(1, self.num_views), -1)
        fill = grid.mean(0, keepdim=True) if init == "mean" else torch.zeros_like(grid[:1])
        grid = torch.cat([grid, fill.expand(count, -1, -1)], dim=0)
        self.table = nn.Parameter(grid.reshape(-1, grid.shape[-1]).contiguous())
        self.num_cameras += count

    def _ids(self, ids: Tensor | None, batch: int, name: str) -> Tensor:
        device = self.table.device
        if ids is None:
            return torch.full((batch,), -1, dtype=torch.long, device=device)
        ids = torch.as_tensor(ids, device=device).long().reshape(-1)
        if ids.numel() != batch:
            raise ValueError(f"got {ids.numel()} {name} ids for a batch of {batch}")
        return ids
