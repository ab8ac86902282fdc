"""The CLIP-style model: an open_clip ``CLIP`` whose image tower is the shared timm backbone
configuration (``vision_cfg.timm_model_name``) and whose text tower reads lineage captions.

Class logits are the scaled cosine similarities between an image and the captions of the
classes, so the model classifies like the supervised one (and zero-shot on new captions with
`ClipModel.text_logits`).

The directory also holds an open_clip checkpoint (``open_clip_config.json`` +
``open_clip_model.safetensors``):

    model, _, preprocess = open_clip.create_model_and_transforms(
        "local-dir:DIR", force_image_size=config["image_size"])
    tokenizer = open_clip.get_tokenizer("local-dir:DIR")

open_clip builds timm trunks at their default size and resizes after loading; the exported
position embeddings are chosen so that this resize gives back exactly the trained ones.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from planktonzilla.models import PlanktonModel, register_model_kind
from planktonzilla.models.backbone import load_trunk_weights, resolve_backbone

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"

#: A small text tower: lineage captions are short and their vocabulary is tiny.
DEFAULT_TEXT = {"context_length": 48, "width": 256, "heads": 4, "layers": 4}
CAPTION_STYLES = ("lineage", "bioclip")


def caption(lineage: dict, style: str = "lineage") -> str:
    """The caption of a class lineage dict (kingdom … species, name, rank)."""
    from planktonzilla.taxonomy.captions import bioclip_caption, lineage_caption
    from planktonzilla.taxonomy.lineage import Lineage

    styles = {"lineage": lineage_caption, "bioclip": bioclip_caption}
    if style not in styles:
        raise ValueError(f"unknown caption style {style!r} (known: {', '.join(styles)})")
    clean = {k: ("" if v is None else v) for k, v in lineage.items() if k != "aphia_id"}
    return styles[style](Lineage.from_dict(clean))


def open_clip_model_cfg(config: dict[str, Any]) -> dict[str, Any]:
    """open_clip's ``model_cfg`` for a planktonzilla CLIP config."""
    timm_name, kwargs = resolve_backbone(config["backbone"])
    kwargs = {**kwargs, **config.get("backbone_kwargs", {})}
    unsupported = set(kwargs) - {"drop_path_rate"}
    if unsupported:
        raise ValueError(f"CLIP image towers cannot pass backbone kwargs {sorted(unsupported)}")
    vision = {
        "timm_model_name": timm_name,
        "timm_model_pretrained": False,
        "timm_pool": config["timm_pool"],
        "timm_proj": "linear",
        "image_size": config["image_size"],
    }
    if "drop_path_rate" in kwargs:
        vision["timm_drop_path"] = kwargs["drop_path_rate"]
    return {"embed_dim": config["embed_dim"], "vision_cfg": vision, "text_cfg": config["text"]}


@register_model_kind
class ClipModel(PlanktonModel):
    """Config keys: ``backbone``, ``image_size``, ``classes``, ``class_lineages``,
    ``caption_style`` (lineage | bioclip), ``embed_dim``, ``text`` (open_clip text_cfg:
    context_length, width, heads, layers), ``timm_pool``."""

    kind = "clip"

    @classmethod
    def complete_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        config = super().complete_config(config)
        config.setdefault("caption_style", "lineage")
        config.setdefault("embed_dim", 256)
        config.setdefault("timm_pool", "token")
        config["text"] = {**DEFAULT_TEXT, **config.get("text", {})}
        config.setdefault(
            "captions", [caption(lin, config["caption_style"]) for lin in config["class_lineages"]]
        )
        return config

    def __init__(self, config: dict[str, Any], pretrained=None):
        super().__init__(config)
        from open_clip.model import CLIP

        model_cfg = open_clip_model_cfg(config)
        model_cfg["vision_cfg"]["timm_model_pretrained"] = pretrained == "timm"
        self.clip = CLIP(**model_cfg)
        self.clip.visual.set_input_size(self.image_size)  # what open_clip's force_image_size does
        if pretrained not in (None, "timm"):
            load_trunk_weights(self.clip.visual.trunk, pretrained)
        self.captions: list[str] = list(config["captions"])
        unique = sorted(set(self.captions))
        ids = [unique.index(c) for c in self.captions]
        # classes that share a caption share an id: their pairs are not negatives
        self.register_buffer("caption_ids", torch.tensor(ids), persistent=False)
        self.register_buffer("caption_tokens", self.tokenize(unique), persistent=False)
        self._class_text: torch.Tensor | None = None

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        from open_clip.tokenizer import SimpleTokenizer

        return SimpleTokenizer(context_length=self.config["text"]["context_length"])(texts)

    def train(self, mode: bool = True):
        self._class_text = None  # text features change while training
        return super().train(mode)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(x), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_text(tokens), dim=-1)

    def class_text_features(self) -> torch.Tensor:
        """Normalised text features of each class's caption ``[C, D]`` (cached in eval)."""
        if self._class_text is not None and not self.training:
            return self._class_text
        features = self.encode_text(self.caption_tokens)[self.caption_ids]
        if not self.training:
            self._class_text = features
        return features

    def text_logits(self, x: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Scaled similarities of a normalised image batch to arbitrary texts (zero-shot)."""
        tokens = self.tokenize(texts).to(x.device)
        return self.clip.logit_scale.exp() * self.encode_image(x) @ self.encode_text(tokens).T

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        image = self.encode_image(x)
        scale = self.clip.logit_scale.exp()
        if labels is None:
            return scale * image @ self.class_text_features().to(image.dtype).T
        # encode each distinct caption of the batch once, then gather per image
        caption_ids = self.caption_ids[labels]
        unique, inverse = torch.unique(caption_ids, return_inverse=True)
        text = self.encode_text(self.caption_tokens[unique])[inverse]
        return {"image": image, "text": text, "logit_scale": scale, "caption_ids": caption_ids}

    @torch.no_grad()
    def clamp_logit_scale(self, max_scale: float = 100.0) -> None:
        self.clip.logit_scale.clamp_(0, torch.log(torch.tensor(max_scale)).item())

    def export_open_clip(self, directory: str | os.PathLike) -> None:
        """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (hub layout)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        state = {k: v.detach().cpu().contiguous() for k, v in self.clip.state_dict().items()}
        trunk = self.clip.visual.trunk
        key = "visual.trunk.pos_embed"
        if key in state and hasattr(trunk, "patch_embed"):
            import timm

            default = timm.create_model(
                self.clip.visual.trunk.default_cfg["architecture"], pretrained=False
            ).patch_embed.grid_size
            prefix = 0 if getattr(trunk, "no_embed_class", False) else trunk.num_prefix_tokens
            state[key] = pos_embed_preimage(
                state[key], tuple(trunk.patch_embed.grid_size), tuple(default), prefix
            ).contiguous()
        tmp = directory / (OPEN_CLIP_WEIGHTS + ".tmp")
        save_file(state, str(tmp), {"format": "pt"})
        os.replace(tmp, directory / OPEN_CLIP_WEIGHTS)
        cfg = {
            "model_cfg": open_clip_model_cfg(self.config),
            "preprocess_cfg": {
                "mean": self.config["mean"],
                "std": self.config["std"],
                "size": self.image_size,
                "interpolation": "bicubic",
                "resize_mode": "squash",
            },
        }
        tmp = directory / (OPEN_CLIP_CONFIG + ".tmp")
        tmp.write_text(json.dumps(cfg, indent=1))
        os.replace(tmp, directory / OPEN_CLIP_CONFIG)


def pos_embed_preimage(
    pos_embed: torch.Tensor, grid: tuple[int, int], default: tuple[int, int], prefix: int
) -> torch.Tensor:
    """Position embeddings on the ``default`` grid that timm's resample (bicubic, antialias)
    maps back onto ``pos_embed`` (on ``grid``): a smooth upsample corrected by the
    least-squares solution in the resample's null space."""
    if tuple(grid) == tuple(default):
        return pos_embed
    from timm.layers import resample_abs_pos_embed

    def resample(x, new, old):
        return resample_abs_pos_embed(x, list(new), list(old), num_prefix_tokens=0)

    tokens, patches = pos_embed[:, :prefix], pos_embed[:, prefix:].double()
    n_old = default[0] * default[1]
    basis = torch.eye(n_old, dtype=torch.float64).unsqueeze(0)  # impulses as channels
    down = resample(basis, grid, default)[0].double()  # [n_new, n_old]
    up = resample(patches.float(), default, grid).double()  # [1, n_old, D]
    residual = patches[0] - down @ up[0]
    fixed = up[0] + torch.linalg.pinv(down) @ residual
    return torch.cat([tokens, fixed.unsqueeze(0).to(pos_embed.dtype)], dim=1)
