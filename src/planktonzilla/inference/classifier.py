"""Lineage-aware prediction with a trained model directory.

    clf = Classifier.load("models/supervised")
    for p in clf.predict(["a.png", "b.jpg"], top_k=3):
        print(p.label, p.probability, p.confident_rank, p.confident_name, p.ood)

Abstention. Class probabilities are summed up the taxonomy (a genus gets the mass of its
species…). From the kingdom down, the path follows the child with the most mass; the answer
is the deepest rank on that path whose mass clears that rank's threshold — an uncertain image
says "Copepoda" rather than a confident wrong species. Mass only shrinks going down a path,
so the confident ranks are always a prefix of it.

Non-living classes (detritus, bubbles, artefacts) sit outside the lineage tree: an image
whose living mass is below one half is called non-living, and its confident name is the
top non-living class when that class clears the kingdom threshold (`confident_rank` is
None then: a category is not a rank).

Out-of-distribution score: the energy of the logits, ``-logsumexp(logits)`` (Liu et al.
2020; higher = less like the training data), flagged above the threshold calibrated on the
validation side (its 95th percentile: 5 % of in-distribution images are flagged).

Thresholds live in the model directory (``calibration.json``, `calibrate`); without one,
every rank uses `DEFAULT_RANK_THRESHOLD` and nothing is flagged OOD.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planktonzilla.data.dataset import RANKS
from planktonzilla.fileio import atomic_write

CALIBRATION = "calibration.json"
DEFAULT_RANK_THRESHOLD = 0.5
#: Precision asked of confident calls at each rank when calibrating.
DEFAULT_TARGET_PRECISION = 0.9
#: Fraction of in-distribution (validation) images allowed above the OOD threshold.
DEFAULT_OOD_FPR = 0.05
NON_LIVING = ("detritus", "artefact", "inert")


@dataclass
class Prediction:
    """One image's prediction (see the module docstring for the fields' meaning)."""

    top: list[tuple[str, float]] = field(default_factory=list)
    lineage: dict[str, str | None] = field(default_factory=dict)
    confident_rank: str | None = None
    confident_name: str | None = None
    confident_probability: float | None = None
    living: bool | None = None
    living_probability: float | None = None
    ood_score: float | None = None
    ood: bool | None = None
    error: str | None = None

    @property
    def label(self) -> str | None:
        return self.top[0][0] if self.top else None

    @property
    def probability(self) -> float | None:
        return self.top[0][1] if self.top else None

    def to_row(self, top_k: int) -> dict[str, Any]:
        """A flat JSON-able dict (CSV / Parquet / web columns)."""
        row: dict[str, Any] = {"label": self.label, "probability": self.probability}
        for i in range(top_k):
            label, prob = self.top[i] if i < len(self.top) else (None, None)
            row[f"top{i + 1}_label"] = label
            row[f"top{i + 1}_probability"] = prob
        for rank in RANKS:
            row[rank] = self.lineage.get(rank)
        row.update(
            confident_rank=self.confident_rank,
            confident_name=self.confident_name,
            confident_probability=self.confident_probability,
            living=self.living,
            living_probability=self.living_probability,
            ood_score=self.ood_score,
            ood=self.ood,
            error=self.error,
        )
        return row


ImageInput = bytes | bytearray | str | os.PathLike | Callable[[], bytes] | Any  # Any: PIL image


def root_class_of(lineage: dict[str, Any]) -> str:
    """living | detritus | artefact | inert for a class lineage dict (older model directories
    do not store it: a class with a kingdom is living, otherwise the taxonomy decides)."""
    if lineage.get("root_class"):
        return lineage["root_class"]
    if lineage.get("kingdom"):
        return "living"
    from planktonzilla.taxonomy import resolve_label

    resolved = resolve_label(str(lineage.get("name") or ""))
    return resolved.lineage.root_class if resolved.lineage is not None else "living"


class TaxonomyTree:
    """Which classes sit under each taxon of each rank, for summing class probabilities up
    the lineage, and each taxon's parent, for walking down one path."""

    def __init__(self, class_lineages: Sequence[dict[str, Any]]):
        self.class_lineages = list(class_lineages)
        self.root_classes = [root_class_of(lin) for lin in self.class_lineages]
        self.living = np.array([rc == "living" for rc in self.root_classes])
        self.names: dict[str, list[str]] = {}
        # Membership as (classes sorted by taxon, first class of each taxon), so that sums are
        # np.add.reduceat, not a BLAS product: BLAS threads that wake up beside the model's
        # own threads and the decoding threads cost tens of ms a batch.
        self._order: dict[str, np.ndarray] = {}
        self._starts: dict[str, np.ndarray] = {}
        for rank in RANKS:
            values = [lin.get(rank) or None for lin in self.class_lineages]
            names = sorted({v for v in values if v})
            index = {n: i for i, n in enumerate(names)}
            self.names[rank] = names
            of = np.array([index[v] if v else -1 for v in values], dtype=np.int64)
            order = np.argsort(of, kind="stable")
            order = order[of[order] >= 0]
            self._order[rank] = order
            self._starts[rank] = np.searchsorted(of[order], np.arange(len(names)))
        # index of each name's parent (its name at the rank above), -1 for none
        self._parent_index: dict[str, np.ndarray] = {}
        for depth, rank in enumerate(RANKS):
            up = RANKS[depth - 1] if depth else None
            parent = {
                lin[rank]: (lin.get(up) if up else None)
                for lin in self.class_lineages
                if lin.get(rank)
            }
            above = {n: i for i, n in enumerate(self.names[up])} if up else {}
            self._parent_index[rank] = np.array(
                [above.get(parent[n], -1) for n in self.names[rank]], dtype=np.int64
            )

    def aggregate(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Per rank, ``[B, n_names]`` summed class probabilities."""
        probs = np.asarray(probs, dtype=np.float64)
        out = {}
        for rank, order in self._order.items():
            if len(order):
                out[rank] = np.add.reduceat(probs[:, order], self._starts[rank], axis=1)
            else:
                out[rank] = np.zeros((probs.shape[0], 0))
        return out

    def confident_path(
        self, probs: np.ndarray, thresholds: dict[str, float]
    ) -> list[tuple[list[tuple[str, str, float]], int]]:
        """Per image: the greedy top-down path [(rank, name, mass)] and how many of its steps
        clear their thresholds. From the kingdom down, the path takes the child of the name
        chosen above with the most mass (the first name on ties) and stops where no child
        has any mass."""
        sums = self.aggregate(probs)
        n = probs.shape[0]
        rows = np.arange(n)
        chosen = np.full(n, -1, dtype=np.int64)  # name index at the rank above
        on = np.ones(n, dtype=bool)  # the path has reached this rank
        confident = np.zeros(n, dtype=np.int64)
        clear = np.ones(n, dtype=bool)  # every step so far cleared its threshold
        steps: list[tuple[str, list[str], list[int], list[float]]] = []
        length = np.zeros(n, dtype=np.int64)
        for depth, rank in enumerate(RANKS):
            names = self.names[rank]
            if not names:
                break
            mass = sums[rank]
            if depth:
                mass = np.where(self._parent_index[rank][None, :] == chosen[:, None], mass, -1.0)
            best = mass.argmax(axis=1)
            top = mass[rows, best]
            on &= top > 0
            if not on.any():
                break
            chosen = np.where(on, best, -1)
            length += on
            clear &= on & (top >= thresholds.get(rank, DEFAULT_RANK_THRESHOLD))
            confident += clear
            steps.append((rank, names, best.tolist(), top.tolist()))
        out = []
        for b, k in enumerate(length.tolist()):
            path = [(rank, names[best[b]], top[b]) for rank, names, best, top in steps[:k]]
            out.append((path, int(confident[b])))
        return out


class Classifier:
    """A model directory ready to classify images (see the module docstring)."""

    def __init__(
        self,
        model,
        *,
        directory: str | os.PathLike | None = None,
        thresholds: dict[str, Any] | None = None,
        keep: Sequence[int] | None = None,
        extra_classes: Sequence[dict[str, Any]] = (),
        dtype=None,
    ):
        import torch

        self.model = model.eval()
        #: torch dtype the model runs in under autocast (e.g. torch.bfloat16 on a GPU);
        #: None: the weights' own dtype (float32).
        self.dtype = dtype
        self.directory = None if directory is None else Path(directory)
        self.kind: str = model.kind
        self.preprocess = model.preprocess
        self.image_size: int = model.image_size
        self.device = next(iter(model.buffers())).device
        lineages = [dict(lin) for lin in model.config["class_lineages"]]
        self._keep = None if keep is None else list(keep)
        chosen = lineages if self._keep is None else [lineages[i] for i in self._keep]
        self.class_lineages: list[dict[str, Any]] = [*chosen, *map(dict, extra_classes)]
        for lin in self.class_lineages:
            lin.setdefault("root_class", root_class_of(lin))
        self.classes: list[str] = [str(lin["name"]) for lin in self.class_lineages]
        self.thresholds = _complete_thresholds(thresholds)
        self.tree = TaxonomyTree(self.class_lineages)
        self._lineage_rows = [{r: lin.get(r) or None for r in RANKS} for lin in self.class_lineages]
        self._text: torch.Tensor | None = None
        if self.kind == "clip" and (self._keep is not None or extra_classes):
            self._text = self._caption_features(self.class_lineages)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str = "auto",
        labels: Sequence[str] | None = None,
        dtype=None,
    ) -> Classifier:
        """A classifier from a model directory (`save_model`), with its calibrated
        thresholds when the directory has them; `labels` restricts the label list; `dtype`
        (e.g. torch.bfloat16) runs the model under autocast in that dtype."""
        from planktonzilla.models import load_model

        directory = Path(directory)
        model = load_model(directory, device=device)
        clf = cls(model, directory=directory, thresholds=read_calibration(directory), dtype=dtype)
        return clf.restrict(labels) if labels else clf

    def restrict(self, labels: Sequence[str]) -> Classifier:
        """Predict over `labels` only. A label that names one of the classes keeps it; a
        label naming a higher taxon (e.g. a phylum) keeps every class under it. A CLIP-style
        model also accepts any other taxon name the taxonomy resolves (its caption becomes a
        new candidate); a supervised model cannot learn new classes. Probabilities are
        renormalised over the kept classes.

        >>> clf.restrict(["Copepoda", "Chaetognatha"])  # every copepod class + chaetognaths
        """
        base = self.model.config["class_lineages"]
        by_name = {str(lin["name"]).lower(): i for i, lin in enumerate(base)}
        keep: list[int] = []
        extra: list[dict[str, Any]] = []
        unknown: list[str] = []
        for label in labels:
            key = label.strip().lower()
            if key in by_name:
                keep.append(by_name[key])
                continue
            under = [
                i
                for i, lin in enumerate(base)
                if any(str(lin.get(r) or "").lower() == key for r in RANKS)
            ]
            if under:
                keep.extend(under)
            elif self.kind == "clip":
                lineage = _resolve_taxon(label)
                if lineage is None:
                    unknown.append(label)
                else:
                    extra.append(lineage)
            else:
                unknown.append(label)
        if unknown:
            hint = (
                "names the taxonomy cannot resolve"
                if self.kind == "clip"
                else "neither classes of this supervised model nor taxa above them"
            )
            raise ValueError(f"{hint}: {', '.join(unknown)}")
        keep = sorted(set(keep))
        if not keep and not extra:
            raise ValueError("restricting to an empty label list")
        return Classifier(
            self.model,
            directory=self.directory,
            thresholds=self.thresholds,
            keep=keep,
            extra_classes=extra,
            dtype=self.dtype,
        )

    # ------------------------------------------------------------------ prediction
    def predict(
        self, images: Iterable[ImageInput], *, top_k: int = 5, batch_size: int = 64
    ) -> list[Prediction]:
        """Predictions for `images` (bytes, paths, PIL images or callables returning bytes),
        in order. A bad image gets a Prediction with `error` set; nothing raises for it."""
        return list(self.predict_iter(images, top_k=top_k, batch_size=batch_size))

    def predict_iter(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int = 5,
        batch_size: int = 64,
        workers: int | None = None,
    ) -> Iterator[Prediction]:
        """Lazy `predict`: constant memory on any number of images. Reading and decoding
        run in `workers` threads (default: one per CPU core, 2 to 8) one batch ahead of the
        model; Pillow and NumPy release the GIL for much of that work."""
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        workers = max(1, workers) if workers else min(8, max(2, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            pending = None  # the next batch decodes while the model runs on this one
            for chunk in _chunks(images, batch_size):
                ahead = _DecodedBatch(chunk, self.preprocess, pool, workers)
                if pending is not None:
                    yield from self._finish(*pending.result(), top_k)
                pending = ahead
            if pending is not None:
                yield from self._finish(*pending.result(), top_k)

    def _finish(self, batch: np.ndarray, errors: list[str | None], top_k: int) -> list[Prediction]:
        """Predictions for a decoded batch (uint8 ``[B, 3, S, S]``; rows whose `errors`
        entry is set hold no image)."""
        good = [i for i, err in enumerate(errors) if err is None]
        if len(good) == len(errors):
            return self._predictions(*self.probabilities_of_uint8(batch), top_k)
        out = [Prediction(error=err) for err in errors]
        if good:
            probs, energy = self.probabilities_of_uint8(batch[good])
            for i, p in zip(good, self._predictions(probs, energy, top_k), strict=True):
                out[i] = p
        return out

    def logits(self, images):
        """Class logits ``[B, C]`` (torch, float32) of a uint8 ``[B, 3, S, S]`` batch over
        the current label list."""
        import torch

        autocast = torch.autocast(self.device.type, self.dtype, enabled=self.dtype is not None)
        with torch.inference_mode(), autocast:
            x = self.model.normalize(torch.as_tensor(images).to(self.device))
            if self.kind == "clip" and self._text is not None:
                image = self.model.encode_image(x)
                scale = self.model.clip.logit_scale.exp()
                return (scale * image @ self._text.to(image.dtype).T).float()
            logits = self.model(x).float()
            return logits if self._keep is None else logits[:, self._keep]

    def probabilities_of_uint8(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(class probabilities ``[B, C]``, energy OOD scores ``[B]``) of uint8
        ``[B, S, S, 3]`` (or ``[B, 3, S, S]``) images."""
        import torch

        if batch.ndim == 4 and batch.shape[-1] == 3:
            batch = batch.transpose(0, 3, 1, 2)
        logits = self.logits(np.ascontiguousarray(batch))
        energy = -torch.logsumexp(logits, dim=-1)
        return logits.softmax(-1).cpu().numpy().astype(np.float64), energy.cpu().numpy()

    def _predictions(self, probs: np.ndarray, energy: np.ndarray, top_k: int) -> list[Prediction]:
        # Array work for the whole batch first; the loop only assembles Python objects.
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        top_p = np.take_along_axis(probs, order, axis=1).tolist()
        paths = self.tree.confident_path(probs, self.thresholds["rank"])
        living = self.tree.living
        living_p = probs[:, living].sum(1).tolist() if living.any() else [0.0] * len(probs)
        dead = np.flatnonzero(~living)
        if len(dead):
            dead_best = dead[probs[:, dead].argmax(axis=1)]
            dead_p = probs[np.arange(len(probs)), dead_best].tolist()
            dead_best = dead_best.tolist()
        ood_t = self.thresholds.get("ood")
        kingdom_t = self.thresholds["rank"]["kingdom"]
        classes, lineage_of = self.classes, self._lineage_rows
        out = []
        for b, ((path, confident), top, e, alive) in enumerate(
            zip(paths, order.tolist(), energy.tolist(), living_p, strict=True)
        ):
            p = Prediction(
                top=[(classes[c], q) for c, q in zip(top, top_p[b], strict=True)],
                lineage=dict(lineage_of[top[0]]),
                ood_score=e,
                ood=None if ood_t is None else e > ood_t,
                living=alive >= 0.5,
                living_probability=alive,
            )
            if p.living and confident:
                p.confident_rank, p.confident_name, p.confident_probability = path[confident - 1]
            elif not p.living and len(dead) and dead_p[b] >= kingdom_t:
                p.confident_name = classes[dead_best[b]]
                p.confident_probability = dead_p[b]
            out.append(p)
        return out

    def _caption_features(self, lineages: Sequence[dict[str, Any]]):
        import torch

        from planktonzilla.models.clip import caption

        style = self.model.config.get("caption_style", "lineage")
        texts = [
            caption({k: v for k, v in lin.items() if k in (*RANKS, "name", "rank")}, style)
            for lin in lineages
        ]
        with torch.inference_mode():
            return self.model.encode_text(self.model.tokenize(texts).to(self.device)).float()


# ---------------------------------------------------------------------- calibration
def read_calibration(directory: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(directory) / CALIBRATION
    return json.loads(path.read_text()) if path.is_file() else None


def _complete_thresholds(thresholds: dict[str, Any] | None) -> dict[str, Any]:
    thresholds = dict(thresholds or {})
    ranks = {r: DEFAULT_RANK_THRESHOLD for r in RANKS}
    ranks.update({r: float(v) for r, v in (thresholds.get("rank") or {}).items()})
    return {**thresholds, "rank": ranks, "ood": thresholds.get("ood")}


def rank_thresholds(
    masses: dict[str, np.ndarray],
    correct: dict[str, np.ndarray],
    target: float = DEFAULT_TARGET_PRECISION,
) -> dict[str, float]:
    """Per rank, the smallest threshold t such that confident calls (mass >= t) on the
    validation images are right at least `target` of the time; 1.0 when no t achieves it
    (that rank is then only reported at certainty)."""
    out = {}
    for rank in RANKS:
        m, ok = masses.get(rank), correct.get(rank)
        if m is None or not len(m):
            out[rank] = DEFAULT_RANK_THRESHOLD
            continue
        order = np.argsort(-m, kind="stable")
        m, ok = m[order], ok[order].astype(np.float64)
        precision = np.cumsum(ok) / np.arange(1, len(ok) + 1)
        # keeping the top i images means threshold m[i-1]; ties share one threshold
        last_of_tie = np.r_[m[1:] != m[:-1], True]
        good = np.where((precision >= target) & last_of_tie)[0]
        out[rank] = float(m[good.max()]) if len(good) else 1.0
    return out


def calibrate(
    directory: str | os.PathLike,
    store,
    split: str,
    *,
    side: str = "val",
    target_precision: float = DEFAULT_TARGET_PRECISION,
    ood_fpr: float = DEFAULT_OOD_FPR,
    batch_size: int = 128,
    device: str = "auto",
) -> dict[str, Any]:
    """Calibrate a model directory's thresholds on `side` of `split` (the model's own label
    space): rank thresholds at `target_precision`, the OOD threshold at the (1 - ood_fpr)
    quantile of the energy scores. Writes ``calibration.json`` and returns it."""
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.loader import make_loader

    clf = Classifier.load(directory, device=device)
    config = clf.model.config
    filters = config.get("filters") or {}
    view = dataset_view(
        store,
        split,
        rank=filters.get("rank", "deepest"),
        plankton_only=filters.get("plankton_only", True),
        living_only=filters.get("living_only", False),
        min_per_class=0,
    )
    table = view.side(side)
    index = {c: i for i, c in enumerate(clf.classes)}
    truth = [index.get(c) for c in table["label"].to_pylist()]
    keep = [i for i, t in enumerate(truth) if t is not None]
    if not keep:
        raise ValueError(f"no {side} images of split {split!r} belong to the model's classes")
    table = table.take(keep)
    truth_lineages = [{r: row[r] for r in RANKS} for row in table.select(list(RANKS)).to_pylist()]
    loader = make_loader(
        store, table, batch_size=batch_size, preprocess=clf.preprocess, train=False
    )
    probs, energy = [], []
    for images, _ in loader:
        p, e = clf.probabilities_of_uint8(images.numpy())
        probs.append(p)
        energy.append(e)
    probs_all, energy_all = np.concatenate(probs), np.concatenate(energy)
    masses: dict[str, list[float]] = {r: [] for r in RANKS}
    correct: dict[str, list[bool]] = {r: [] for r in RANKS}
    paths = clf.tree.confident_path(probs_all, {r: math.inf for r in RANKS})
    for (path, _), truth_lin in zip(paths, truth_lineages, strict=True):
        for rank, name, mass in path:
            if truth_lin.get(rank):
                masses[rank].append(mass)
                correct[rank].append(name == truth_lin[rank])
    thresholds = {
        "rank": rank_thresholds(
            {r: np.array(v) for r, v in masses.items()},
            {r: np.array(v, dtype=bool) for r, v in correct.items()},
            target_precision,
        ),
        "ood": float(np.quantile(energy_all, 1.0 - ood_fpr)),
        "ood_score": "energy = -logsumexp(logits)",
        "target_precision": target_precision,
        "ood_fpr": ood_fpr,
        "calibrated_on": {
            "split": split,
            "side": side,
            "images": int(len(energy_all)),
            "store_manifest_hash": view.manifest_hash,
        },
    }
    path = Path(directory) / CALIBRATION
    atomic_write(path, json.dumps(thresholds, indent=1))
    return thresholds


# ---------------------------------------------------------------------- helpers
def _resolve_taxon(name: str) -> dict[str, Any] | None:
    """A lineage dict for any taxon name the taxonomy resolves (for CLIP captions)."""
    from planktonzilla.taxonomy import resolve_label

    resolved = resolve_label(name)
    lin = resolved.lineage
    if lin is None or not (lin.name or lin.kingdom):
        return None
    d = lin.to_dict()
    return {
        **{r: d.get(r) or None for r in RANKS},
        "name": d.get("name") or name,
        "rank": d.get("rank"),
        "root_class": d.get("root_class"),
    }


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class _DecodedBatch:
    """A batch being read and decoded by a thread pool straight into one uint8
    ``[B, 3, S, S]`` array (the model's layout: no stacking or transposing copy later), a
    few contiguous slices per task rather than one future per image."""

    def __init__(self, items: list, cfg, pool: ThreadPoolExecutor, workers: int):
        size = cfg.size
        self.array = np.empty((len(items), 3, size, size), dtype=np.uint8)
        self.errors: list[str | None] = [None] * len(items)
        step = max(1, -(-len(items) // (2 * workers)))  # two slices a worker: even finish
        self.futures = [
            pool.submit(self._decode, items, start, min(start + step, len(items)), cfg)
            for start in range(0, len(items), step)
        ]

    def _decode(self, items: list, start: int, stop: int, cfg) -> None:
        for i in range(start, stop):
            array, self.errors[i] = _prepare(items[i], cfg)
            if array is not None:
                self.array[i] = array.transpose(2, 0, 1)

    def result(self) -> tuple[np.ndarray, list[str | None]]:
        for f in self.futures:
            f.result()
        return self.array, self.errors


def _prepare(item: ImageInput, cfg) -> tuple[np.ndarray | None, str | None]:
    """(uint8 [S, S, 3] or None, "reason: message" or None) for one input."""
    from PIL import Image

    from planktonzilla.images import MAX_BYTES, MAX_PIXELS, ImageRejected

    try:
        if isinstance(item, Image.Image):
            buf = io.BytesIO()
            item.save(buf, format="PNG")
            data = buf.getvalue()
        elif isinstance(item, bytes | bytearray | memoryview):
            data = bytes(item)
        elif isinstance(item, str | os.PathLike):
            data = Path(item).read_bytes()
        elif callable(item):
            data = item()
        else:
            return None, f"unsupported_input: cannot read a {type(item).__name__}"
    except OSError as exc:
        return None, f"unreadable: {exc}"
    try:
        _check_header(data, MAX_BYTES, MAX_PIXELS)
        return cfg(data), None
    except ImageRejected as exc:
        return None, f"{exc.reason}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's error
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        return None, f"{reason}: {exc}"


def _check_header(data: bytes, max_bytes: int, max_pixels: int) -> None:
    """Cheap checks before decoding: empty, too large, not an image, too many pixels."""
    from planktonzilla.images import ImageRejected

    if not data:
        raise ImageRejected("empty", "zero-byte file")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data):,} bytes is over the {max_bytes:,} limit")
    size = _header_size(data)
    if size is not None:
        w, h = size
    else:
        w, h = _opened_size(data)
    if w * h > max_pixels:
        raise ImageRejected(
            "decompression_bomb", f"{w}x{h} = {w * h:,} pixels is over the {max_pixels:,} limit"
        )


_SOF = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read straight from a PNG's IHDR or a JPEG's frame header, so that
    Pillow parses the image once (in `preprocess`), not twice; None for any other format or
    anything unusual, which Pillow identifies."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return (w, h) if w and h else None
    if not data.startswith(b"\xff\xd8"):
        return None
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
        elif marker in _SOF:
            if i + 9 > n:
                return None
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return (w, h) if w and h else None
        elif marker in (0xD8, 0xD9, 0xDA):  # a second start, the end, or scan data first
            return None
        else:
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _opened_size(data: bytes) -> tuple[int, int]:
    """(width, height) as Pillow identifies the image; ImageRejected when it cannot."""
    from planktonzilla.images import open_image

    with open_image(data) as im:
        return im.size
