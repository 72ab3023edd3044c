"""reidstream: streaming cross-camera person re-identification on Kafka and Ray."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("reidstream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
