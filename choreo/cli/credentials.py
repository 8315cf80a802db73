"""`choreo credentials worker NAME`: a NATS identity of its own for one Python worker in
production, with exactly the permissions a worker needs (shared/access.py)."""

import json
import secrets
from typing import Annotated

import typer

from choreo.cli.common import Json, console, errors
from shared.access import WORKERS, permissions
from shared.workflow.registry import WORKER_NAME

credentials = typer.Typer(
    help="Mint credentials for the parts you run yourself (Python workers).",
    no_args_is_help=True,
)


@credentials.command("worker")
def worker_credentials(
    name: Annotated[str, typer.Argument(help="The worker's name, as in Worker(NAME).")],
    json_out: Json = False,
) -> None:
    """A NATS user `worker-NAME` with a new password: the entry to add to nats-server's
    `authorization.users` and the worker's environment. It may publish workflow events
    (`wf.>`), use JetStream and write the run state and the step registry; nothing else."""
    if not WORKER_NAME.match(name):
        errors.print(
            f"[red]worker name {name!r}: lower-case letters, digits and _, starting with a "
            "letter (as Worker(NAME) takes it)[/red]"
        )
        raise typer.Exit(2)
    user, password = f"worker-{name}", secrets.token_urlsafe(24)
    perms = permissions(WORKERS)
    env = {"CHOREO_NATS_USER": user, "CHOREO_NATS_PASSWORD": password}
    if json_out:
        found = {
            "user": user,
            "password": password,
            "permissions": {
                "publish": {"allow": perms.publish_allow(), "deny": perms.publish_deny()},
                "subscribe": perms.subscribe_allow(),
            },
            "env": env,
        }
        console.print_json(json.dumps(found))
        return
    typer.echo("# nats.conf, authorization { users = [ ... ] }: add this entry")
    typer.echo(perms.nats_conf_user(user, json.dumps(password)))
    typer.echo("# the worker's environment (a Secret in Kubernetes, an env file in compose)")
    for variable, value in env.items():
        typer.echo(f"{variable}={value}")
    typer.echo(
        "# S3 (ctx.lake): a key of its own that reads the raw, staging and curated buckets "
        "and writes staging and curated: CHOREO_S3_ACCESS_KEY, CHOREO_S3_SECRET_KEY"
    )
