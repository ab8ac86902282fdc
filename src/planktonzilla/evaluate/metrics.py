"""Classification metrics for plankton image models, in plain numpy.

    report = classification_report(y_true, logits, classes, class_lineages=lineages)
    report["top1"], report["macro_f1"], report["ece"], report["per_rank"]["genus"]["top1"]

Conventions, shared by every protocol:

- `y_true` holds class indices ``0..C-1``; `scores` is ``[N, C]`` (probabilities or logits).
  The prediction is the argmax, ties going to the lowest class index; top-k orders classes by
  descending score, ties again to the lower index (a stable sort).
- Zero divisions give 0.0 per class (a class never predicted has precision 0, a class with no
  test images recall 0). **Macro F1** averages over the classes present in the truth *or* the
  predictions: a class absent from both has no defined F1 and is left out rather than counted
  as 0 (which would make the score depend on the size of the label space, not on the model).
  **Weighted F1** weighs by test support, so it covers the classes with support only.
- Empty input (N == 0) gives None for every score instead of raising or returning nan.
- Taxonomic metrics take lineages: 7 names kingdom…species (sequences, or mappings with the
  rank keys), None or "" where a rank is absent. At a rank the label is the *name* at that rank,
  so that lineages from two taxonomy versions that agree on a genus still agree there.

Results are plain floats, ints, lists and dicts (JSON-serialisable), except
`confusion_matrix` and `per_class_scores`, which return numpy arrays to compute on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from planktonzilla.data.dataset import RANKS

#: The predicted name at a rank that the predicted lineage does not reach.
NO_NAME = "<none>"
#: More unique confidences than this and `coverage_curve` uses quantile thresholds.
MAX_THRESHOLDS = 101


def top_k_accuracy(y_true, scores, k: int = 1) -> float | None:
    """Fraction of samples whose true class is among the `k` highest scores (None when N == 0)."""
    scores = _scores(scores)
    y = _labels(y_true, scores.shape[1], "y_true")
    if len(y) != len(scores):
        raise ValueError(f"y_true has {len(y)} samples, scores {len(scores)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(y) == 0:
        return None
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(top == y[:, None], axis=1)))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts: rows are true classes, columns predicted ones."""
    y, p = _pair(y_true, y_pred, num_classes)
    counts = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return counts.astype(np.int64).reshape(num_classes, num_classes)


def per_class_scores(y_true, y_pred, num_classes: int) -> dict[str, np.ndarray]:
    """Per class `precision`, `recall`, `f1` (float64) and `support` (int64), length C."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    return {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, support),
        # 2TP / (2TP + FP + FN) equals 2PR / (P + R) and is 0 where both are 0
        "f1": _ratio(2 * tp, support + predicted),
        "support": support,
    }


def f1_summary(y_true, y_pred, num_classes: int) -> dict[str, float | None]:
    """`macro_f1` over classes in y_true ∪ y_pred and support-`weighted_f1` (None when N == 0)."""
    y, p = _pair(y_true, y_pred, num_classes)
    if len(y) == 0:
        return {"macro_f1": None, "weighted_f1": None}
    scores = per_class_scores(y, p, num_classes)
    present = np.zeros(num_classes, dtype=bool)
    present[y] = present[p] = True
    support = scores["support"]
    return {
        "macro_f1": float(scores["f1"][present].mean()),
        "weighted_f1": float(np.sum(scores["f1"] * support) / support.sum()),
    }


def calibration(confidence, correct, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error and the reliability table on `bins` equal-width bins.

    Bin i covers (lower, upper], the first one [0, upper]. ECE = Σ_b (n_b / N)·|acc_b − conf_b|
    (None when N == 0); empty bins are listed with count 0 and None confidence and accuracy.
    """
    conf, ok = _confidences(confidence, correct)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.arange(bins + 1) / bins  # i / bins: exact decimal edges (0.7, not 0.70…01)
    index = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        row = {"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n}
        if n:
            row["confidence"] = float(conf[members].mean())
            row["accuracy"] = float(ok[members].mean())
            ece += n * abs(row["accuracy"] - row["confidence"])
        else:
            row["confidence"] = row["accuracy"] = None
        table.append(row)
    return {"ece": ece / len(conf) if len(conf) else None, "bins": table}


def coverage_curve(confidence, correct, thresholds=None) -> dict[str, Any]:
    """Accuracy when only predictions with confidence >= t are kept, for each threshold t.

    Default thresholds: 0.0 and every unique confidence, or 0.0 and 100 quantiles of the
    confidences when there are more. `coverage` is kept / N, `accuracy` that of the kept
    samples (None when none is kept). `aurc` is the area under the risk–coverage curve: the mean
    over i of the error rate among the i most confident samples. Within tied confidences no
    order can be chosen, so each tied sample counts the group's mean error (the expectation over
    random tie-breaking), which keeps AURC independent of input order.
    """
    conf, ok = _confidences(confidence, correct)
    n = len(conf)
    if thresholds is None:
        unique = np.unique(conf)
        if len(unique) + 1 > MAX_THRESHOLDS:
            quantiles = np.linspace(0.0, 1.0, MAX_THRESHOLDS)[1:]
            unique = np.unique(np.quantile(conf, quantiles, method="lower"))
        thresholds = np.unique(np.concatenate([[0.0], unique]))
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    coverage, accuracy = [], []
    for t in thresholds:
        kept = conf >= t
        k = int(kept.sum())
        coverage.append(k / n if n else None)
        accuracy.append(float(ok[kept].mean()) if k else None)
    return {
        "threshold": [float(t) for t in thresholds],
        "coverage": coverage,
        "accuracy": accuracy,
        "aurc": _aurc(conf, ok),
    }


def lineage_depth_agreement(true_lineage, pred_lineage) -> int:
    """Depth of the lowest common ancestor: the number of leading ranks (kingdom first) where
    both lineages name the same taxon (0 = not even the same kingdom, 7 = same species).

    The count stops at the first rank absent from either lineage, even if deeper ranks agree.
    """
    depth = 0
    for a, b in zip(_lineage(true_lineage), _lineage(pred_lineage), strict=True):
        if a is None or b is None or a != b:
            break
        depth += 1
    return depth


def mistake_severity(true_lineages, pred_lineages) -> dict[str, Any]:
    """How far off the errors are in the tree: over samples whose lineages differ, the mean
    depth of the lowest common ancestor (higher = milder mistakes) and its histogram."""
    trues, preds = _lineage_pairs(true_lineages, pred_lineages)
    depths = [lineage_depth_agreement(t, p) for t, p in zip(trues, preds, strict=True) if t != p]
    # a differing pair shares at most 6 leading ranks
    histogram = {d: depths.count(d) for d in range(len(RANKS))}
    return {
        "mean_lca_depth_errors": float(np.mean(depths)) if depths else None,
        "histogram": histogram,
        "errors": len(depths),
    }


def rank_metrics(true_lineages, pred_lineages, ranks: Sequence[str] = RANKS) -> dict[str, dict]:
    """Top-1 accuracy and macro F1 at each taxonomic rank.

    At a rank only the samples whose true lineage reaches it are scored; a prediction whose
    lineage stops above it counts as the name ``<none>`` (always wrong, and left out of the
    macro average). `n` is the number scored, `classes` the number of distinct true names.
    """
    trues, preds = _lineage_pairs(true_lineages, pred_lineages)
    out = {}
    for rank in ranks:
        if rank not in RANKS:
            raise ValueError(f"unknown rank {rank!r}; ranks are {', '.join(RANKS)}")
        r = RANKS.index(rank)
        pairs = [(t[r], p[r] or NO_NAME) for t, p in zip(trues, preds, strict=True) if t[r]]
        if not pairs:
            out[rank] = {"n": 0, "top1": None, "macro_f1": None, "classes": 0}
            continue
        true_names = sorted({t for t, _ in pairs})
        names = true_names + sorted({p for _, p in pairs} - set(true_names) - {NO_NAME})
        index = {name: i for i, name in enumerate([*names, NO_NAME])}
        y = np.array([index[t] for t, _ in pairs])
        p = np.array([index[q] for _, q in pairs])
        f1 = per_class_scores(y, p, len(index))["f1"][: len(names)]
        # every name is in the truth or the predictions: the macro rule of f1_summary
        out[rank] = {
            "n": len(pairs),
            "top1": float(np.mean(y == p)),
            "macro_f1": float(f1.mean()),
            "classes": len(true_names),
        }
    return out


def classification_report(
    y_true,
    scores,
    classes: Sequence[str],
    *,
    class_lineages: Sequence[Mapping[str, Any]] | None = None,
    train_counts: Sequence[int] | Mapping[str, int] | None = None,
    top_k: Sequence[int] = (1, 5),
) -> dict[str, Any]:
    """The metrics block every evaluation protocol writes (JSON-serialisable).

    `scores` may be probabilities or logits: rows with a negative value or not summing to 1
    (within 1e-4) are taken as logits and softmaxed for the confidences. `class_lineages`
    (one mapping with the 7 rank keys per class) adds `per_rank` and `severity`;
    `train_counts` (per class, or class → count) fills each class's `train_count`.
    """
    classes = list(classes)
    num_classes = len(classes)
    scores = _scores(scores, num_classes)
    if scores.shape[1] != num_classes:
        raise ValueError(f"scores have {scores.shape[1]} columns for {num_classes} classes")
    y = _labels(y_true, num_classes, "y_true")
    if len(y) != len(scores):
        raise ValueError(f"y_true has {len(y)} samples, scores {len(scores)}")
    pred = np.argmax(scores, axis=1)
    probs = scores if _are_probabilities(scores) else _softmax(scores)
    confidence = probs.max(axis=1, initial=0.0)
    correct = pred == y

    report: dict[str, Any] = {"n": len(y)}
    for k in sorted({1, *top_k}):
        report[f"top{k}"] = top_k_accuracy(y, scores, k)
    report.update(f1_summary(y, pred, num_classes))
    reliability = calibration(confidence, correct)
    report["ece"] = reliability["ece"]

    per_class = per_class_scores(y, pred, num_classes)
    counts = _train_counts(train_counts, classes)
    report["per_class"] = [
        {
            "class": name,
            "precision": float(per_class["precision"][i]),
            "recall": float(per_class["recall"][i]),
            "f1": float(per_class["f1"][i]),
            "support": int(per_class["support"][i]),
            "train_count": counts[i],
        }
        for i, name in enumerate(classes)
    ]
    report["confusion"] = {
        "labels": classes,
        "matrix": confusion_matrix(y, pred, num_classes).tolist(),
    }
    report["reliability"] = reliability["bins"]
    report["coverage"] = coverage_curve(confidence, correct)
    if class_lineages is not None:
        if len(class_lineages) != num_classes:
            raise ValueError(f"{len(class_lineages)} class lineages for {num_classes} classes")
        lineages = [_lineage(c) for c in class_lineages]
        true_lineages = [lineages[i] for i in y]
        pred_lineages = [lineages[i] for i in pred]
        report["per_rank"] = rank_metrics(true_lineages, pred_lineages)
        report["severity"] = mistake_severity(true_lineages, pred_lineages)
    return report


# --- helpers -----------------------------------------------------------------------------


def _scores(scores, num_classes: int | None = None) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.size == 0 and scores.ndim != 2:  # e.g. [] for no samples
        return scores.reshape(0, num_classes or 1)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be [N, C] with C >= 1, got shape {scores.shape}")
    return scores


def _labels(labels, num_classes: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {labels.shape}")
    if labels.size == 0:
        return labels.astype(np.int64)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class indices, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{name} has class indices outside 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _pair(y_true, y_pred, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    y = _labels(y_true, num_classes, "y_true")
    p = _labels(y_pred, num_classes, "y_pred")
    if len(y) != len(p):
        raise ValueError(f"y_true has {len(y)} samples, y_pred {len(p)}")
    return y, p


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(len(num), dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _confidences(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    ok = np.asarray(correct, dtype=np.float64).reshape(-1)
    if len(conf) != len(ok):
        raise ValueError(f"{len(conf)} confidences for {len(ok)} correctness flags")
    if len(conf) and not (np.all(conf >= 0.0) and np.all(conf <= 1.0)):
        raise ValueError("confidences must lie in [0, 1] (softmax the logits first)")
    return conf, ok


def _aurc(conf: np.ndarray, ok: np.ndarray) -> float | None:
    n = len(conf)
    if n == 0:
        return None
    order = np.argsort(-conf, kind="stable")
    errors = 1.0 - ok[order]
    # tie groups of the descending confidences: start position and mean error of each
    _, start, group, size = np.unique(
        -conf[order], return_index=True, return_inverse=True, return_counts=True
    )
    group_errors = np.add.reduceat(errors, start)
    errors_before = np.concatenate([[0.0], np.cumsum(group_errors)[:-1]])
    top = np.arange(1, n + 1)
    expected = errors_before[group] + (top - start[group]) * (group_errors / size)[group]
    return float(np.mean(expected / top))


def _are_probabilities(scores: np.ndarray) -> bool:
    return bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, rtol=0, atol=1e-4))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _train_counts(train_counts, classes: list[str]) -> list[int | None]:
    if train_counts is None:
        return [None] * len(classes)
    if isinstance(train_counts, Mapping):
        # a class missing from the training counts had no training images (zero-shot)
        return [int(train_counts.get(name, 0)) for name in classes]
    if len(train_counts) != len(classes):
        raise ValueError(f"{len(train_counts)} train counts for {len(classes)} classes")
    return [int(c) for c in train_counts]


def _lineage(lineage) -> tuple[str | None, ...]:
    if isinstance(lineage, Mapping):
        names = [lineage.get(rank) for rank in RANKS]
    else:
        names = list(lineage)
        if len(names) > len(RANKS):
            raise ValueError(f"a lineage has at most {len(RANKS)} ranks, got {len(names)}")
        names += [None] * (len(RANKS) - len(names))
    return tuple(name or None for name in names)


def _lineage_pairs(true_lineages, pred_lineages) -> tuple[list[tuple], list[tuple]]:
    trues = [_lineage(t) for t in true_lineages]
    preds = [_lineage(p) for p in pred_lineages]
    if len(trues) != len(preds):
        raise ValueError(f"{len(trues)} true lineages for {len(preds)} predicted ones")
    return trues, preds
