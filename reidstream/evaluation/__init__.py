"""Ranking metrics (CMC, mAP, mINP), k-reciprocal re-ranking, figures and ``reidstream eval``.

Import from the submodules: ``metrics`` and ``rerank`` need only numpy (and faiss for the
scalable re-ranking); ``evaluate`` pulls in the models. This file stays empty so that the
CLI can import ``reidstream.evaluation.cli`` without loading torch.
"""
