"""Deployed camera names -> the side-information (SIE) indices a model was trained with.

TransReID's SIE table is frozen at training time: it has one learned row per training camera
and nothing for a camera added later. The registry travels inside every checkpoint (the
training cameras, in table order), and a deployment looks its cameras up by name:

1. A known name (or an alias of one, ``embed.camera_aliases``) gets its trained row. Aliasing a
   new camera to the trained camera with the most similar view (height, angle, lighting) is
   the best fallback when such a camera exists.
   A camera without a row of its own whose frames are infrared takes the model's ``infrared``
   row when it was trained with one (visible-infrared training names its infrared camera so).
2. Any other name gets index -1 (and one warning per name). What -1 means is the model's
   ``unknown_camera`` policy (``embed.unknown_camera``):

   - ``zero`` (default): no side information, the appearance-only embedding. SIE is an
     additive bias on the tokens (``sie_coef`` x a learned row), so leaving it out keeps the
     embedding in the same space as those of known cameras, without their camera correction.
   - ``mean``: the mean of the learned rows, i.e. "some training camera": keeps the token
     statistics the network saw in training, which helps when SIE rows grew large.
   - ``error``: refuse, for deployments where every camera must be mapped deliberately.

Integer camera ids are taken as table indices as they are (the training code's convention).
See ``docs/cameras.md``.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

UNKNOWN = -1


class CameraRegistry:
    """Ordered training camera names; ``index(name)`` is the SIE row, -1 when unknown."""

    def __init__(self, names: Sequence[str], aliases: Mapping[str, str] | None = None) -> None:
        names = [str(n) for n in names]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"camera names must be unique, repeated: {duplicates}")
        self._names = tuple(names)
        self._index = {n: i for i, n in enumerate(names)}
        self._aliases: dict[str, str] = {}
        self._warned: set[str] = set()
        for alias, target in (aliases or {}).items():
            self.add_alias(alias, target)

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def add_alias(self, alias: str, target: str) -> None:
        """Let deployed camera ``alias`` borrow the SIE row of trained camera ``target``."""
        if str(target) not in self._index:
            raise ValueError(
                f"camera alias {alias!r} -> {target!r}: {target!r} is not a training camera "
                f"(known: {list(self._names)})"
            )
        self._aliases[str(alias)] = str(target)

    def index(self, name: str) -> int:
        name = str(name)
        found = self._index.get(self._aliases.get(name, name))
        if found is not None:
            return found
        if name not in self._warned:
            self._warned.add(name)
            log.warning(
                "camera %r was not seen in training (known: %s): index -1, the model's "
                "unknown_camera policy applies (docs/cameras.md)",
                name,
                list(self._names),
            )
        return UNKNOWN

    def indices(
        self, cameras: Sequence[str | int], modalities: Sequence[str] | None = None
    ) -> list[int]:
        """Names through :meth:`index`; ints pass through as table indices. With
        ``modalities``, a camera the model has no row for borrows the row of its modality
        when the model was trained with one (a camera named ``infrared``)."""
        out = []
        for i, c in enumerate(cameras):
            if isinstance(c, numbers.Integral) and not isinstance(c, bool):
                out.append(int(c))
                continue
            modality = modalities[i] if modalities is not None else ""
            if str(c) not in self and modality and modality in self._index:
                out.append(self._index[modality])
            else:
                out.append(self.index(c))
        return out

    def __contains__(self, name: object) -> bool:
        return str(name) in self._index or str(name) in self._aliases

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __repr__(self) -> str:
        return f"CameraRegistry({list(self._names)!r}, aliases={self._aliases!r})"

    def extend(self, names: Sequence[str]) -> CameraRegistry:
        """A registry with ``names`` appended (after ``TransReID.add_cameras``), aliases kept."""
        return CameraRegistry([*self._names, *names], self._aliases)

    def to_list(self) -> list[str]:
        return list(self._names)

    @classmethod
    def from_list(cls, names: Sequence[str], aliases: Mapping[str, str] | None = None):
        return cls(names, aliases)
