"""Evaluation protocols on cached features (one forward pass per model; see `features`).

- `supervised_scores`: the model's own head (a CLIP-style model scores its class captions);
- `zero_shot_scores`: cosine similarity to caption embeddings of candidate classes, optionally
  averaged over caption templates (a template ensemble, as in CLIP);
- `few_shot`: k support images per class from the **train** side, several seeds: SimpleShot
  (nearest prototype on centred, L2-normalised features) and a logistic-regression probe;
- `linear_probe`: logistic regression on the whole train side (C picked on val when present);
- `cross_source`: per held-out unit (source or instrument) a probe trained on the other units'
  train side, scored on every unit: rows = training units ("all but X"), columns = test unit.

Every function takes features and integer labels and returns scores or metric blocks; loading
and bookkeeping live in `planktonzilla.evaluate`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from planktonzilla.evaluate import metrics

SHOTS = (1, 5, 10)
SEEDS = (0, 1, 2)
#: Probe regularisation grid (inverse strength), searched on the val side when there is one.
C_GRID = (0.1, 1.0, 10.0)

#: Caption templates (CLIP-style prompt ensembles); "{}" is the class caption.
TEMPLATES = {
    "none": ("{}",),
    "photo": ("a photo of {}.",),
    "plankton": (
        "a photo of {}.",
        "a microscope image of {}.",
        "a plankton image of {}.",
        "a greyscale image of {}, a plankton organism.",
        "an in situ image of {}.",
    ),
}


def index_labels(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Indices of `labels` into `classes` (-1 where a label is not a class)."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(label, -1) for label in labels], dtype=np.int64)


def normalise(x: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """Centre (by `mean`, when given) and L2-normalise rows."""
    x = x.astype(np.float64) - (0.0 if mean is None else mean)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


# ------------------------------------------------------------------ zero-shot
def captions(
    class_lineages: Sequence[dict[str, Any]], style: str, templates: str = "none"
) -> list[list[str]]:
    """Per class, its caption in every template of the `templates` set."""
    from planktonzilla.models.clip import caption

    if templates not in TEMPLATES:
        raise ValueError(f"unknown template set {templates!r} (known: {', '.join(TEMPLATES)})")
    keys = ("kingdom", "phylum", "class", "order", "family", "genus", "species", "name", "rank")
    out = []
    for lin in class_lineages:
        text = caption({k: lin.get(k) for k in keys if k in lin}, style)
        out.append([t.format(text) for t in TEMPLATES[templates]])
    return out


def zero_shot_scores(encoder, features: np.ndarray, texts: list[list[str]]) -> np.ndarray:
    """Scaled cosine similarities ``[N, C]`` of image features to each class's caption(s)
    (the mean of its normalised template embeddings, renormalised)."""
    flat = [t for group in texts for t in group]
    emb = normalise(encoder.encode_texts(flat))
    per_class, start = [], 0
    for group in texts:
        per_class.append(emb[start : start + len(group)].mean(0))
        start += len(group)
    text = normalise(np.stack(per_class))
    return encoder.logit_scale * normalise(features) @ text.T


# ------------------------------------------------------------------ probes
def fit_logistic(x: np.ndarray, y: np.ndarray, c: float = 1.0, seed: int = 0):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    with warnings.catch_warnings():  # k-shot: "more classes than half the samples" is the point
        warnings.filterwarnings("ignore", message="The number of unique classes")
        return model.fit(x, y)


def probe_scores(model, x: np.ndarray, num_classes: int) -> np.ndarray:
    """Class probabilities ``[N, num_classes]`` from a fitted probe (classes it never saw
    get probability 0)."""
    out = np.zeros((len(x), num_classes))
    if len(model.classes_) == 1:
        out[:, model.classes_[0]] = 1.0
        return out
    out[:, model.classes_] = model.predict_proba(x)
    return out


def linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    num_classes: int,
    *,
    val_x: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """(test probabilities, chosen C): logistic regression on centred, normalised features;
    C from `C_GRID` by val top-1 when a val side is given, else 1."""
    mean = train_x.mean(0)
    tr, te = normalise(train_x, mean), normalise(test_x, mean)
    best_c = 1.0
    if val_x is not None and val_y is not None and len(val_y) and len(np.unique(train_y)) > 1:
        va = normalise(val_x, mean)
        accuracy = {
            c: float(np.mean(fit_logistic(tr, train_y, c).predict(va) == val_y)) for c in C_GRID
        }
        best_c = max(C_GRID, key=lambda c: (accuracy[c], -abs(np.log10(c))))
    if len(np.unique(train_y)) == 1:
        out = np.zeros((len(te), num_classes))
        out[:, train_y[0]] = 1.0
        return out, best_c
    return probe_scores(fit_logistic(tr, train_y, best_c), te, num_classes), best_c


def sample_support(train_y: np.ndarray, k: int, seed: int, order_key: Sequence[str]) -> np.ndarray:
    """Indices of up to k support items per class, a pure function of (seed, the items'
    ids): the same support whatever order the rows come in."""
    rng = np.random.default_rng(seed)
    by_id = np.argsort(np.asarray(order_key), kind="stable")
    chosen = []
    for c in np.unique(train_y):
        members = by_id[train_y[by_id] == c]
        take = rng.permutation(len(members))[: min(k, len(members))]
        chosen.extend(members[np.sort(take)].tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def few_shot(
    train_x: np.ndarray,
    train_y: np.ndarray,
    train_ids: Sequence[str],
    test_x: np.ndarray,
    test_y: np.ndarray,
    test_ids: Sequence[str],
    num_classes: int,
    *,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = SEEDS,
) -> dict[str, Any]:
    """SimpleShot and logistic few-shot, mean ± std over seeds (the schema's ``few-shot``).
    Test images of classes with no train image are left out (they cannot be learnt from
    the train side); the support never contains a test image (checked)."""
    overlap = set(train_ids) & set(test_ids)
    if overlap:
        raise ValueError(f"{len(overlap)} objects are on both the train and the test side")
    centre = train_x.mean(0)  # SimpleShot centres on the mean of the base (train) features
    tr, te = normalise(train_x, centre), normalise(test_x, centre)
    seen = np.isin(test_y, np.unique(train_y))
    te, ty = te[seen], test_y[seen]
    methods: dict[str, dict[str, Any]] = {"simpleshot": {}, "logistic": {}}
    for k in shots:
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for seed in seeds:
            support = sample_support(train_y, k, seed, train_ids)
            sx, sy = tr[support], train_y[support]
            classes = np.unique(sy)
            protos = normalise(np.stack([sx[sy == c].mean(0) for c in classes]))
            nearest = np.full((len(te), num_classes), -np.inf)
            nearest[:, classes] = te @ protos.T
            scores = {"simpleshot": nearest}
            if len(classes) > 1:
                scores["logistic"] = probe_scores(fit_logistic(sx, sy, 1.0, seed), te, num_classes)
            else:
                scores["logistic"] = nearest
            for method, s in scores.items():
                pred = s.argmax(1)
                f1 = metrics.f1_summary(ty, pred, num_classes)
                runs[method].append(
                    {
                        "seed": int(seed),
                        "top1": metrics.top_k_accuracy(ty, s, 1),
                        "macro_f1": f1["macro_f1"],
                        "support": int(len(support)),
                    }
                )
        for method, rs in runs.items():
            methods[method][str(k)] = _mean_std(rs)
    return {
        "k": list(shots),
        "seeds": list(seeds),
        "test_images": int(len(ty)),
        "methods": methods,
    }


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for key in ("top1", "macro_f1"):
        values = [r[key] for r in runs if r[key] is not None]
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
        out[f"{key}_std"] = float(np.std(values)) if values else None
    return out


# ------------------------------------------------------------------ cross-source
def cross_source(
    folds: Sequence[dict[str, Any]],
    units: Sequence[str],
    *,
    rank: str,
    unit: str,
) -> dict[str, Any]:
    """The ``cross-source`` block from per-fold results. Each fold is a dict with
    ``held_out``, ``train_units``, ``n_train``, ``classes`` and ``cells``: {test unit:
    (top1, macro_f1, n)} — the held-out unit scored on its test side, the training units on
    their val side (in-distribution reference)."""
    rows = [f["held_out"] for f in folds]
    matrix = {key: [[None] * len(units) for _ in rows] for key in ("top1", "macro_f1", "n")}
    for r, fold in enumerate(folds):
        for u, (top1, f1, n) in fold["cells"].items():
            c = units.index(u)
            matrix["top1"][r][c], matrix["macro_f1"][r][c], matrix["n"][r][c] = top1, f1, n
    return {
        "rank": rank,
        "unit": unit,
        "train": [f"all but {h}" for h in rows],
        "test": list(units),
        **matrix,
        "folds": [
            {k: v for k, v in f.items() if k != "cells"}
            | {
                "top1": f["cells"].get(f["held_out"], (None,))[0],
                "macro_f1": f["cells"].get(f["held_out"], (None, None))[1],
                "n_test": f["cells"].get(f["held_out"], (None, None, 0))[2],
            }
            for f in folds
        ],
    }
