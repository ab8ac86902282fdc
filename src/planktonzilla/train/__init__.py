"""Training: the loop and its losses (data loading lives in `planktonzilla.data`).

>>> from planktonzilla.train import TrainConfig, train
>>> train(TrainConfig(kind="supervised", store="store", split="stratified", out="model"))
"""

_EXPORTS = {
    "TrainConfig": "planktonzilla.train.loop",
    "Trainer": "planktonzilla.train.loop",
    "train": "planktonzilla.train.loop",
    "LOSSES": "planktonzilla.train.losses",
    "make_loss": "planktonzilla.train.losses",
    "contrastive_loss": "planktonzilla.train.losses",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: importing the package (e.g. for `python -m planktonzilla.train`) stays cheap.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(name)
