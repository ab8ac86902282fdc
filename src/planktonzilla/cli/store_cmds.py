"""`pz stats`, `pz query`, `pz verify`, `pz export`, `pz demo`: looking into a store, checking
it and getting data out."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer
from rich.markup import escape

from planktonzilla.cli._common import EXISTING_STORE_OPTION, console, fail


class ExportFormat(StrEnum):
    parquet = "parquet"
    imagefolder = "imagefolder"
    dwca = "dwca"
    webdataset = "webdataset"


def _table(rows: list[dict], title: str | None = None, limit: int | None = None):
    from rich.table import Table

    if not rows:
        return f"[bold]{title or 'Result'}[/]: none"
    table = Table(title=title, title_justify="left")
    for name in rows[0]:
        table.add_column(name, overflow="fold")
    for row in rows[:limit]:
        table.add_row(
            *("" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row.values())
        )
    if limit and len(rows) > limit:
        table.caption = f"… {len(rows) - limit:,} more rows (use --json for all)"
    return table


def stats(
    store: Path = EXISTING_STORE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    labels: int = typer.Option(15, "--labels", help="Raw labels to list per source (0: all)."),
) -> None:
    """Counts per source, instrument and raw label; rejections; label conflicts; image sizes."""
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store).stats()
    if as_json:
        print(json.dumps(s, indent=1, default=str))
        return
    from rich.console import Console

    out = Console()
    out.print(
        f"[bold]{store}[/]: read {s['read']:,} = stored {s['stored']:,}"
        f" + rejected {s['rejected']:,}"
    )
    out.print(_table(s["sources"], "Sources"))
    out.print(_table(s["instruments"], "Instruments"))
    for source in [row["source"] for row in s["sources"]]:
        rows = [r for r in s["raw_labels"] if r["source"] == source]
        out.print(_table(rows, f"Raw labels of {source} ({len(rows)})", limit=labels or None))
    out.print(_table(s["taxa"], "Harmonized taxa (all sources)", limit=labels or None))
    out.print(_table(s["rejected_reasons"], "Rejected, by reason"))
    out.print(
        _table(
            s["label_conflicts"],
            f"Label conflicts ({len(s['label_conflicts'])}):"
            " identical images filed under different labels",
        )
    )
    out.print(_table([s["image_size"]], "Image size (px)"))


def query(
    sql: str = typer.Argument(..., help="DuckDB SQL over the views `objects` and `rejected`."),
    store: Path = EXISTING_STORE_OPTION,
    fmt: str = typer.Option("table", "--format", help="table, csv or json"),
) -> None:
    """Run SQL over the store, e.g. pz query "select raw_label, count(*) from objects group by 1"."""  # noqa: E501
    import duckdb

    from planktonzilla.store import ObjectStore

    try:
        table = ObjectStore(store).query(sql)
    except duckdb.Error as exc:
        console.print(f"[red]query failed:[/] {exc}")
        raise typer.Exit(2) from None
    if "image" in table.column_names:  # bytes are useless on a terminal
        table = table.drop_columns(["image"])
    if fmt == "csv":
        import sys

        import pyarrow.csv as pacsv

        pacsv.write_csv(table, sys.stdout.buffer)
    elif fmt == "json":
        print(json.dumps(table.to_pylist(), indent=1, default=str))
    else:
        from rich.console import Console

        Console().print(_table(table.to_pylist(), limit=200))


def verify(
    store: Path = EXISTING_STORE_OPTION,
    deep: bool = typer.Option(False, "--deep", help="Also re-hash every image against its id."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check the store against its manifest: every listed shard present, of its size and
    checksum, with a readable footer; no foreign files; with --deep every image's sha256
    equal to its object id. Exit 1 when a problem is found."""
    from dataclasses import asdict

    from planktonzilla.store.verify import verify_store

    report = verify_store(store, deep=deep)
    if as_json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
    else:
        for p in report.problems:
            console.print(f"[red]{p.kind}[/] {escape(p.path)}: {escape(p.message)}", soft_wrap=True)
        hashed = f", {report.objects_hashed:,} images re-hashed" if deep else ""
        verdict = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        console.print(
            f"{store}: {report.shards:,} shards, {report.bytes:,} bytes{hashed}: {verdict}"
        )
    if not report.ok:
        raise typer.Exit(1)


def export(
    fmt: ExportFormat = typer.Argument(..., help="parquet, imagefolder, webdataset or dwca"),
    store: Path = EXISTING_STORE_OPTION,
    out: Path = typer.Option(..., "--out", "-o", help="Output directory."),
    where: str = typer.Option(None, "--where", help="SQL filter on the objects view."),
    label: str = typer.Option(
        "raw_label", "--label", help="imagefolder: column naming the folders."
    ),
    abundance_table: Path = typer.Option(
        None, "--abundance", help="dwca: a `pz abundance` table (default: the store's labels)."
    ),
    dwca_method: str = typer.Option(None, "--method", help="dwca: labels | predicted | acc | pacc"),
    title: str = typer.Option("Plankton abundance from imaging", "--title", help="dwca: EML title"),
    license: str = typer.Option("CC-BY-4.0", "--license", help="dwca: the dataset's licence"),
    citation: str = typer.Option("", "--citation", help="dwca: how to cite the dataset"),
    country_code: str = typer.Option("", "--country-code", help="dwca: ISO 3166 code (OBIS)"),
    identified_by: str = typer.Option(
        "", "--identified-by", help="dwca: the person, or the model name + version"
    ),
    allow_mixed_licenses: bool = typer.Option(
        False, "--allow-mixed-licenses", help="dwca: export images of several licences"
    ),
    split: str = typer.Option(None, "--split", help="webdataset: the split to export."),
    rank: str = typer.Option("deepest", "--rank", help="webdataset: label rank of the view."),
    samples_per_shard: int = typer.Option(
        10_000, "--samples-per-shard", min=1, help="webdataset: samples per tar shard."
    ),
) -> None:
    """Export the store: Parquet (loads with datasets.load_dataset("parquet", …), image bytes
    kept), an image-folder tree with metadata.csv, WebDataset tar shards of a split's dataset
    view (`<side>-NNNNNN.tar` + index.json + sizes.json) that `pz train --data`, `webdataset`
    and open_clip's training stream, or `dwca`: a Darwin Core Archive (zip at --out) of
    abundances for OBIS / GBIF."""
    from planktonzilla.data.export import export_imagefolder, export_parquet, export_webdataset
    from planktonzilla.store import ObjectStore

    s = ObjectStore(store)
    if fmt is ExportFormat.dwca:
        from planktonzilla.ecology.dwca import export_dwca

        path = export_dwca(
            s, out, abundance_table, method=dwca_method, title=title, license=license,
            citation=citation, country_code=country_code, identified_by=identified_by,
            allow_mixed_licenses=allow_mixed_licenses,
        )  # fmt: skip
        console.print(f"wrote {path}")
    elif fmt is ExportFormat.webdataset:
        if split is None or where is not None:
            raise fail("webdataset export takes --split (and no --where)")
        index = export_webdataset(s, split, out, samples_per_shard=samples_per_shard, rank=rank)
        for side, info in index["sides"].items():
            console.print(f"{side}: {info['samples']:,} samples in {len(info['shards'])} shard(s)")
        console.print(f"wrote {out / 'index.json'}; train with pz train … --data {out}")
    elif fmt is ExportFormat.parquet:
        paths = export_parquet(s, out, where=where)
        console.print(f"wrote {len(paths)} Parquet file(s) to {out}")
    else:
        n = export_imagefolder(s, out, label=label, where=where)
        console.print(f"wrote {n:,} images to {out}")


def demo(
    out: Path = typer.Option(
        Path("pz-demo"), "--out", "-o", help="Working directory for the demo."
    ),
    per_class: int = typer.Option(
        40, "--per-class", min=2, help="Synthetic images per class and instrument."
    ),
    workers: int = typer.Option(1, "--workers", "-j", min=1),
    train: bool = typer.Option(
        True, "--train/--no-train", help="Split the store and train a tiny model of each kind."
    ),
    epochs: int = typer.Option(6, "--epochs", min=1, help="Epochs of each demo model."),
) -> None:
    """Run the pipeline on the built-in SYNTHETIC sample (no download): build a store from
    four synthetic instruments, harmonize their labels, print the statistics, write the
    label-flow page (flow.html), then split the store and train a tiny supervised and a tiny
    CLIP-style model on CPU (models/supervised, models/clip), evaluate and compare them
    (store/evaluations/demo/report.html), and classify new, held-back synthetic images
    (predictions.csv, predictions-ecotaxa.zip)."""
    from planktonzilla.cli._common import print_ingest_report
    from planktonzilla.store import ObjectStore
    from planktonzilla.synthetic import INSTRUMENTS, LICENSE, synthetic_records

    console.print(
        "[bold yellow]This demo uses a SYNTHETIC sample: procedurally drawn cartoons of plankton, "
        "not real images.[/]"
    )
    store = ObjectStore(out / "store")
    for name in INSTRUMENTS:
        report = store.ingest(
            synthetic_records(name, per_class=per_class),
            source=f"synthetic-{name.lower()}",
            workers=workers,
            progress=True,
        )
        print_ingest_report(report)
    stats(store=store.path, as_json=False, labels=5)
    from planktonzilla.cli.taxonomy import flow

    flow(out=out / "flow.html", store=store.path, mapping=None)  # raw labels -> one taxonomy
    if train:
        _demo_train(store, out / "models", epochs)
        _demo_evaluate(store, out / "models")
        _demo_predict(out, out / "models")
    console.print(
        f"\nStore: {store.path} (licence {LICENSE}). Next: "
        f'pz query "select instrument, raw_label, count(*) n from objects group by all" --store {store.path}'  # noqa: E501
    )


def _demo_train(store, models: Path, epochs: int) -> None:
    """Stratified split, then a tiny ViT of each kind (48 px, CPU): a smoke run, not a result.
    (At 32 px a patch-16 ViT sees 2x2 tokens and barely learns; above lr 5e-4 it collapses to
    the majority class in this few steps.)"""
    from planktonzilla.cli.train import train_and_calibrate as run
    from planktonzilla.data.splits import make_split
    from planktonzilla.train.loop import TrainConfig

    make_split(store, "stratified", seed=0)
    for kind in ("supervised", "clip"):
        console.print(f"\n[bold]Training a tiny {kind} model[/] (vit_tiny, 48 px, CPU)")
        summary = run(
            TrainConfig(
                kind=kind,
                store=str(store.path),
                split="stratified",
                out=str(models / kind),
                image_size=48,
                batch_size=32,
                epochs=epochs,
                lr=5e-4,
                embed_dim=64,
                text={"width": 64, "heads": 2, "layers": 1, "context_length": 24},
                device="cpu",
                progress=True,
            )
        )
        top1, majority = summary["test_top1"], summary["test_majority_top1"]
        figures = (
            f"test top-1 {top1:.1%} on {summary['test_images']} synthetic images "
            f"(majority class {majority:.1%})"
            if top1 is not None
            else "no test images (sample too small)"
        )
        console.print(f"{kind}: {figures}; model in {models / kind}")
    console.print(
        f"Reload with planktonzilla.load_model({str(models / 'supervised')!r}); "
        f"pz train supervised|clip --store {store.path} --split stratified --out DIR trains more."
    )


def _demo_evaluate(store, models: Path) -> None:
    """Both demo models, every protocol that applies, one comparison report."""
    from planktonzilla.cli.evaluate import _print_run
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.evaluate import compare

    if not dataset_view(store, "stratified").counts()["test"]:
        console.print("\nNo test images (sample too small): evaluation skipped.")
        return
    console.print("\n[bold]Evaluating[/] (supervised, zero-shot, few-shot, linear probe)")
    out = store.layout.evaluations / "demo"
    runs = compare(
        [models / "supervised", models / "clip"],
        store,
        "stratified",
        protocols=["supervised", "zero-shot", "few-shot", "linear-probe"],
        shots=[1, 5],
        out=out,
    )
    for run in runs:
        _print_run(run)
    console.print(f"Report: {out / 'report.html'}")


def _demo_predict(out: Path, models: Path) -> None:
    """Classify new synthetic images (another seed: never seen by the store or the models),
    into CSV and an EcoTaxa-importable zip; keep the images for the web page."""
    from planktonzilla.predict import Classifier
    from planktonzilla.predict.batch import predict_to_file
    from planktonzilla.synthetic import INSTRUMENTS, synthetic_records

    new = out / "new-images"
    records = [r for name in INSTRUMENTS for r in synthetic_records(name, per_class=2, seed=1)]
    for r in records:
        path = new / r.origin
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(r.image_bytes())
    classifier = Classifier.load(models / "supervised")
    console.print(f"\n[bold]Predicting[/] {len(records)} new synthetic images")
    for target in (out / "predictions.csv", out / "predictions-ecotaxa.zip"):
        report = predict_to_file(classifier, records, target, resume=False)
        console.print(report.summary())
    console.print(
        f"Web page: pz serve {models / 'supervised'} --store {out / 'store'}  "
        f"then open http://127.0.0.1:8000 and drop images from {new}"
    )


def register(app: typer.Typer) -> None:
    app.command()(stats)
    app.command()(query)
    app.command()(export)
    app.command()(verify)
    app.command()(demo)
