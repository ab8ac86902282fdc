"""Batch prediction into a file: inputs → `Classifier.predict_iter` → a resumable writer, in
constant memory whatever the number of inputs.

Every input is accounted for: read = predicted + rejected (readers' rejections and images
that do not decode), plus `skipped` for the inputs an earlier run already wrote (resume).

>>> from planktonzilla.predict import Classifier
>>> clf = Classifier.load("models/supervised")                          # doctest: +SKIP
>>> report = predict_to_file(clf, ["D20240601/"], "day.tsv")           # doctest: +SKIP
>>> print(report.summary())                                            # doctest: +SKIP
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planktonzilla.images import MAX_BYTES
from planktonzilla.inference.writers import (
    open_writer,
    output_format,
    prediction_rows,
    rejection_row,
)
from planktonzilla.readers.detect import read_inputs
from planktonzilla.records import Record, Rejection

__all__ = ["PredictReport", "predict_to_file"]

Inputs = str | os.PathLike | Iterable[str | os.PathLike] | Iterable[Record | Rejection]


@dataclass
class PredictReport:
    """What one `predict_to_file` run did. `read` counts the inputs this run looked at;
    those an earlier run wrote are `skipped`."""

    out: Path
    format: str
    read: int = 0
    predicted: int = 0
    rejected: int = 0
    skipped: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return self.read == self.predicted + self.rejected

    def summary(self) -> str:
        lines = [
            f"{self.out} ({self.format}): read {self.read:,} = predicted {self.predicted:,}"
            f" + rejected {self.rejected:,}"
            + (f"  (already done: {self.skipped:,})" if self.skipped else "")
        ]
        lines += [f"  rejected {n:,} x {reason}" for reason, n in self.reasons.most_common()]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out),
            "format": self.format,
            "read": self.read,
            "predicted": self.predicted,
            "rejected": self.rejected,
            "skipped": self.skipped,
            "reasons": dict(self.reasons),
        }


def _items(inputs: Inputs, where: str | None) -> Iterator[Record | Rejection]:
    """Paths go to `read_inputs` together (so origins get their input prefix when there are
    several); records and rejections pass through."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    if isinstance(inputs, list | tuple) and all(isinstance(i, str | os.PathLike) for i in inputs):
        yield from read_inputs(inputs, where=where)
        return
    for item in inputs:
        if isinstance(item, Record | Rejection):
            yield item
        else:
            yield from read_inputs([item], where=where)


def predict_to_file(
    classifier,
    inputs: Inputs,
    out: str | os.PathLike,
    *,
    fmt: str | None = None,
    top_k: int = 5,
    batch_size: int = 64,
    resume: bool = True,
    progress: bool = False,
    category: str = "label",
    limit: int | None = None,
    where: str | None = None,
) -> PredictReport:
    """Classify every image of `inputs` (paths `read_inputs` understands, or records) into
    `out` (format `fmt`, else from the suffix; see `planktonzilla.inference.writers`).

    Streams: batches of records go through `classifier.predict_iter` to the writer as they
    come. With `resume` (default), the inputs already in `out` are skipped and the rest
    appended; `limit` stops after that many new inputs (a trial run; the next run resumes).
    `category`: "label" or "confident", what EcoTaxa outputs file each object under.
    `where`: SQL condition on store inputs. An interrupted run (exception) keeps every
    complete row written so far."""
    out = Path(out)
    fmt = output_format(out, fmt)
    report = PredictReport(out, fmt)
    writer = open_writer(out, fmt, top_k=top_k, resume=resume, category=category)
    queue: deque[Record | Rejection] = deque()  # in input order, awaiting their prediction

    def images() -> Iterator[Any]:
        """The image of each new record, for the classifier; rejections wait in the queue
        so rows keep the input order."""
        fresh = 0
        for item in _items(inputs, where):
            if writer.is_done(item.origin):
                report.skipped += 1
                continue
            if limit is not None and fresh >= limit:
                break
            fresh += 1
            report.read += 1
            if isinstance(item, Record) and item.image is None:
                item = Rejection(
                    item.origin,
                    "no_image",
                    "metadata-only input: no image to classify",
                    item.source_object_id,
                    item.raw_label,
                )
            if isinstance(item, Record):
                queue.append(item)
                yield item.image
            elif queue:
                queue.append(item)  # after a record still being classified
            else:
                take(rejection_row(item, top_k))  # nothing to wait for: memory stays flat
                if len(rows) >= batch_size:
                    flush()

    rows: list[dict[str, Any]] = []
    pictures: list[bytes | None] = []

    def take(row: dict[str, Any], record: Record | None = None) -> None:
        error = row.get("error")
        if error:
            report.rejected += 1
            report.reasons[str(error).split(":", 1)[0]] += 1
        else:
            report.predicted += 1
        rows.append(row)
        if writer.wants_images:
            pictures.append(_image_bytes(record) if record is not None and not error else None)

    def flush() -> None:
        if rows:
            writer.write(rows, pictures if writer.wants_images else None)
            advance(len(rows))
            rows.clear()
            pictures.clear()

    def drain_rejections() -> None:
        while queue and isinstance(queue[0], Rejection):
            take(rejection_row(queue.popleft(), top_k))

    with writer, _progress(progress, out.name) as advance:
        try:
            predictions = classifier.predict_iter(images(), top_k=top_k, batch_size=batch_size)
            for prediction in predictions:
                drain_rejections()
                record = queue.popleft()
                take(prediction_rows([record], [prediction], top_k)[0], record)
                if len(rows) >= batch_size:
                    flush()
            drain_rejections()
        finally:
            flush()  # complete rows are kept, even when an input raised
    return report


def _image_bytes(record: Record) -> bytes | None:
    try:  # loaders that can stop at the image size limit never read past it
        read_at_most = getattr(record.image, "read_at_most", None)
        return read_at_most(MAX_BYTES) if read_at_most else record.image_bytes()
    except (OSError, zipfile.BadZipFile, EOFError):  # RefusedInput too: not regular, too large
        return None


@contextmanager
def _progress(enabled: bool, name: str):
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]predicting → {task.description}"),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout may be the data
        transient=True,
    ) as bar:
        task = bar.add_task(name, total=None)
        yield lambda n: bar.advance(task, n)
