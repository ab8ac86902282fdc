"""One backbone factory for every model: a timm image trunk that maps a normalised image batch
``[B, 3, S, S]`` to features ``[B, num_features]``.

Named backbones are small configs in a registry (`BACKBONES`, `register_backbone`); any other
timm model name works as is. The image size is applied the way timm applies it: at creation for
models whose input size is fixed (ViTs: position embeddings), ignored by size-agnostic ones
(convnets).

>>> trunk = create_backbone("vit_tiny_patch16_224", image_size=64)
>>> trunk(torch.zeros(2, 3, 64, 64)).shape
torch.Size([2, 192])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_BACKBONE = "vit_tiny_patch16_224"


@dataclass(frozen=True)
class BackboneConfig:
    """A named trunk: the timm model it builds and the keyword arguments it passes."""

    timm_name: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""


#: Named backbones. Any timm model name not listed here is used as is.
BACKBONES: dict[str, BackboneConfig] = {}


def register_backbone(name: str, timm_name: str, description: str = "", **kwargs) -> None:
    """Add (or replace) a named backbone, e.g.
    ``register_backbone("vit_small_dp", "vit_small_patch16_224", drop_path_rate=0.1)``."""
    BACKBONES[name] = BackboneConfig(timm_name, dict(kwargs), description)


for _size, _dim in (("tiny", 192), ("small", 384), ("base", 768)):
    _name = f"vit_{_size}_patch16_224"
    register_backbone(_name, _name, f"ViT-{_size[0].upper()}/16 ({_dim}-d), any image size")
    register_backbone(f"vit_{_size}", _name, f"alias of {_name}")


def resolve_backbone(name: str) -> tuple[str, dict]:
    """(timm model name, creation kwargs) for a registered name or any timm name."""
    import timm

    if name in BACKBONES:
        cfg = BACKBONES[name]
        return cfg.timm_name, dict(cfg.kwargs)
    if not timm.is_model(name.split(".")[0]):
        raise ValueError(
            f"unknown backbone {name!r}: not registered ({', '.join(sorted(BACKBONES))}) "
            "and not a timm model (see timm.list_models())"
        )
    return name, {}


def fixed_input_size(timm_name: str) -> bool:
    """True when the model must know its input size at creation (ViT position embeddings)."""
    import timm

    cfg = timm.get_pretrained_cfg(timm_name, allow_unregistered=True)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def create_backbone(
    name: str = DEFAULT_BACKBONE,
    *,
    image_size: int = 224,
    pretrained: str | os.PathLike | None = None,
    **kwargs,
) -> nn.Module:
    """A timm trunk without classifier (``num_classes=0``), for ``image_size`` px inputs.

    ``pretrained``: None (random init), a local file (safetensors or a state dict; position
    embeddings are resampled to the image size), or ``"timm"`` to download timm's default
    weights for the model (needs the network)."""
    import timm

    timm_name, base_kwargs = resolve_backbone(name)
    base_kwargs.update(kwargs)
    if fixed_input_size(timm_name):
        base_kwargs.setdefault("img_size", image_size)
    trunk = timm.create_model(
        timm_name, pretrained=pretrained == "timm", num_classes=0, **base_kwargs
    )
    if pretrained not in (None, "timm"):
        load_trunk_weights(trunk, pretrained)
    return trunk


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain (weights-only) torch state dict — never
    unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_trunk_weights(trunk: nn.Module, path: str | os.PathLike) -> list[str]:
    """Load a trunk's weights from a file (prefixes such as ``module.``, ``backbone.`` or
    ``visual.trunk.`` are stripped, classifier weights dropped, ViT position embeddings
    resampled). Returns the trunk's keys the file did not provide."""
    state = read_state_dict(path)
    own = trunk.state_dict()
    for prefix in ("module.", "visual.trunk.", "backbone.", "trunk.", "model."):
        if not any(k in own for k in state) and any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in own}
    if "pos_embed" in state and state["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed

        prefix_tokens = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
        state["pos_embed"] = resample_abs_pos_embed(
            state["pos_embed"], list(trunk.patch_embed.grid_size), num_prefix_tokens=prefix_tokens
        )
    mismatched = [k for k, v in state.items() if v.shape != own[k].shape]
    if mismatched:
        raise ValueError(f"{path}: shapes do not match the backbone for {mismatched[:5]}")
    if not state:
        raise ValueError(f"{path}: no tensor matches the backbone's parameters")
    trunk.load_state_dict(state, strict=False)
    return sorted(set(own) - set(state))


def normalization(name: str) -> tuple[list[float], list[float]]:
    """The (mean, std) the backbone's timm weights expect (also used when training from
    scratch, so that a later fine-tune from timm weights sees the same inputs)."""
    import timm

    timm_name, _ = resolve_backbone(name)
    cfg = timm.get_pretrained_cfg(timm_name, allow_unregistered=True)
    mean = getattr(cfg, "mean", None) or (0.485, 0.456, 0.406)
    std = getattr(cfg, "std", None) or (0.229, 0.224, 0.225)
    return [float(m) for m in mean], [float(s) for s in std]
