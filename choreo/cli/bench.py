"""`choreo bench`: the benchmark suite (bench/suite.py), run from the repository checkout.

`bench/` is not part of the installed package (it needs the repository's workflows and
the Prefect peer's files), so the command runs `python -m bench suite` in the checkout this
`choreo` comes from, with the same interpreter.
"""

import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from choreo.cli.common import Json, errors

app = typer.Typer()

CHECKOUT = Path(__file__).resolve().parents[2]


@app.command()
def bench(
    name: Annotated[
        str | None,
        typer.Argument(help="One section: stages, streaming, workflows or peer (default: all)."),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Short windows and small sizes (a few minutes).")
    ] = False,
    soak: Annotated[
        bool, typer.Option("--soak", help="Add a 10-minute soak at 50% of the max rate.")
    ] = False,
    json_out: Json = False,
) -> None:
    """Measure Choreo against the ceilings of this machine and a Prefect peer.

    Prints every ratio (see bench/README.md) and writes the figures to
    bench/results/suite-<time>.json. Starts its own servers and embedded stack; a running
    `choreo up` is neither used nor disturbed.
    """
    if not (CHECKOUT / "bench" / "suite.py").is_file():
        errors.print(f"no bench/ beside {CHECKOUT / 'choreo'}: run it from a Choreo checkout")
        raise typer.Exit(2)
    argv = [sys.executable, "-m", "bench", "suite"]
    argv += ["--only", name] if name else []
    argv += ["--quick"] if quick else []
    argv += ["--soak"] if soak else []
    argv += ["--json"] if json_out else []
    raise typer.Exit(subprocess.run(argv, cwd=CHECKOUT, check=False).returncode)
