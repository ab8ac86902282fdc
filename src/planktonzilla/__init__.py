"""planktonzilla: one store and one taxonomy for the world's plankton image collections.

The public faces:

>>> from planktonzilla import ObjectStore, Classifier, PreprocessConfig, load_model
>>> from planktonzilla import PlanktonzillaError   # the root of every error it raises
"""

from planktonzilla._version import __version__
from planktonzilla.exceptions import PlanktonzillaError

__all__ = [
    "Classifier",
    "ObjectStore",
    "PlanktonzillaError",
    "PreprocessConfig",
    "__version__",
    "dataset_view",
    "load_model",
    "make_split",
]

# Lazy: `import planktonzilla` (and `pz --help`) must stay cheap.
_LAZY = {
    "ObjectStore": "planktonzilla.store",
    "PreprocessConfig": "planktonzilla.data.preprocess",
    "dataset_view": "planktonzilla.data.dataset",
    "make_split": "planktonzilla.data.splits",
    "load_model": "planktonzilla.models",
    "Classifier": "planktonzilla.inference",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)
