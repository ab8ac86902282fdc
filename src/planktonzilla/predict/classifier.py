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

from planktonzilla.dataset import RANKS

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
    """Class → ancestor matrices per rank, for summing probabilities up the lineage."""

    def __init__(self, class_lineages: Sequence[dict[str, Any]]):
        self.class_lineages = list(class_lineages)
        self.root_classes = [root_class_of(lin) for lin in self.class_lineages]
        self.living = np.array([rc == "living" for rc in self.root_classes])
        self.names: dict[str, list[str]] = {}
        self.members: dict[str, np.ndarray] = {}  # rank -> [C, n_names] 0/1
        for rank in RANKS:
            values = [lin.get(rank) or None for lin in self.class_lineages]
            names = sorted({v for v in values if v})
            index = {n: i for i, n in enumerate(names)}
            m = np.zeros((len(values), len(names)), dtype=np.float64)
            for c, v in enumerate(values):
                if v:
                    m[c, index[v]] = 1.0
            self.names[rank], self.members[rank] = names, m
        # parent of each name at rank r (name at r-1), for walking down one path
        self.parent: dict[str, dict[str, str | None]] = {}
        for depth, rank in enumerate(RANKS):
            up = RANKS[depth - 1] if depth else None
            self.parent[rank] = {
                lin[rank]: (lin.get(up) if up else None)
                for lin in self.class_lineages
                if lin.get(rank)
            }

    def aggregate(self, probs: np.ndarray) -> dict[str, np.ndarray]:
        """Per rank, ``[B, n_names]`` summed class probabilities."""
        return {rank: probs @ m for rank, m in self.members.items()}

    def confident_path(
        self, probs: np.ndarray, thresholds: dict[str, float]
    ) -> list[tuple[list[tuple[str, str, float]], int]]:
        """Per image: the greedy top-down path [(rank, name, mass)] and how many of its steps
        clear their thresholds."""
        sums = self.aggregate(probs)
        out = []
        for b in range(probs.shape[0]):
            path: list[tuple[str, str, float]] = []
            parent: str | None = None
            for depth, rank in enumerate(RANKS):
                names = self.names[rank]
                if not names:
                    break
                mass = sums[rank][b]
                allowed = [
                    i
                    for i, n in enumerate(names)
                    if depth == 0 or self.parent[rank].get(n) == parent
                ]
                if not allowed:
                    break
                best = max(allowed, key=lambda i: (mass[i], -i))
                if mass[best] <= 0:
                    break
                parent = names[best]
                path.append((rank, parent, float(mass[best])))
            confident = 0
            for rank, _, mass in path:
                if mass >= thresholds.get(rank, DEFAULT_RANK_THRESHOLD):
                    confident += 1
                else:
                    break
            out.append((path, confident))
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
    ):
        import torch

        self.model = model.eval()
        self.directory = None if directory is None else Path(directory)
        self.kind: str = model.kind
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
        self._text: torch.Tensor | None = None
        if self.kind == "clip" and (self._keep is not None or extra_classes):
            self._text = self._caption_features(self.class_lineages)

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        directory: str | os.PathLike,
        *,
        device: str = "cpu",
        labels: Sequence[str] | None = None,
    ) -> Classifier:
        """A classifier from a model directory (`save_model`), with its calibrated
        thresholds when the directory has them; `labels` restricts the label list."""
        from planktonzilla.models import load_model

        directory = Path(directory)
        model = load_model(directory, device=device)
        clf = cls(model, directory=directory, thresholds=read_calibration(directory))
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
        workers: int = 2,
    ) -> Iterator[Prediction]:
        """Lazy `predict`: constant memory on any number of images. Decoding runs in
        `workers` threads one batch ahead of the model."""
        if top_k < 1:
            raise ValueError("top_k must be >= 1")
        size = self.image_size
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending: list | None = None  # the previous batch decodes while the model runs
            for chunk in _chunks(images, batch_size):
                futures = [pool.submit(_prepare, item, size) for item in chunk]
                if pending is not None:
                    yield from self._finish([f.result() for f in pending], top_k)
                pending = futures
            if pending is not None:
                yield from self._finish([f.result() for f in pending], top_k)

    def _finish(self, prepared: list, top_k: int) -> list[Prediction]:
        good = [i for i, (array, _) in enumerate(prepared) if array is not None]
        out = [Prediction(error=err) for _, err in prepared]
        if good:
            batch = np.stack([prepared[i][0] for i in good])
            probs, energy = self.probabilities_of_uint8(batch)
            for i, p in zip(good, self._predictions(probs, energy, top_k), strict=True):
                out[i] = p
        return out

    def logits(self, images):
        """Class logits ``[B, C]`` (torch, float32) of a uint8 ``[B, 3, S, S]`` batch over
        the current label list."""
        import torch

        with torch.inference_mode():
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
        k = min(top_k, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        paths = self.tree.confident_path(probs, self.thresholds["rank"])
        living_p = probs[:, self.tree.living].sum(1) if self.tree.living.any() else None
        ood_t = self.thresholds.get("ood")
        out = []
        for b, (path, confident) in enumerate(paths):
            top = [(self.classes[c], float(probs[b, c])) for c in order[b]]
            lin = self.class_lineages[order[b, 0]]
            p = Prediction(
                top=top,
                lineage={r: lin.get(r) or None for r in RANKS},
                ood_score=float(energy[b]),
                ood=None if ood_t is None else bool(energy[b] > ood_t),
            )
            p.living_probability = 0.0 if living_p is None else float(living_p[b])
            p.living = p.living_probability >= 0.5
            if p.living and confident:
                p.confident_rank, p.confident_name, p.confident_probability = path[confident - 1]
            elif not p.living:
                dead = np.where(~self.tree.living)[0]
                best = dead[np.argmax(probs[b, dead])]
                if probs[b, best] >= self.thresholds["rank"]["kingdom"]:
                    p.confident_name = self.classes[best]
                    p.confident_probability = float(probs[b, best])
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
    device: str = "cpu",
) -> dict[str, Any]:
    """Calibrate a model directory's thresholds on `side` of `split` (the model's own label
    space): rank thresholds at `target_precision`, the OOD threshold at the (1 - ood_fpr)
    quantile of the energy scores. Writes ``calibration.json`` and returns it."""
    from planktonzilla.dataset import dataset_view
    from planktonzilla.train.data import make_loader

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
        store, table, batch_size=batch_size, image_size=clf.image_size, train=False
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
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(thresholds, indent=1))
    os.replace(tmp, path)
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


def _prepare(item: ImageInput, size: int) -> tuple[np.ndarray | None, str | None]:
    """(uint8 [S, S, 3] or None, "reason: message" or None) for one input."""
    from PIL import Image

    from planktonzilla.images import MAX_BYTES, MAX_PIXELS, ImageRejected
    from planktonzilla.train.data import preprocess

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
        return preprocess(data, size), None
    except ImageRejected as exc:
        return None, f"{exc.reason}: {exc.message}"
    except Exception as exc:  # noqa: BLE001 - any decoder failure is this image's error
        reason = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        return None, f"{reason}: {exc}"


def _check_header(data: bytes, max_bytes: int, max_pixels: int) -> None:
    """Cheap checks before decoding: empty, too large, not an image, too many pixels."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    from planktonzilla.images import _MAGIC, ImageRejected

    if not data:
        raise ImageRejected("empty", "zero-byte file")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data):,} bytes is over the {max_bytes:,} limit")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        if data.startswith(_MAGIC):  # starts like an image we accept, does not open
            raise ImageRejected("corrupt", "not decodable as an image") from None
        raise ImageRejected("unsupported_format", "not an image") from None
    if w * h > max_pixels:
        raise ImageRejected(
            "decompression_bomb", f"{w}x{h} = {w * h:,} pixels is over the {max_pixels:,} limit"
        )
