"""``python -m planktonzilla.train supervised|clip --store … --split … --out …`` — the
`pz train` command as a module, for ``torchrun --nproc_per_node N -m planktonzilla.train …``."""

import typer

from planktonzilla.cli.train import train

if __name__ == "__main__":
    typer.run(train)
