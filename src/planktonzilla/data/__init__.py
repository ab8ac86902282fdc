"""The data floor under every application: the image contract (`PreprocessConfig`), splits,
the dataset view (label space over a split), the image table, the sampler and the loader, and
exports of a store for other tools."""

_EXPORTS = {
    "PreprocessConfig": "planktonzilla.data.preprocess",
    "preprocess": "planktonzilla.data.preprocess",
    "normalize": "planktonzilla.data.preprocess",
    "dataset_view": "planktonzilla.data.dataset",
    "DatasetView": "planktonzilla.data.dataset",
    "make_split": "planktonzilla.data.splits",
    "ImageTable": "planktonzilla.data.loader",
    "make_loader": "planktonzilla.data.loader",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: the CLI imports this package without paying for torch / pyarrow.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
