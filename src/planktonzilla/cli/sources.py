"""`pz sources list|show|check`, `pz fetch`, `pz build`, `pz ingest source` and `pz enrich`:
the public collections from registry to store. Wire with `register(root_app, ingest_app)` and
`root_app.add_typer(app, name="sources")`."""

from __future__ import annotations

from pathlib import Path

import typer

from planktonzilla.cli._common import STORE_OPTION, WORKERS_OPTION, console, print_ingest_report
from planktonzilla.sources.enrich import ECOTAXA_URL, IFCB_DASHBOARD_URL  # stdlib-only imports

app = typer.Typer(help="The public plankton image collections.", no_args_is_help=True)

MIRROR_OPTION = typer.Option(
    None,
    "--mirror",
    envvar="PZ_MIRROR",
    help="Download from <mirror>/<id>/<file name> instead of the collection's host.",
)
CACHE_OPTION = typer.Option(
    None,
    "--cache",
    envvar="PZ_CACHE",
    help="Where downloads and extracted trees go (default ~/.cache/planktonzilla).",
)
FAIRDATA_OPTION = typer.Option(
    None, "--fairdata-url", envvar="PZ_FAIRDATA_URL", help="Fairdata download service base URL."
)
RETRIES_OPTION = typer.Option(5, "--retries", min=0, help="Retries per download.")


def _errors() -> tuple[type[Exception], ...]:
    from planktonzilla.sources.download import DownloadError
    from planktonzilla.sources.extract import ExtractError
    from planktonzilla.sources.ingest import SourceError

    return (DownloadError, ExtractError, SourceError, KeyError)


def _collection(collection_id: str):
    from planktonzilla.sources.registry import get

    try:
        return get(collection_id)
    except KeyError as exc:
        console.print(f"[red]{exc.args[0]}[/red]")
        raise typer.Exit(2) from None


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def describe(c) -> list[str]:
    """What a build of `c` verifies, fetches, and will still miss (registry facts only)."""
    from planktonzilla.sources.registry import GEO_FIELDS

    out = [f"expected {c.images:,} images, checked after ingest (stored + rejected)"]
    if c.download.kind == "http":
        out.append(f"{len(c.download.urls)} file(s): {', '.join(c.file_names())}")
    if c.split:
        where = {"folders": "folders", "lists": "file lists", "table": "table"}[c.split.kind]
        state = "verified" if c.split.verified else "NOT verified to exist"
        out.append(f"upstream split from {where} ({state})")
    m, e = c.metadata, c.enrich
    have = set(m.fields)
    if m.kind == "table":
        out.append("object table: columns beyond object_id/taxon are checked at run time")
    fetched = set() if e is None else set(GEO_FIELDS) - have
    if e is not None:
        service = "EcoTaxa" if e.kind == "ecotaxa" else "the IFCB dashboard"
        site = " (offline: fixed site stamped)" if e.lat is not None else ""
        out.append(f"`pz enrich {c.id}` fetches {', '.join(sorted(fetched))} from {service}{site}")
    missing = [f for f in GEO_FIELDS if f not in have | fetched]
    if m.kind != "table":
        in_archive = ", ".join(f for f in GEO_FIELDS if f in have) or "none"
        out.append(f"metadata in the archive: {in_archive}")
        if missing:
            out.append(f"metadata missing: {', '.join(missing)}")
    return out


@app.command("list")
def list_sources() -> None:
    """The registered collections: id, instrument, images, licence, download, metadata."""
    from planktonzilla.sources.registry import collections

    rows = [("id", "instrument", "images", "licence", "download", "metadata")]
    total = 0
    for c in collections():
        total += c.images
        rows.append(
            (c.id, c.instrument, f"{c.images:,}", c.license, c.download.kind, c.metadata.kind)
        )
    rows.append(("total", "", f"{total:,}", "", "", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [
            v.rjust(w) if i == 2 else v.ljust(w)
            for i, (v, w) in enumerate(zip(r, widths, strict=True))
        ]
        typer.echo("  ".join(cells).rstrip())


@app.command("show")
def show(collection_id: str = typer.Argument(..., metavar="ID")) -> None:
    """One collection in full, with its citation."""
    c = _collection(collection_id)
    lines = [
        f"id:          {c.id}",
        f"name:        {c.name}",
        f"instrument:  {c.instrument}",
        f"images:      {c.images:,}",
        f"licence:     {c.license}  {c.license_url}",
    ]
    if c.license_note:
        lines.append(f"note:        {c.license_note}")
    lines += [f"doi:         {c.doi_url}", f"download:    {c.download.kind}"]
    if c.download.dataset:
        lines.append(f"  dataset:   {c.download.dataset}")
    lines += [f"  {u}" for u in c.download.urls]
    if c.download_size:
        exact = "exact" if c.download.size else "approx."
        lines.append(f"  size:      {_size(c.download_size)} ({exact})")
    lines += [f"archive:     {c.archive}", f"reader:      {c.reader}"]
    lines += [f"layout:      {pattern}" for pattern in c.layout]
    if c.split:
        lines.append(f"split:       upstream ({c.split.kind})")
    m = c.metadata
    if m.kind == "site":
        lines.append(f"metadata:    fixed site {m.lat} N, {m.lon} E, {m.depth} m")
    else:
        lines.append(f"metadata:    {m.kind}" + (f" ({', '.join(m.files)})" if m.files else ""))
    lines += ["", "Build:", *(f"  {note}" for note in describe(c))]
    lines += ["", "Cite as:", f"  {c.citation}"]
    typer.echo("\n".join(lines))


@app.command("check")
def check(
    collection_ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Default: all."),
    dest: Path = typer.Option(None, "--dest", help="Where the downloads would go."),
    mirror: str = MIRROR_OPTION,
    cache: Path = CACHE_OPTION,
    fairdata_url: str = FAIRDATA_OPTION,
    timeout: float = typer.Option(15.0, "--timeout", help="Seconds per request."),
) -> None:
    """Dry run: can each collection be fetched, how big is it, is there room (a build needs
    about 3x the download)? One line per check; exits 1 when something blocks."""
    import shutil

    import httpx

    from planktonzilla.sources import download as dl
    from planktonzilla.sources.ingest import cache_dir, download_targets
    from planktonzilla.sources.registry import collections

    chosen = [_collection(i) for i in collection_ids] if collection_ids else list(collections())
    blocked = False

    def line(status: str, cid: str, what: str, detail: str) -> None:
        nonlocal blocked
        blocked |= status == "FAIL"
        typer.echo(f"{status:<4}  {cid:<16} {what:<8} {detail}")

    total = 0
    unknown = []
    with dl.make_client(timeout=timeout, connect_timeout=min(timeout, 10.0)) as client:
        for c in chosen:
            size = 0 if c.download.size or c.download.approx_size else None
            if c.download.kind == "manual" and not mirror:
                line(
                    "FAIL",
                    c.id,
                    "manual",
                    f"visit {c.download.urls[0]} in a browser, then "
                    f"`pz ingest source {c.id} --from FILE`",
                )
                continue
            if c.download.kind == "fairdata" and not mirror:
                base = (fairdata_url or dl.fairdata_url()).rstrip("/")
                try:  # a 404 here is a wrong root (download.fairdata.fi), not "no package yet"
                    info = dl.fairdata_request(client, base, c.download.dataset)
                    detail = f"{base} (package {info.get('status') or 'not requested yet'})"
                    line("OK", c.id, "fairdata", detail)
                except (dl.DownloadError, httpx.HTTPError) as exc:
                    line("FAIL", c.id, "fairdata", f"{base}: {exc}")
                size = c.download.size
            else:
                for url, _ in download_targets(c, mirror):
                    p = dl.probe(url, client=client)
                    line(
                        "OK" if p.ok else "FAIL",
                        c.id,
                        "url",
                        f"{url}  {_size(p.size) if p.ok else p.message}",
                    )
                    if p.ok and p.size is not None and size is not None:
                        size += p.size
                    elif p.ok:
                        size = None
                if size is None or size == 0:
                    size = c.download_size
            if size:
                total += size
            else:
                unknown.append(c.id)
            for note in describe(c):
                line("INFO", c.id, "plan", note)
    where = Path(dest) if dest else (Path(cache) if cache else cache_dir())
    probe_dir = where
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    free = shutil.disk_usage(probe_dir).free
    need = 3 * total
    status = "OK" if free >= need else "FAIL"
    line(
        status,
        "all",
        "disk",
        f"need ~{_size(need)} (3x {_size(total)} download), {_size(free)} free at {probe_dir}",
    )
    if unknown:
        line("WARN", "all", "disk", f"download size unknown for {', '.join(unknown)}")
    raise typer.Exit(1 if blocked else 0)


def fetch_cmd(
    collection_id: str = typer.Argument(..., metavar="ID"),
    dest: Path = typer.Option(None, "--dest", help="Folder for the downloaded archive(s)."),
    from_path: Path = typer.Option(
        None, "--from", help="An archive or folder you already have (nothing is downloaded)."
    ),
    extract: bool = typer.Option(True, "--extract/--no-extract", help="Also extract."),
    mirror: str = MIRROR_OPTION,
    cache: Path = CACHE_OPTION,
    fairdata_url: str = FAIRDATA_OPTION,
    retries: int = RETRIES_OPTION,
) -> None:
    """Download a collection (resumable), extract it safely and check its layout. Prints the
    folder that `pz ingest source` will read."""
    from planktonzilla.sources.ingest import fetch, plan, prepare

    c = _collection(collection_id)
    try:
        if not extract:
            for path in fetch(c, dest, mirror=mirror, fairdata_url=fairdata_url, retries=retries):
                typer.echo(str(path))
            return
        if from_path is None and dest is not None:
            from_path = fetch(c, dest, mirror=mirror, fairdata_url=fairdata_url, retries=retries)
        tree = prepare(
            c,
            from_path=from_path,
            cache=cache,
            mirror=mirror,
            fairdata_url=fairdata_url,
            retries=retries,
        )
        p = plan(c, tree)
        p.tables.close()
    except _errors() as exc:
        console.print(f"[red]{c.id}: {exc}[/red]")
        raise typer.Exit(1) from None
    for root in p.roots:
        console.print(f"{c.id}: class folders in {root.path}")
    typer.echo(str(tree))


STRICT_OPTION = typer.Option(
    False, "--strict", help="Exit 1 when fewer images than the collection's expected count."
)
ENRICH_URLS = {
    "ecotaxa_url": typer.Option(ECOTAXA_URL, "--ecotaxa-url", envvar="PZ_ECOTAXA_URL"),
    "dashboard_url": typer.Option(
        IFCB_DASHBOARD_URL, "--dashboard-url", envvar="PZ_IFCB_DASHBOARD_URL"
    ),
}


def ingest_source_cmd(
    collection_id: str = typer.Argument(..., metavar="ID"),
    store: Path = STORE_OPTION,
    from_path: Path = typer.Option(
        None, "--from", help="An archive or folder you already have (nothing is downloaded)."
    ),
    mirror: str = MIRROR_OPTION,
    cache: Path = CACHE_OPTION,
    fairdata_url: str = FAIRDATA_OPTION,
    retries: int = RETRIES_OPTION,
    workers: int = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
) -> None:
    """Fetch (or take --from), extract, apply the layout, stamp licence, instrument and
    citation, and ingest a public collection, then compare stored + rejected with the
    collection's expected count. Resumable: a rerun skips what is stored."""
    c = _collection(collection_id)
    ok = _ingest_one(c, store, from_path, mirror, cache, fairdata_url, retries, workers, strict)
    if not ok:
        raise typer.Exit(1)


def _ingest_one(c, store, from_path, mirror, cache, fairdata_url, retries, workers, strict):
    from planktonzilla.sources.ingest import ingest_source

    try:
        result = ingest_source(
            c,
            store,
            from_path=from_path,
            cache=cache,
            mirror=mirror,
            workers=workers,
            progress=True,
            fairdata_url=fairdata_url,
            retries=retries,
        )
    except _errors() as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) else exc
        console.print(f"[red]{c.id}: {msg}[/red] (nothing was written to the store)")
        return False
    print_ingest_report(result.ingest)
    for warning in result.warnings:  # soft_wrap: one greppable line each
        console.print(f"[yellow]WARNING {warning}[/yellow]", soft_wrap=True)
    style = "bold red" if result.shortfall else "green"
    for i, text in enumerate(result.count_lines()):
        flag = "WARNING " if result.shortfall and not i else ""
        console.print(f"[{style}]{flag}{text}[/{style}]", soft_wrap=True)
    for text in result.empty_lines():
        console.print(text, soft_wrap=True)
    if c.enrich is not None:
        console.print(
            f"{c.id}: lat/lon/depth/time are not in the archive: `pz enrich {c.id}`",
            soft_wrap=True,
        )
    return result.ok and not (strict and result.shortfall)


def build_cmd(
    sources: str = typer.Option("all", "--sources", help="'all' or a comma-separated id list."),
    store: Path = STORE_OPTION,
    from_dir: Path = typer.Option(
        None,
        "--from-dir",
        file_okay=False,
        help="A folder holding copies: <id>/, <id>.zip|tar…, or the download's own file names.",
    ),
    mirror: str = MIRROR_OPTION,
    cache: Path = CACHE_OPTION,
    fairdata_url: str = FAIRDATA_OPTION,
    retries: int = RETRIES_OPTION,
    workers: int = WORKERS_OPTION,
    strict: bool = STRICT_OPTION,
    dry_run: bool = typer.Option(
        False,
        "--dry-run",
        help="Say per collection what would be fetched and what will be missing.",
    ),
    with_enrich: bool = typer.Option(
        False, "--enrich", help="Also fetch the metadata not in the archives (see `pz enrich`)."
    ),
    ecotaxa_url: str = ENRICH_URLS["ecotaxa_url"],
    dashboard_url: str = ENRICH_URLS["dashboard_url"],
) -> None:
    """Ingest several collections into one store, one after another, each checked against its
    expected count. A collection that fails is reported and skipped (the store keeps the
    others); exits 1 if any failed (or, with --strict, fell short)."""
    from planktonzilla.sources.ingest import locate
    from planktonzilla.sources.registry import collections

    if sources.strip().lower() == "all":
        chosen = list(collections())
    else:
        chosen = [_collection(i.strip()) for i in sources.split(",") if i.strip()]
    if dry_run:
        for c in chosen:
            from_path = locate(c, from_dir) if from_dir else None
            where = f"from {from_path}" if from_path else f"download ({c.download.kind})"
            typer.echo(f"{c.id}: {where}")
            for note in describe(c):
                typer.echo(f"  {note}")
        return
    failed = []
    for c in chosen:
        from_path = locate(c, from_dir) if from_dir else None
        if from_dir and from_path is None and c.download.kind == "manual" and not mirror:
            console.print(f"[red]{c.id}: no copy in {from_dir} and it needs a manual download")
            failed.append(c.id)
            continue
        console.print(
            f"[bold]{c.id}[/bold]" + (f" from {from_path}" if from_path else ""), soft_wrap=True
        )
        if not _ingest_one(
            c, store, from_path, mirror, cache, fairdata_url, retries, workers, strict
        ):
            failed.append(c.id)
        elif with_enrich and c.enrich is not None:
            _enrich_one(c, store, ecotaxa_url=ecotaxa_url, dashboard_url=dashboard_url)
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
        raise typer.Exit(1)
    console.print(f"built {len(chosen)} collection(s) into {store}")


def _enrich_one(c, store, **options) -> bool:
    """Run the metadata step; an offline or failing service is reported, never fatal here."""
    from planktonzilla.sources.enrich import enrich
    from planktonzilla.store import ObjectStore

    result = enrich(c, ObjectStore(store), **options)
    for text in result.lines():
        console.print(("[yellow]" if result.skipped else "") + text)
    return result.ok


def enrich_cmd(
    collection_id: str = typer.Argument(..., metavar="ID"),
    store: Path = STORE_OPTION,
    project: list[int] = typer.Option(
        None, "--ecotaxa-project", help="EcoTaxa project id(s) of the collection (bulk query)."
    ),
    ecotaxa_url: str = ENRICH_URLS["ecotaxa_url"],
    dashboard_url: str = ENRICH_URLS["dashboard_url"],
    window_size: int = typer.Option(5000, "--window-size", min=1, help="Objects per page."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Parallel requests."),
    rate: float = typer.Option(10.0, "--rate", help="Requests per second, at most."),
    retries: int = RETRIES_OPTION,
    offline: bool = typer.Option(False, "--offline", help="Fetch nothing (PZ_OFFLINE=1)."),
) -> None:
    """Fetch the lat/lon/depth/time the archive lacks (EcoTaxa per project, or per object when
    the project is unknown; the IFCB dashboard per bin) into metadata/<ID>.parquet, joined at
    read time. Cached and resumable; reports every field left empty. Exits 1 when something
    could not be fetched."""
    c = _collection(collection_id)
    options = dict(
        ecotaxa_url=ecotaxa_url,
        dashboard_url=dashboard_url,
        projects=project or (),
        window_size=window_size,
        concurrency=concurrency,
        rate=rate,
        retries=retries,
    )
    if offline:
        options["is_offline"] = True
    if not _enrich_one(c, store, **options):
        raise typer.Exit(1)


def register(root_app: typer.Typer, ingest_app: typer.Typer) -> None:
    """Add `pz fetch`, `pz build`, `pz enrich` and `pz ingest source`."""
    root_app.command("fetch")(fetch_cmd)
    root_app.command("build")(build_cmd)
    root_app.command("enrich")(enrich_cmd)
    ingest_app.command("source")(ingest_source_cmd)
