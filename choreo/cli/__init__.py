"""`choreo`: run the embedded stack and talk to Choreo from the command line.

Every command reads connection settings from `<data dir>/env` (written by `choreo up`);
exported `CHOREO_*` variables win. The commands that print a result have `--json` for
scripts (`dev`, `open`, `worker`, `dlq show` and `plugin remove` have none).

One module per subject (this package's modules), each with its own Typer: `app` holds a
module's top-level commands, a group has a Typer of its own (`dlq`, `fraud`, ...). They
are composed here with `add_typer`, so importing a module registers nothing.
"""

import typer

from choreo.cli import (
    bench,
    common,
    credentials,
    data,
    deploy,
    dlq,
    fraud,
    fraud_models,
    logs,
    objects,
    plugins,
    put,
    runs,
    schedules,
    stack,
    steps,
)

app = typer.Typer(
    help="Choreo: event-driven data pipelines choreographed over NATS JetStream.",
    no_args_is_help=True,
    # --install-completion / --show-completion for bash, zsh, fish and PowerShell.
    add_completion=True,
    pretty_exceptions_enable=False,
)
app.callback()(common.global_options)
# Top-level commands (a Typer added without a name gives its commands to the parent).
for commands in (
    stack.app,
    data.app,
    runs.app,
    deploy.app,
    steps.app,
    logs.app,
    objects.app,
    put.app,
    bench.app,
):
    app.add_typer(commands)
fraud.fraud.add_typer(fraud_models.app)
for group, name in (
    (deploy.trigger, "trigger"),
    (schedules.schedule, "schedule"),
    (dlq.dlq, "dlq"),
    (fraud.fraud, "fraud"),
    (plugins.plugin, "plugin"),
    (credentials.credentials, "credentials"),
):
    app.add_typer(group, name=name)


def main() -> None:
    app()
