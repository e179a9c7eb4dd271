"""Replies, tokens and estimated cost per arm per day, from the rows of `ab report`.

Grouped by the arm that SERVED the reply (tokens are spent by the model that wrote it), every
turn that reached a model (rate-limited ones did not), forced or not: a cost is a cost. Prices
come from the model table (chatapp/model_table.py, `input_price_per_1m`/`output_price_per_1m`);
a day whose rows include a model without a known price shows no cost ("unknown") rather than a
partial sum that reads like a total.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from chatapp.settings import ConfigError, Settings

# (USD per 1M prompt tokens, USD per 1M completion tokens), or None when unknown.
PriceLookup = Callable[[str], tuple[float, float] | None]


def serving_price(model: str, settings: Settings | None = None) -> tuple[float, float] | None:
    """The model table's serving price for a model id (with the user's `models_file` laid over
    it when `settings` are given), or None.

    A fine-tuned id ("ft:gpt-4o-mini:org::x", "gpt-4o-mini-2024-07-18.ft-abc") finds its base's
    entry by prefix, but it is NOT served at the base's price (fine-tuned tokens cost more, and
    Azure adds hosting per hour): unknown, rather than a figure that is wrong by a factor.
    """
    from chatapp.model_table import model_info  # the table loads lazily; the stats need it not

    name = model.strip().lower()
    if name.startswith("ft:") or ".ft-" in name or ":ft-" in name:
        return None
    try:
        info = model_info(model, settings)
    except ConfigError:
        return None
    if not info.known or info.input_price_per_1m is None or info.output_price_per_1m is None:
        return None
    return info.input_price_per_1m, info.output_price_per_1m


@dataclass
class DayUsage:
    day: str  # ISO date (UTC as stored), or "unknown" for rows without a time
    arm: str
    replies: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None: some model of the day has no known price
    models: set[str] = field(default_factory=set)
    unpriced: set[str] = field(default_factory=set)

    def as_dict(self) -> dict[str, Any]:
        return {"day": self.day, "arm": self.arm, "replies": self.replies,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": self.cost_usd if not self.unpriced else None,
                "cost": "unknown" if self.unpriced else f"{self.cost_usd:.4f}",
                "models": sorted(self.models), "unpriced_models": sorted(self.unpriced)}


def _day(value: object) -> str:
    if isinstance(value, datetime | date):
        return value.isoformat()[:10]
    if isinstance(value, str) and len(value) >= 10:
        return value[:10]
    return "unknown"


def daily_usage(rows: Iterable[Mapping[str, Any]], price: PriceLookup = serving_price
                ) -> list[DayUsage]:
    """One entry per (day, arm served), by day then arm."""
    days: dict[tuple[str, str], DayUsage] = {}
    cache: dict[str, tuple[float, float] | None] = {}
    for r in rows:
        if r["outcome"] == "rate_limited":
            continue  # refused before any model was asked
        key = (_day(r.get("created_at")), str(r["arm_served"]))
        day = days.setdefault(key, DayUsage(*key))
        day.replies += 1
        tin, tout = int(r["prompt_tokens"] or 0), int(r["completion_tokens"] or 0)
        day.prompt_tokens += tin
        day.completion_tokens += tout
        if not tin and not tout:
            continue  # nothing billed (an error before any token, or a fake model)
        model = r.get("model")
        if not model:
            day.unpriced.add(f"deployment {r.get('deployment') or '?'}: model not recorded")
            continue
        day.models.add(str(model))
        if model not in cache:
            cache[model] = price(str(model))
        known = cache[model]
        if known is None:
            day.unpriced.add(str(model))
        elif day.cost_usd is not None:
            day.cost_usd += (tin * known[0] + tout * known[1]) / 1e6
    for day in days.values():
        if day.unpriced:
            day.cost_usd = None
    return [days[k] for k in sorted(days)]
