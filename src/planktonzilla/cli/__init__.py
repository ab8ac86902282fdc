"""The `pz` command line. Each command group lives in its own module; heavy libraries are
imported inside commands so that `pz --help` starts fast."""

import typer

from planktonzilla.cli import (
    _common,
    ecology,
    evaluate,
    ingest,
    predict,
    report,
    serve,
    sources,
    split,
    store_cmds,
    taxonomy,
    train,
)

app = typer.Typer(
    name="pz",
    help="planktonzilla: import, harmonize, train on and predict plankton images.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    cls=_common.PzGroup,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show the full trace of an error."),
) -> None:
    _common.PzGroup.debug = debug


app.add_typer(ingest.ingest_app, name="ingest")
app.add_typer(sources.app, name="sources")
app.add_typer(taxonomy.app, name="taxonomy")
sources.register(app, ingest.ingest_app)
store_cmds.register(app)
split.register(app)
train.register(app)
evaluate.register(app)
report.register(app)
predict.register(app)
serve.register(app)
ecology.register(app)
