"""The supervised classifier: backbone → linear head over the classes, optionally with one
extra linear head per taxonomic rank (each class maps to its ancestor at that rank; classes
without one are ignored by that head's loss)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from planktonzilla.models import PlanktonModel, register_model_kind
from planktonzilla.models.backbone import create_backbone

IGNORE = -100


def rank_targets(class_lineages: list[dict], rank: str) -> tuple[list[str], list[int]]:
    """(names at `rank`, per-class index into them or -100 when the class has no such rank)."""
    values = [(lin.get(rank) or "") for lin in class_lineages]
    names = sorted({v for v in values if v})
    index = {name: i for i, name in enumerate(names)}
    return names, [index[v] if v else IGNORE for v in values]


@register_model_kind
class SupervisedModel(PlanktonModel):
    """Config keys: ``backbone``, ``image_size``, ``classes``, ``class_lineages``,
    ``head_ranks`` (extra heads, e.g. ``["order", "family"]``), ``backbone_kwargs``."""

    kind = "supervised"

    @classmethod
    def complete_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        config = super().complete_config(config)
        config.setdefault("head_ranks", [])
        config.setdefault("backbone_kwargs", {})
        config["rank_classes"] = {
            r: rank_targets(config["class_lineages"], r)[0] for r in config["head_ranks"]
        }
        return config

    def __init__(self, config: dict[str, Any], pretrained=None):
        super().__init__(config)
        self.backbone = create_backbone(
            config["backbone"],
            image_size=self.image_size,
            pretrained=pretrained,
            **config.get("backbone_kwargs", {}),
        )
        width = self.backbone.num_features
        self.head = nn.Linear(width, len(self.classes))
        self.rank_heads = nn.ModuleDict()
        for rank in config.get("head_ranks", []):
            names, targets = rank_targets(config["class_lineages"], rank)
            self.rank_heads[rank] = nn.Linear(width, len(names))
            self.register_buffer(f"_to_{rank}", torch.tensor(targets), persistent=False)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        features = self.backbone(x)
        logits = self.head(features)
        if labels is None:
            return logits
        out = {"classes": (logits, labels)}
        for rank, head in self.rank_heads.items():
            out[rank] = (head(features), getattr(self, f"_to_{rank}")[labels])
        return out
