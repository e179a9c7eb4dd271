"""Training curves from a job's metric events: a table per step and a PNG plot.

Any backend's events work: a metrics event is one whose data has a `step` and a loss. Key names
follow Azure/OpenAI (`train_loss`, `valid_loss`, `train_mean_token_accuracy`,
`valid_mean_token_accuracy`); the shorter `*_token_accuracy` / `*_accuracy` are accepted too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from chatapp.domain import JobEvent, TrainingJob

INSTALL_TRAIN_EXTRA = "pip install 'travel-chat[train]' (or: pip install matplotlib)"


class MissingExtra(Exception):
    """An optional dependency is not installed; the message says how to install it."""


@dataclass(frozen=True)
class MetricRow:
    step: int
    epoch: float | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    train_accuracy: float | None = None
    valid_accuracy: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first(data: Mapping[str, Any], *keys: str) -> float | None:
    for key in keys:
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def metric_rows(events: Iterable[JobEvent]) -> list[MetricRow]:
    """One row per step, in step order; events of the same step merge (later values win)."""
    by_step: dict[int, dict[str, float | None]] = {}
    for ev in events:
        data = ev.data or {}
        step = data.get("step")
        if not isinstance(step, int | float) or isinstance(step, bool):
            continue
        # The local worker's `token_accuracy` is the batch's on step events and the validation
        # set's on epoch events.
        plain = _first(data, "token_accuracy")
        is_epoch = data.get("kind") == "epoch"
        train_acc = _first(data, "train_mean_token_accuracy", "train_token_accuracy",
                           "train_accuracy")
        valid_acc = _first(data, "valid_mean_token_accuracy", "full_valid_mean_token_accuracy",
                           "valid_token_accuracy", "valid_accuracy")
        values = {
            "epoch": _first(data, "epoch"),
            "train_loss": _first(data, "train_loss"),
            "valid_loss": _first(data, "valid_loss", "full_valid_loss"),
            "train_accuracy": train_acc if train_acc is not None or is_epoch else plain,
            "valid_accuracy": valid_acc if valid_acc is not None or not is_epoch else plain,
        }
        if values["train_loss"] is None and values["valid_loss"] is None:
            continue
        row = by_step.setdefault(int(step), {})
        row.update({k: v for k, v in values.items() if v is not None})
    return [MetricRow(step=s, **by_step[s]) for s in sorted(by_step)]


def progress_text(job: TrainingJob) -> str:
    """A job's progress in one line: epoch, step, latest losses (CLI and console alike)."""
    p = job.progress
    parts = [f"{k.replace('_', ' ')} {p[k]:.4f}" for k in ("train_loss", "valid_loss")
             if isinstance(p.get(k), int | float)]
    if isinstance(p.get("step"), int) and isinstance(p.get("total_steps"), int):
        parts.insert(0, f"step {p['step']}/{p['total_steps']}")
    if isinstance(p.get("epoch"), int | float) and p.get("n_epochs"):
        parts.insert(0, f"epoch {p['epoch']}/{p['n_epochs']}")
    return ", ".join(parts)


def is_step_event(ev: JobEvent) -> bool:
    """A per-step metrics event (Azure `type: metrics`, local `kind: step`): too many to print
    one by one while watching; epoch summaries and messages are not."""
    data = ev.data or {}
    return data.get("type") == "metrics" or data.get("kind") == "step"


def plot(rows: list[MetricRow], path: Path, *, title: str) -> Path:
    """Loss (left axis) and token accuracy (right axis) per step, written as a PNG."""
    if not rows:
        raise ValueError("no metric events to plot yet")
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra(f"plotting needs matplotlib: {INSTALL_TRAIN_EXTRA}") from None
    matplotlib.use("Agg")  # no display needed (servers, CI)
    import matplotlib.pyplot as plt

    fig, loss_ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        acc_ax = loss_ax.twinx()
        series = (("train_loss", loss_ax, "tab:blue", "train loss"),
                  ("valid_loss", loss_ax, "tab:orange", "validation loss"),
                  ("train_accuracy", acc_ax, "tab:green", "train token accuracy"),
                  ("valid_accuracy", acc_ax, "tab:red", "validation token accuracy"))
        for attr, ax, color, label in series:
            points = [(r.step, getattr(r, attr)) for r in rows if getattr(r, attr) is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "-" if ax is loss_ax else "--"
                ax.plot(xs, ys, style, color=color, label=label,
                        marker="o" if len(points) < 30 else None)
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("loss")
        acc_ax.set_ylabel("token accuracy")
        handles = loss_ax.get_legend_handles_labels()
        acc_handles = acc_ax.get_legend_handles_labels()
        loss_ax.legend(handles[0] + acc_handles[0], handles[1] + acc_handles[1], loc="best")
        loss_ax.set_title(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
