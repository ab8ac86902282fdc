"""planktonzilla: one store and one taxonomy for the world's plankton image collections."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("planktonzilla")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0+unknown"

__all__ = ["ObjectStore", "__version__", "load_model"]


def __getattr__(name: str):
    # Lazy: `import planktonzilla` must stay cheap for the CLI.
    if name == "ObjectStore":
        from planktonzilla.store import ObjectStore

        return ObjectStore
    if name == "load_model":
        from planktonzilla.models import load_model

        return load_model
    raise AttributeError(name)
