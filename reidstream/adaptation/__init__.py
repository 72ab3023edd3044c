"""Site adaptation without labels: harvest the pipeline's track crops, cluster them into
pseudo-identities under the site's free constraints, and calibrate the linker per site.

Public surface:

- :mod:`.harvest`: ``HarvestWriter`` / ``HarvestStage`` (pipeline side), ``read_harvest``,
  ``harvest_stats``.
- :mod:`.cluster`: ``pseudo_labels`` (k-reciprocal Jaccard on FAISS neighbours, DBSCAN,
  SpCL's reliability criterion, must-link / cannot-link).
- :mod:`.calibration`: per-camera-pair linker thresholds from impostor similarities.
"""
