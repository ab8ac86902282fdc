"""Evaluation: our models and open_clip foundation models on a store split, per protocol,
per taxonomic rank and across instruments, into ``results.json`` + a report.

    from planktonzilla.evaluate import evaluate
    results = evaluate("models/clip", "store", "stratified",
                       protocols=["supervised", "zero-shot", "few-shot", "linear-probe"])
    evaluate("hf-hub:imageomics/bioclip", "store", "stratified", protocols=["zero-shot"])

`PROTOCOLS`, a registry (`register_protocol`; the computations live in
`planktonzilla.evaluate.protocols`): ``supervised`` (our models), ``zero-shot`` (CLIP-style),
``few-shot``, ``linear-probe`` and ``cross-source`` (any model). Settings are one `EvalConfig`.
The label space is the split's dataset view at `rank` (the model's own rank and filters by
default) with ``min_per_class=1``: every class with a training image. Features come from one
cached forward pass (`FeatureCache`). Results carry what is needed to reproduce a run and to
refuse comparing incompatible ones: model hash, store manifest hash, taxonomy version, split
scheme and parameters, rank, seeds, settings and code version.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from planktonzilla.fileio import atomic_write

FORMAT = "planktonzilla-evaluation"
FORMAT_VERSION = 1

__all__ = ["PROTOCOLS", "EvalConfig", "compare", "evaluate", "register_protocol", "write_results"]


@dataclass(frozen=True)
class EvalConfig:
    """Every setting of an evaluation run (the CLI flags set these by name)."""

    protocols: tuple[str, ...] = ("supervised",)
    rank: str | None = None  # the label rank; default: the model's own
    plankton_only: bool | None = None  # default: the model's own filter
    shots: tuple[int, ...] = (1, 5, 10)  # few-shot support sizes
    seeds: tuple[int, ...] = (0, 1, 2)  # few-shot support draws
    caption_style: str | None = None  # zero-shot: lineage | bioclip; default: the model's
    templates: str = "none"  # zero-shot prompt ensemble: none | photo | plankton
    zero_shot_classes: str = "all"  # all classes of the label space | those in the test set
    cross_rank: str = "phylum"
    cross_unit: str = "source"  # source | instrument
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    use_cache: bool = True

    def __post_init__(self):
        for name in ("protocols", "shots", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        unknown = [p for p in self.protocols if p not in PROTOCOLS]
        if unknown:
            raise ValueError(f"unknown protocol(s) {unknown} (known: {', '.join(PROTOCOLS)})")
        if self.zero_shot_classes not in ("all", "test"):
            raise ValueError("zero_shot_classes must be 'all' or 'test'")
        if self.cross_unit not in FOLD_PREFIXES:
            raise ValueError(f"cross_unit must be one of {', '.join(FOLD_PREFIXES)}")

    @property
    def needs_train(self) -> bool:
        return any(PROTOCOLS[p].needs_train for p in self.protocols)


class _Run:
    """What a protocol sees: the encoder, the label space, the cached features of each side."""

    def __init__(self, enc, view, cache, config: EvalConfig, store):
        from planktonzilla.evaluate import protocols as P

        self.enc, self.view, self.cache, self.config, self.store = enc, view, cache, config, store
        self.classes = view.classes
        self.train, self.val, self.test = view.side("train"), view.side("val"), view.side("test")
        self.x_test = cache.features(self.test)
        self.y_test = P.index_labels(self.test["label"].to_pylist(), self.classes)
        counts = np.bincount(
            self.train["label_index"].to_numpy(zero_copy_only=False), minlength=len(self.classes)
        )
        self.report_args = {"class_lineages": view.class_lineages, "train_counts": counts.tolist()}

    @cached_property
    def train_side(self) -> tuple[np.ndarray, np.ndarray]:
        y = self.train["label_index"].to_numpy(zero_copy_only=False).astype(np.int64)
        return self.cache.features(self.train), y

    @cached_property
    def val_side(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        from planktonzilla.evaluate import protocols as P

        if not self.val.num_rows:
            return None, None
        return self.cache.features(self.val), P.index_labels(
            self.val["label"].to_pylist(), self.classes
        )


@dataclass(frozen=True)
class Protocol:
    """A registered protocol: `run(r)` returns its results block, or a `str` saying why it does
    not apply to the model (listed under ``skipped``)."""

    name: str
    run: Callable[[_Run], dict[str, Any] | str]
    needs_train: bool = False


#: The protocol registry, in report order (`register_protocol` adds to it).
PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(name: str, *, needs_train: bool = False):
    """Decorator: make `fn(run) -> dict | str` the protocol `name`."""

    def add(fn):
        PROTOCOLS[name] = Protocol(name, fn, needs_train)
        return fn

    return add


@register_protocol("supervised")
def _supervised(r: _Run):
    from planktonzilla.evaluate import metrics
    from planktonzilla.evaluate import protocols as P

    enc = r.enc
    if enc.classes is None:
        return f"{enc.name} has no classification head of its own"
    logits = enc.head_logits(r.x_test)
    # score over the model's classes that are in the label space
    cols = P.index_labels(r.classes, enc.classes)
    scores = np.full((len(r.x_test), len(r.classes)), -np.inf)
    present = cols >= 0
    scores[:, present] = logits[:, cols[present]]
    return {
        **metrics.classification_report(r.y_test, scores, r.classes, **r.report_args),
        "classes_not_in_model": [c for c, i in zip(r.classes, cols, strict=True) if i < 0],
    }


@register_protocol("zero-shot")
def _zero_shot(r: _Run):
    from planktonzilla.evaluate import metrics
    from planktonzilla.evaluate import protocols as P

    enc, cfg = r.enc, r.config
    if not enc.is_clip:
        return f"{enc.name} is not CLIP-style (no text encoder)"
    style = cfg.caption_style or enc.caption_style
    candidates = list(range(len(r.classes)))
    if cfg.zero_shot_classes == "test":
        candidates = sorted(set(r.y_test.tolist()))
    texts = P.captions([r.view.class_lineages[i] for i in candidates], style, cfg.templates)
    scores = np.full((len(r.x_test), len(r.classes)), -np.inf)
    scores[:, candidates] = P.zero_shot_scores(enc, r.x_test, texts)
    return {
        **metrics.classification_report(r.y_test, scores, r.classes, **r.report_args),
        "candidates": (
            f"all {len(candidates)} classes of the label space"
            if cfg.zero_shot_classes == "all"
            else f"the {len(candidates)} classes present in the test set"
        ),
        "caption_style": style,
        "templates": cfg.templates,
        "example_caption": texts[0][0] if texts else None,
    }


@register_protocol("few-shot", needs_train=True)
def _few_shot(r: _Run):
    from planktonzilla.evaluate import protocols as P

    x_train, y_train = r.train_side
    return P.few_shot(
        x_train,
        y_train,
        r.train["object_id"].to_pylist(),
        r.x_test,
        r.y_test,
        r.test["object_id"].to_pylist(),
        len(r.classes),
        shots=r.config.shots,
        seeds=r.config.seeds,
    )


@register_protocol("linear-probe", needs_train=True)
def _linear_probe(r: _Run):
    from planktonzilla.evaluate import metrics
    from planktonzilla.evaluate import protocols as P

    (x_train, y_train), (x_val, y_val) = r.train_side, r.val_side
    probs, c = P.linear_probe(x_train, y_train, r.x_test, len(r.classes), val_x=x_val, val_y=y_val)
    return {**metrics.classification_report(r.y_test, probs, r.classes, **r.report_args), "C": c}


@register_protocol("cross-source", needs_train=True)
def _cross_source_protocol(r: _Run):
    cfg = r.config
    return _cross_source(
        r.store, r.enc, r.cache, cfg.cross_rank, cfg.cross_unit, r.view.filters["plankton_only"],
        _cache_args(cfg),
    )  # fmt: skip


def _cache_args(cfg: EvalConfig) -> dict[str, Any]:
    return {"batch_size": cfg.batch_size, "workers": cfg.workers, "disk": cfg.use_cache}


def evaluate(
    model: str | os.PathLike,
    store,
    split: str,
    config: EvalConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    report: bool = True,
    progress: bool = False,
    encoder=None,
    **settings,
) -> dict[str, Any]:
    """Evaluate `model` (a model directory or an open_clip spec) on `split` of `store` (an
    `ObjectStore` or its path) as `config` says (or `EvalConfig(**settings)`, e.g.
    ``protocols=["zero-shot"]``); writes ``results.json`` (and the report unless
    ``report=False``) into `out` (default ``<store>/evaluations/<time>-<model>-<split>``) and
    returns the results dict. A protocol that does not apply to the model (zero-shot of a
    supervised classifier, supervised of a foundation model) is listed under ``skipped``."""
    from planktonzilla._version import __version__
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.evaluate.features import FeatureCache, load_encoder
    from planktonzilla.store import ObjectStore
    from planktonzilla.taxonomy import mapping_version

    if config is None:
        config = EvalConfig(**settings)
    elif settings:
        raise TypeError("give either an EvalConfig or settings, not both")
    cfg = config
    store = store if isinstance(store, ObjectStore) else ObjectStore(store)
    started = time.perf_counter()
    folds = fold_models(model) if encoder is None else {}
    if folds:
        if list(cfg.protocols) != ["cross-source"]:
            raise ValueError(f"{model} holds per-fold models: only cross-source applies to it")
        return _evaluate_folds(
            Path(model),
            folds,
            store,
            rank=cfg.cross_rank,
            plankton_only=True if cfg.plankton_only is None else cfg.plankton_only,
            cache_args=_cache_args(cfg),
            device=cfg.device,
            out=out,
            report=report,
        )
    enc = encoder or load_encoder(model, cfg.device)
    filters = getattr(enc, "filters", {}) or {}
    rank = cfg.rank or filters.get("rank", "deepest")
    plankton_only = cfg.plankton_only
    if plankton_only is None:
        plankton_only = filters.get("plankton_only", True)
    view = dataset_view(store, split, rank=rank, plankton_only=plankton_only, min_per_class=1)
    cache = FeatureCache(store, enc, **_cache_args(cfg))
    if not view.side("test").num_rows:
        raise ValueError(f"split {split!r} has no test images at rank {rank!r}")
    # one pass over every image the protocols need; later calls hit the cache
    sides = ["test", *(["train", "val"] if cfg.needs_train else [])]
    import pyarrow as pa

    cache.features(pa.concat_tables([view.side(s) for s in sides]), progress=progress)
    r = _Run(enc, view, cache, cfg, store)
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name in cfg.protocols:
        outcome = PROTOCOLS[name].run(r)
        if isinstance(outcome, str):
            skipped[name] = outcome
        else:
            results[name] = outcome

    run = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "model": _model_info(enc),
        "store": {"path": str(store.path), "manifest_hash": view.manifest_hash},
        "taxonomy_version": mapping_version(),
        "split": {"scheme": split, "info": view.split_info},
        "rank": rank,
        "filters": view.filters,
        "seeds": list(cfg.seeds),
        "settings": {
            "protocols": list(cfg.protocols),
            "shots": list(cfg.shots),
            "caption_style": cfg.caption_style or enc.caption_style,
            "templates": cfg.templates,
            "zero_shot_classes": cfg.zero_shot_classes,
            "cross_rank": cfg.cross_rank,
            "cross_unit": cfg.cross_unit,
            "batch_size": cfg.batch_size,
            "preprocessing": enc.preprocessing,
            "test_images": int(r.test.num_rows),
            "train_images": int(r.train.num_rows),
        },
        "classes": r.classes,
        "class_lineages": view.class_lineages,
        "protocols": results,
        "skipped": skipped,
        "timing": {
            "seconds": round(time.perf_counter() - started, 3),
            "images_encoded": cache.computed,
        },
    }
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", enc.name)[:60]
        out = store.layout.evaluations / f"{stamp}-{name}-{split}"
    write_results(run, out, report=report)
    return run


def _evaluate_folds(
    directory, folds, store, *, rank, plankton_only, cache_args, device, out, report
):
    """`evaluate` of a directory of per-fold models (cross-source only)."""
    import hashlib

    from planktonzilla._version import __version__
    from planktonzilla.data.splits import split_info
    from planktonzilla.evaluate.features import load_encoder
    from planktonzilla.taxonomy import mapping_version

    started = time.perf_counter()
    prefixes = {name.split("-", 1)[0] + "-" for name in folds}
    if len(prefixes) != 1:
        raise ValueError(f"{directory} mixes loso- and loio- fold models")
    unit = {v: k for k, v in FOLD_PREFIXES.items()}[prefixes.pop()]
    first = load_encoder(next(iter(folds.values())), device)
    block = _cross_source(store, first, None, rank, unit, plankton_only, cache_args, folds)
    identity = hashlib.sha256("".join(f["model_hash"] for f in block["folds"]).encode()).hexdigest()
    run = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": __version__,
        "model": {
            "name": directory.name,
            "spec": str(directory),
            "kind": f"{first.kind} (one per fold)",
            "hash": identity,
            "folds": {name: str(path) for name, path in folds.items()},
        },
        "store": {"path": str(store.path), "manifest_hash": store.manifest_hash()},
        "taxonomy_version": mapping_version(),
        "split": {
            "scheme": "loso" if unit == "source" else "loio",
            "info": {name: split_info(store, name) for name in folds},
        },
        "rank": rank,
        "filters": {"rank": rank, "plankton_only": plankton_only},
        "seeds": [],
        "settings": {"protocols": ["cross-source"], "cross_unit": unit, **cache_args},
        "classes": [],
        "class_lineages": [],
        "protocols": {"cross-source": block},
        "skipped": {},
        "timing": {"seconds": round(time.perf_counter() - started, 3)},
    }
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = store.layout.evaluations / f"{stamp}-{directory.name}-cross-source"
    write_results(run, out, report=report)
    return run


def _model_info(enc) -> dict[str, Any]:
    info = {"name": enc.name, "spec": enc.spec, "kind": enc.kind, "hash": enc.identity}
    config = getattr(getattr(enc, "model", None), "config", None)
    if isinstance(config, dict) and "training" in config:
        t = config["training"]
        # what "same backbone, data and budget" means in a comparison
        info["training"] = {
            k: t.get(k)
            for k in ("backbone", "image_size", "epochs", "steps", "batch_size", "split", "lr")
        }
    return info


FOLD_PREFIXES = {"source": "loso-", "instrument": "loio-"}


def fold_models(path: str | os.PathLike) -> dict[str, Path]:
    """The per-fold model directories of a cross-source run: ``DIR/loso-<source>/`` (or
    ``loio-<instrument>``), each trained on that leave-one-out split (empty when `path` is a
    single model or not a directory)."""
    p = Path(path)
    if not p.is_dir() or (p / "config.json").is_file():
        return {}
    return {
        d.name: d
        for d in sorted(p.iterdir())
        if d.name.startswith(tuple(FOLD_PREFIXES.values())) and (d / "config.json").is_file()
    }


def _cross_source(store, enc, cache, rank, unit, plankton_only, cache_args, models=None):
    """Leave-one-unit-out folds (see `protocols.cross_source`). With `models` (split name →
    model directory trained on that split), each fold's own model predicts and its predicted
    class is read at `rank`: a true transfer to a unit it never saw. Without, a logistic
    probe on `enc`'s frozen features is trained per fold: how far its features transfer."""
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.splits import list_splits, sanitize
    from planktonzilla.evaluate import protocols as P
    from planktonzilla.evaluate.features import FeatureCache, load_encoder

    prefix = FOLD_PREFIXES[unit]
    column = "source" if unit == "source" else "instrument"
    names = sorted(models) if models else [s for s in list_splits(store) if s.startswith(prefix)]
    if len(names) < 2:
        raise ValueError(
            f"cross-source needs the {prefix}* splits: run `pz split --scheme "
            f"{'loso' if unit == 'source' else 'loio'}` first"
        )
    folds, units = [], set()
    for name in names:
        # min_per_class=0: held-out labels the training units never had stay, counted wrong
        fold = dataset_view(store, name, rank=rank, plankton_only=plankton_only, min_per_class=0)
        held = name[len(prefix) :]
        tr, va, te = fold.side("train"), fold.side("val"), fold.side("test")
        if not tr.num_rows or not te.num_rows:
            continue
        parts = {held: te}
        for other in sorted(set(va[column].to_pylist())) if va.num_rows else []:
            key = sanitize(other) if unit == "instrument" else other
            parts[key] = va.filter(np.array([v == other for v in va[column].to_pylist()]))
        if models:
            fold_enc = load_encoder(models[name], enc.device)
            fold_cache = FeatureCache(store, fold_enc, **cache_args)
            at_rank = [(lin.get(rank) or None) for lin in fold_enc.class_lineages]

            def predict(part, fold_enc=fold_enc, fold_cache=fold_cache, at_rank=at_rank):
                logits = fold_enc.head_logits(fold_cache.features(part))
                return [at_rank[i] for i in logits.argmax(1)]

            trained_on = {"model": str(models[name]), "model_hash": fold_enc.identity}
        else:
            x_tr = cache.features(tr)
            y_tr = tr["label_index"].to_numpy(zero_copy_only=False).astype(np.int64)
            mean = x_tr.mean(0)
            probe = P.fit_logistic(P.normalise(x_tr, mean), y_tr) if len(set(y_tr)) > 1 else None

            def predict(part, probe=probe, mean=mean, y_tr=y_tr, classes=fold.classes):
                if probe is None:
                    return [classes[y_tr[0]]] * part.num_rows
                x = P.normalise(cache.features(part), mean)
                return [classes[i] for i in P.probe_scores(probe, x, len(classes)).argmax(1)]

            trained_on = {"n_train": int(tr.num_rows)}
        cells = {
            key: _name_scores(predict(part), part["label"].to_pylist())
            for key, part in parts.items()
        }
        units.update(cells)
        known = set(tr["label"].to_pylist())
        seen = te.filter(np.array([v in known for v in te["label"].to_pylist()]))
        folds.append(
            {
                "held_out": held,
                "train_units": sorted(k for k in parts if k != held),
                "n_train": int(tr.num_rows),
                "classes": len(known),  # labels the fold trained on
                # labels the training units never had cannot be predicted: they count as wrong
                "unseen_test_labels": te.num_rows - seen.num_rows,
                "top1_seen_labels": _name_scores(predict(seen), seen["label"].to_pylist())[0],
                **trained_on,
                "cells": cells,
            }
        )
    block = P.cross_source(folds, sorted(units), rank=rank, unit=unit)
    block["method"] = (
        "each fold's own model (trained on its leave-one-out split), read at the rank"
        if models
        else "logistic-regression probe on frozen features, per leave-one-out fold"
    )
    return block


def _name_scores(predicted: list, truth: list) -> tuple:
    """(top-1, macro F1, n) of predicted names against true names."""
    from planktonzilla.evaluate import metrics

    names = sorted({n for n in truth if n} | {n for n in predicted if n})
    index = {n: i for i, n in enumerate(names)}
    none = len(names)  # a prediction that does not reach the rank
    y = np.array([index[n] for n in truth], dtype=np.int64)
    p = np.array([index.get(n, none) if n else none for n in predicted], dtype=np.int64)
    if not len(y):
        return (None, None, 0)
    scores = metrics.per_class_scores(y, p, none + 1)
    # macro F1 over the names seen in truth or prediction ("no name at this rank" excluded)
    seen = np.union1d(y, p[p != none]).astype(np.int64)
    return (float(np.mean(y == p)), float(scores["f1"][seen].mean()), int(len(y)))


def write_results(run: dict | list, out: str | os.PathLike, *, report: bool = True) -> Path:
    """``results.json`` (by atomic rename) and, unless ``report=False``, the Markdown / HTML
    report with its plots, into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(run, indent=1, default=_json_default, allow_nan=False)
    atomic_write(out / "results.json", text)
    if report:
        from planktonzilla.evaluate.report import write_report

        write_report(run, out)
    return out / "results.json"


def _json_default(value):
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def compare(
    models: Sequence[str | os.PathLike],
    store,
    split: str,
    *,
    protocols: Sequence[str] = ("supervised", "zero-shot", "few-shot", "linear-probe"),
    out: str | os.PathLike | None = None,
    **options,
) -> list[dict[str, Any]]:
    """The paper's table: every model evaluated with `protocols` on the same split, rank and
    seeds (protocols that do not apply to a model are skipped for it), one results.json per
    model and one merged report in `out`."""
    from planktonzilla.store import ObjectStore

    store = store if isinstance(store, ObjectStore) else ObjectStore(store)
    if out is None:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        out = store.layout.evaluations / f"{stamp}-compare-{split}"
    out = Path(out)
    runs: list[dict[str, Any]] = []
    for i, model in enumerate(models):
        if runs and "rank" not in options:  # one label space for every model
            options["rank"] = runs[0]["rank"]
        runs.append(
            evaluate(
                model,
                store,
                split,
                protocols=protocols,
                out=out / "runs" / f"{i:02d}",
                report=False,
                **options,
            )
        )
    from planktonzilla.evaluate.report import write_report

    write_report(runs, out)
    return runs
