"""`travel-admin`: the admin console of travel-chat."""

from __future__ import annotations

import typer

from admin import deployments, experiments, users

app = typer.Typer(help="Administer travel-chat: users, deployments, experiments.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(users.app, name="users")
app.add_typer(deployments.app, name="deployments")
app.add_typer(experiments.app, name="ab")


def main() -> None:
    app()
