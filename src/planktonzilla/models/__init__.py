"""Plankton image models on one shared backbone, and the model directory.

Two kinds, registered in `MODEL_KINDS`, built from one JSON-able config dict:

- ``supervised`` (`SupervisedModel`): backbone + linear head over the classes (optionally one
  extra head per taxonomic rank);
- ``clip`` (`ClipModel`): an open_clip ``CLIP`` whose image tower is the same timm backbone
  configuration, plus a small text tower reading lineage captions.

Both map a normalised image batch to class logits (``model(x)``) and classify uint8 images
(``model.predict(images)``). A trained model is a directory (`save_model` / `load_model`):
``model.safetensors`` + ``config.json`` (+ ``open_clip_model.safetensors`` and
``open_clip_config.json`` for CLIP models). The config's ``preprocess`` section is the image
contract (`planktonzilla.data.preprocess.PreprocessConfig`). Loading never unpickles anything.

>>> model = build_model({"kind": "supervised", "backbone": "vit_tiny",
...                      "preprocess": {"size": 64, "fill": 255}, "classes": ["a", "b"]})
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

from planktonzilla.data.preprocess import PreprocessConfig
from planktonzilla.exceptions import ModelError
from planktonzilla.fileio import atomic_path, atomic_write
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
    "resolve_device",
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
        self.preprocess = PreprocessConfig.of_model(config)
        self.image_size = self.preprocess.size
        mean, std = torch.tensor(self.preprocess.mean), torch.tensor(self.preprocess.std)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), False)
        self.register_buffer("std", std.view(1, -1, 1, 1), False)

    @classmethod
    def complete_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults in a (user) config; the result is what `save_model` writes."""
        config = dict(config)
        config.setdefault("backbone", DEFAULT_BACKBONE)
        config["preprocess"] = _preprocess_section(config)
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` is CUDA when available, else the CPU; asking for CUDA without it is an error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {device}, but CUDA is not available here")
    return device


def _preprocess_section(config: dict[str, Any]) -> dict[str, Any]:
    """The `preprocess` section of a config; older configs and short user configs spell its
    parts at the top level (`image_size`, `mean`, `std`, `fill`), which are moved into it."""
    section = dict(config.get("preprocess") or {})
    if "image_size" in config:
        section.setdefault("size", config.pop("image_size"))
    for key in ("mean", "std", "fill"):
        if key in config:
            section.setdefault(key, config.pop(key))
    if "mean" not in section or "std" not in section:
        section["mean"], section["std"] = normalization(config["backbone"])
    return PreprocessConfig.from_dict(section).to_dict()


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


def save_model(model: PlanktonModel, directory: str | os.PathLike, **metadata) -> Path:
    """Write ``model.safetensors`` + ``config.json`` (model config plus ``metadata``: data
    provenance, training settings…) into ``directory``; each file by atomic rename."""
    from safetensors.torch import save_file

    from planktonzilla._version import __version__

    model = getattr(model, "module", model)  # DDP / compiled wrappers
    model = getattr(model, "_orig_mod", model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS) as tmp:
        save_file(state, str(tmp), {"format": "pt"})
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **model.config,
        "code_version": __version__,
        **metadata,
    }
    atomic_write(directory / CONFIG, json.dumps(config, indent=1, default=str))
    export = getattr(model, "export_open_clip", None)
    if export is not None:
        export(directory)
    return directory


def load_model(
    directory: str | os.PathLike, *, device: str | torch.device = "auto"
) -> PlanktonModel:
    """Rebuild a model from its directory (config.json + model.safetensors), in eval mode.
    Nothing is unpickled: the architecture comes from the JSON config, the tensors from
    safetensors."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise ModelError(f"not a model directory (no {CONFIG}): {directory}")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as exc:
        raise ModelError(f"{config_path}: not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{config_path}: not a planktonzilla model config")
    config["preprocess"] = _preprocess_section(config)  # configs written before the section
    model = _kind(config["kind"])(config, pretrained=None)
    model.load_state_dict(load_file(str(directory / WEIGHTS)), strict=True)
    return model.to(resolve_device(device)).eval()
