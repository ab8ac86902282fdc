"""The installed version of planktonzilla (stamped into shards, manifests, models, results)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("planktonzilla")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"
