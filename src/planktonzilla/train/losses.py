"""Training losses.

Classification (`LOSSES`, built by `make_loss(name, class_counts, **params)`), each a callable
``loss(logits [B, C], target [B]) -> scalar`` (targets of -100 are ignored):

- ``ce``: cross-entropy with label smoothing (``label_smoothing``);
- ``focal``: focal loss, ``-(1 - p_t)^gamma log p_t`` (Lin et al. 2017; ``gamma``);
- ``ldam``: label-distribution-aware margins ``m_c ∝ n_c^(-1/4)`` subtracted from the true
  class logit (Cao et al. 2019; ``max_margin``, ``scale``);
- ``balanced_softmax``: cross-entropy on ``logits + log prior`` (Ren et al. 2020);
- ``logit_adjust``: cross-entropy on ``logits + tau · log prior`` (Menon et al. 2021; ``tau``).

Class priors come from the training counts; the adjustments only act in the loss, so the
model's raw logits are what it predicts with.

Contrastive (`contrastive_loss`): CLIP's symmetric InfoNCE in which image–text pairs that share
a caption are masked out, so that two images of the same taxon are never pushed apart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

IGNORE = -100
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, Callable[..., Loss]] = {}


def register_loss(name: str):
    def add(factory):
        LOSSES[name] = factory
        return factory

    return add


def _log_prior(class_counts: Sequence[float] | torch.Tensor | None, n: int | None = None):
    if class_counts is None:
        raise ValueError("this loss needs the class counts of the training set")
    counts = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1.0)
    return torch.log(counts / counts.sum())


def _valid(logits, target):
    keep = target != IGNORE
    return logits[keep], target[keep]


def _mean_or_zero(values: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    # an all-ignored batch still returns a graph-connected zero (DDP needs every parameter used)
    return values.mean() if values.numel() else logits.sum() * 0.0


@register_loss("ce")
def cross_entropy(class_counts=None, *, label_smoothing: float = 0.0) -> Loss:
    def loss(logits, target):
        logits, target = _valid(logits, target)
        if not target.numel():
            return _mean_or_zero(target.float(), logits)
        return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)

    return loss


@register_loss("focal")
def focal(class_counts=None, *, gamma: float = 2.0) -> Loss:
    def loss(logits, target):
        logits, target = _valid(logits, target)
        logp = F.log_softmax(logits.float(), -1).gather(1, target[:, None]).squeeze(1)
        return _mean_or_zero(-((1 - logp.exp()) ** gamma) * logp, logits)

    return loss


@register_loss("ldam")
def ldam(class_counts=None, *, max_margin: float = 0.5, scale: float = 1.0) -> Loss:
    if class_counts is None:
        raise ValueError("ldam needs the class counts of the training set")
    margins = torch.as_tensor(class_counts, dtype=torch.float32).clamp_min(1.0) ** -0.25
    margins = margins * (max_margin / margins.max())

    def loss(logits, target):
        logits, target = _valid(logits.float(), target)
        m = margins.to(logits.device)[target]
        shifted = logits.scatter_add(1, target[:, None], -m[:, None])
        if not target.numel():
            return _mean_or_zero(target.float(), logits)
        return F.cross_entropy(scale * shifted, target)

    return loss


@register_loss("logit_adjust")
def logit_adjust(class_counts=None, *, tau: float = 1.0) -> Loss:
    log_prior = _log_prior(class_counts)

    def loss(logits, target):
        logits, target = _valid(logits.float(), target)
        if not target.numel():
            return _mean_or_zero(target.float(), logits)
        return F.cross_entropy(logits + tau * log_prior.to(logits.device), target)

    return loss


@register_loss("balanced_softmax")
def balanced_softmax(class_counts=None) -> Loss:
    return logit_adjust(class_counts, tau=1.0)


def make_loss(name: str, class_counts=None, **params) -> Loss:
    """A classification loss by name (see `LOSSES`); unknown parameters are an error."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r} (known: {', '.join(sorted(LOSSES))})")
    return LOSSES[name](class_counts, **params)


def contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    caption_ids: torch.Tensor,
) -> torch.Tensor:
    """Symmetric image–text InfoNCE over a batch of normalised features ``[N, D]``; pair *i*
    is the positive of image *i* and text *i*; pairs *(i, j)*, *i ≠ j*, with the same caption
    id are removed from both softmaxes (neither pulled together nor pushed apart)."""
    logits = logit_scale * image.float() @ text.float().T
    return contrastive_loss_from_logits(logits, caption_ids)


def contrastive_loss_from_logits(logits: torch.Tensor, caption_ids: torch.Tensor) -> torch.Tensor:
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    same = (caption_ids[:, None] == caption_ids[None, :]) & ~eye
    logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(n, device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
