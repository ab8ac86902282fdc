"""Plankton image models on one shared backbone, and the model directory.

Two kinds, registered in `MODEL_KINDS`, built from one JSON-able config dict:

- ``supervised`` (`SupervisedModel`): backbone + linear head over the classes (optionally one
  extra head per taxonomic rank);
- ``clip`` (`ClipModel`): an open_clip ``CLIP`` whose image tower is the same timm backbone
  configuration, plus a small text tower reading lineage captions.

Both map a normalised image batch to class logits (``model(x)``) and classify uint8 images
(``model.predict(images)``). A trained model is a directory (`save_model` / `load_model`):
``model.safetensors`` + ``config.json`` (+ ``open_clip_model.safetensors`` and
``open_clip_config.json`` for CLIP models). Loading never unpickles anything.

>>> model = build_model({"kind": "supervised", "backbone": "vit_tiny", "image_size": 64,
...                      "classes": ["a", "b"]})
>>> save_model(model, "my-model")
>>> load_model("my-model").predict(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from planktonzilla.models.backbone import (
    BACKBONES,
    DEFAULT_BACKBONE,
    create_backbone,
    normalization,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "DEFAULT_BACKBONE",
    "MODEL_KINDS",
    "PlanktonModel",
    "build_model",
    "create_backbone",
    "load_model",
    "register_backbone",
    "register_model_kind",
    "save_model",
]

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
FORMAT = "planktonzilla-model"
FORMAT_VERSION = 1


class PlanktonModel(nn.Module):
    """Base of every model kind: a config dict, class names, normalisation, and prediction on
    uint8 image batches ``[B, 3, S, S]`` (what the loader yields)."""

    kind: ClassVar[str] = ""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config
        self.classes: list[str] = list(config["classes"])
        self.image_size = int(config["image_size"])
        self.register_buffer("mean", torch.tensor(config["mean"]).view(1, -1, 1, 1), False)
        self.register_buffer("std", torch.tensor(config["std"]).view(1, -1, 1, 1), False)

    @classmethod
    def complete_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults in a (user) config; the result is what `save_model` writes."""
        config = dict(config)
        config.setdefault("backbone", DEFAULT_BACKBONE)
        config.setdefault("image_size", 224)
        if "mean" not in config or "std" not in config:
            config["mean"], config["std"] = normalization(config["backbone"])
        if not config.get("classes"):
            raise ValueError("a model needs a non-empty list of classes")
        config.setdefault("class_lineages", [{"name": c} for c in config["classes"]])
        return config

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, S, S]`` → normalised float on the model's device."""
        images = images.to(self.mean.device, non_blocking=True)
        return (images.float() / 255.0 - self.mean) / self.std

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        """Class logits of a normalised batch; with ``labels``, the training outputs."""
        raise NotImplementedError

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of uint8 images (eval mode, no gradient)."""
        was_training = self.training
        self.eval()
        try:
            return self(self.normalize(images)).float()
        finally:
            self.train(was_training)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict_logits(images).softmax(-1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (into `classes`) of uint8 images."""
        return self.predict_logits(images).argmax(-1)


MODEL_KINDS: dict[str, type[PlanktonModel]] = {}


def register_model_kind(cls: type[PlanktonModel]) -> type[PlanktonModel]:
    """Class decorator: make a `PlanktonModel` subclass buildable by its ``kind``."""
    MODEL_KINDS[cls.kind] = cls
    return cls


def _kind(name: str) -> type[PlanktonModel]:
    if name not in MODEL_KINDS:  # the built-in kinds register on import
        from planktonzilla.models import clip, supervised  # noqa: F401
    if name not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {name!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    return MODEL_KINDS[name]


def build_model(
    config: dict[str, Any], *, pretrained: str | os.PathLike | None = None
) -> PlanktonModel:
    """A new model from a config dict (``kind``, ``backbone``, ``image_size``, ``classes``,
    ``class_lineages``… — see each kind). ``pretrained``: initial backbone weights (a local
    safetensors / state-dict file, or ``"timm"`` for timm's weights, online)."""
    cls = _kind(config.get("kind", "supervised"))
    config = cls.complete_config({**config, "kind": cls.kind})
    return cls(config, pretrained=pretrained)


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_model(model: PlanktonModel, directory: str | os.PathLike, **metadata) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (model config plus ``metadata``: data
    provenance, training settings…) into ``directory``; each file by atomic rename."""
    from safetensors.torch import save_file

    from planktonzilla import __version__

    model = getattr(model, "module", model)  # DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS, lambda p: save_file(state, str(p), {"format": "pt"}))
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.config,
        "code_version": __version__,
        **metadata,
    }
    _atomic_write(
        directory / CONFIG, lambda p: p.write_text(json.dumps(config, indent=1, default=str))
    )
    export = getattr(model, "export_open_clip", None)
    if export is not None:
        export(directory)
    return directory


def load_model(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> PlanktonModel:
    """Rebuild a model from its directory (config.json + model.safetensors), in eval mode.
    Nothing is unpickled: the architecture comes from the JSON config, the tensors from
    safetensors."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise FileNotFoundError(f"not a model directory (no {CONFIG}): {directory}")
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: not a planktonzilla model config")
    model = _kind(config["kind"])(config, pretrained=None)
    model.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    return model.to(device).eval()
