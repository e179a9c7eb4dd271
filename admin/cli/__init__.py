"""`travel-admin`: the operator's commands. One module per command group; each parses its
arguments, calls plain functions (admin.datasets, admin.training, admin.evaluation, chatapp.*)
and prints through admin.cli.common (`fail`, `say`, `emit`, `with_store`)."""

from __future__ import annotations

import typer

from admin.cli import ab, dataset, deployments, loop, retention, review, train, users
from admin.cli import eval as eval_cli

app = typer.Typer(help="Administer travel-chat: users, data, training, deployments, A/B.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
# Each command module adds its commands (a group, or top-level ones such as `deploy`) itself.
for module in (users, retention, deployments, ab, dataset, review, train, eval_cli, loop):
    module.register(app)


def main() -> None:
    app()
