"""The CLIP-style model: an open_clip ``CLIP`` whose image tower is the shared timm backbone
configuration (``vision_cfg.timm_model_name``) and whose text tower reads lineage captions.

Class logits are the scaled cosine similarities between an image and the captions of the
classes, so the model classifies like the supervised one (and zero-shot on new captions with
`ClipModel.text_logits`).

The directory also holds an open_clip checkpoint (``open_clip_config.json`` +
``open_clip_model.safetensors``) that plain open_clip loads at the trained size, with a
transform equal to ours (the model's `PreprocessConfig`, open_clip's ``resize_mode="longest"``):

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:DIR")
    tokenizer = open_clip.get_tokenizer("local-dir:DIR")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from planktonzilla.fileio import atomic_path, atomic_write
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
        "image_size": config["preprocess"]["size"],
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
        """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (hub layout), which
        plain ``open_clip.create_model_and_transforms("local-dir:DIR")`` loads at the trained
        image size, with a transform equal to ours (`PreprocessConfig.open_clip_cfg`)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        model_cfg, state = open_clip_export(self)
        with atomic_path(directory / OPEN_CLIP_WEIGHTS) as tmp:
            save_file(state, str(tmp), {"format": "pt"})
        cfg = {"model_cfg": model_cfg, "preprocess_cfg": self.preprocess.open_clip_cfg()}
        atomic_write(directory / OPEN_CLIP_CONFIG, json.dumps(cfg, indent=1))


def _native_vision_cfg(trunk, image_size: int) -> dict[str, Any] | None:
    """open_clip's own ViT config equivalent to a timm ViT trunk, or None when the trunk has
    a part open_clip's ViT lacks (register tokens, layer scale, q/k norms, no class token…)."""
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(trunk, VisionTransformer) or trunk.global_pool not in ("token", "avg"):
        return None
    block = trunk.blocks[0]
    plain = (
        trunk.cls_token is not None
        and trunk.num_prefix_tokens == 1
        and not trunk.no_embed_class
        and not trunk.dynamic_img_size
        and isinstance(trunk.norm_pre, torch.nn.Identity)
        and all(isinstance(b.ls1, torch.nn.Identity) for b in trunk.blocks)
        and isinstance(block.attn.q_norm, torch.nn.Identity)
        and isinstance(block.mlp.act, torch.nn.GELU)
        and block.mlp.act.approximate == "none"
        and block.attn.qkv.bias is not None
    )
    if not plain:
        return None
    width = trunk.embed_dim
    return {
        "image_size": image_size,
        "patch_size": trunk.patch_embed.patch_size[0],
        "width": width,
        "layers": len(trunk.blocks),
        "head_width": width // block.attn.num_heads,
        "mlp_ratio": block.mlp.fc1.out_features / width,
        "no_ln_pre": True,
        "pool_type": "tok" if trunk.global_pool == "token" else "avg",
        # the final LayerNorm: timm's `norm` before pooling, or its `fc_norm` after
        "final_ln_after_pool": not isinstance(trunk.fc_norm, torch.nn.Identity),
        "norm_kwargs": {"eps": block.norm1.eps},
    }


def open_clip_export(model: ClipModel) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(open_clip ``model_cfg``, state dict) of a planktonzilla CLIP model for open_clip.

    A plain timm ViT trunk is rewritten as open_clip's own ViT (which open_clip builds at the
    configured image size; its timm adapter always builds the timm default size): same
    weights, the patch-embedding bias folded into the position embeddings of the patches.
    Other trunks (convnets take any size) keep the timm adapter's config."""
    from open_clip.model import CLIP

    config = model.config
    trunk = model.clip.visual.trunk
    source = {k: v.detach().cpu() for k, v in model.clip.state_dict().items()}
    model_cfg = open_clip_model_cfg(config)
    vision = _native_vision_cfg(trunk, model.image_size)
    if vision is None:
        return model_cfg, {k: v.contiguous() for k, v in source.items()}
    model_cfg["vision_cfg"] = vision
    target = CLIP(**model_cfg)
    state = {k: v for k, v in source.items() if not k.startswith("visual.")}
    t = {k[len("visual.trunk.") :]: v for k, v in source.items() if k.startswith("visual.trunk.")}
    pos = t["pos_embed"][0].clone()
    if "patch_embed.proj.bias" in t:
        pos[1:] += t["patch_embed.proj.bias"]
    state |= {
        "visual.conv1.weight": t["patch_embed.proj.weight"],
        "visual.class_embedding": t["cls_token"][0, 0],
        "visual.positional_embedding": pos,
        "visual.ln_post.weight": t["norm.weight" if "norm.weight" in t else "fc_norm.weight"],
        "visual.ln_post.bias": t["norm.bias" if "norm.bias" in t else "fc_norm.bias"],
        "visual.proj": source["visual.head.proj.weight"].T,
    }
    names = {
        "norm1": "ln_1",
        "attn.qkv.weight": "attn.in_proj_weight",
        "attn.qkv.bias": "attn.in_proj_bias",
        "attn.proj": "attn.out_proj",
        "norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    for key, value in t.items():
        if not key.startswith("blocks."):
            continue
        _, index, rest = key.split(".", 2)
        for ours, theirs in names.items():
            if rest.startswith(ours):
                state[f"visual.transformer.resblocks.{index}.{theirs}{rest[len(ours) :]}"] = value
                break
    target.load_state_dict(state, strict=True)  # every tensor accounted for, shapes checked
    return model_cfg, {k: v.contiguous() for k, v in target.state_dict().items()}
