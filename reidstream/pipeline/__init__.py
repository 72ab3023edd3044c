"""The streaming pipeline: camera workers, detector and embedder pools, linker, event sink.

Public surface: :class:`Pipeline` (start, run, stop, shutdown) and the :class:`Linker` rules.
"""

from reidstream.pipeline.linker import LinkDecision, Linker, TrackObservation
from reidstream.pipeline.runner import Pipeline, PipelineStats

__all__ = [
    "LinkDecision",
    "Linker",
    "Pipeline",
    "PipelineStats",
    "TrackObservation",
]
