"""Importing this registers the site-adaptation training objectives (``train.objective``)."""

from reidstream.adaptation import paul, spcl  # noqa: F401
