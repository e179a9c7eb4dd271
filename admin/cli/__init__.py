"""`travel-admin`: the admin console of travel-chat."""

from __future__ import annotations

import typer

from admin.cli import ab as experiments
from admin.cli import dataset as dataset_cli
from admin.cli import deployments, retention, review, users
from admin.cli import eval as eval_cli
from admin.cli import loop as loop_cli
from admin.cli import train as train_cli

app = typer.Typer(help="Administer travel-chat: users, data, training, deployments, A/B.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(users.app, name="users")
app.add_typer(retention.app, name="retention")
app.add_typer(deployments.app, name="deployments")
app.add_typer(experiments.app, name="ab")
app.add_typer(dataset_cli.app, name="dataset")
app.add_typer(review.app, name="review")
train_cli.register(app)  # train ..., deploy, cleanup
app.add_typer(eval_cli.app, name="eval")
loop_cli.register(app)  # simulate, compare


def main() -> None:
    app()
