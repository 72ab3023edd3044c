"""Datasets in the Market-1501 layout, transforms and the identity-balanced PK sampler.

``reidstream.data.market`` is pure Python; ``transforms`` and ``sampler`` import torch;
``crossmodal`` adds the visible-infrared layouts (regdb, sysu) and protocols.
"""

import reidstream.data.crossmodal  # noqa: F401  (registers the regdb and sysu layouts)
from reidstream.data.market import (
    DATASETS,
    ImageRecord,
    ReIDDataset,
    combine_datasets,
    load_dataset,
    read_market_folder,
)

__all__ = [
    "DATASETS",
    "ImageRecord",
    "ReIDDataset",
    "combine_datasets",
    "load_dataset",
    "read_market_folder",
]
