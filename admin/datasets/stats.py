"""The OpenAI cookbook's dataset statistics and training cost estimate.

Distributions are those the cookbook prints (min/max/mean/median/p10/p90, quantiles interpolated
linearly as numpy does); the estimate follows its rules: 3 epochs by default, clamped so that
examples x epochs stays within [100, 25000] (and epochs within 1..25), and billed tokens =
epochs x sum(min(limit, tokens per example)).
"""

from __future__ import annotations

import math
import statistics
from array import array
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from admin.datasets.preference_check import PairTokens

TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


def quantile(ordered: list[int] | list[float], q: float) -> float:
    """numpy.quantile's default (linear) on sorted values."""
    if not ordered:
        return math.nan
    k = (len(ordered) - 1) * q
    lo = math.floor(k)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo))


@dataclass(frozen=True)
class Distribution:
    n: int
    min: float
    max: float
    mean: float
    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, values: array[int] | list[int]) -> Distribution:
        ordered = sorted(values)
        if not ordered:
            nan = math.nan
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(len(ordered), ordered[0], ordered[-1], statistics.fmean(ordered),
                   quantile(ordered, 0.5), quantile(ordered, 0.1), quantile(ordered, 0.9))


def default_epochs(n_examples: int) -> int:
    """The cookbook's default: 3, clamped so that examples x epochs is within [100, 25000]."""
    if n_examples <= 0:
        return TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        return min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    if n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        return max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return TARGET_EPOCHS


@dataclass(frozen=True)
class CostEstimate:
    epochs: int
    tokens_per_epoch: int  # sum(min(limit, tokens per example))
    billed_tokens: int  # epochs x tokens_per_epoch
    price_per_1m: float | None  # USD, from the model table when known
    cost_usd: float | None

    @classmethod
    def of(cls, example_tokens: array[int] | list[int], limit: int, price_per_1m: float | None,
           epochs: int | None = None) -> CostEstimate:
        n_epochs = epochs if epochs is not None else default_epochs(len(example_tokens))
        per_epoch = sum(min(limit, t) for t in example_tokens)
        billed = n_epochs * per_epoch
        cost = None if price_per_1m is None else round(billed * price_per_1m / 1e6, 4)
        return cls(n_epochs, per_epoch, billed, price_per_1m, cost)


@dataclass
class TokenStats:
    """Per-example figures gathered while validating (ints in arrays: millions of examples fit).

    For a file of preference pairs (`pairs`), an example is a pair: `messages` counts its
    prompt, `total` the tokens a DPO step runs (the prompt with each reply: what is billed),
    `assistant` both replies; `prompt`, `preferred` and `non_preferred` hold each side.
    """

    tokenizer: str = ""
    exact: bool = True
    limit: int = 0
    messages: array[int] = field(default_factory=lambda: array("l"))
    total: array[int] = field(default_factory=lambda: array("l"))
    assistant: array[int] = field(default_factory=lambda: array("l"))
    missing_system: int = 0
    missing_user: int = 0
    over_limit: int = 0
    pairs: bool = False
    prompt: array[int] = field(default_factory=lambda: array("l"))
    preferred: array[int] = field(default_factory=lambda: array("l"))
    non_preferred: array[int] = field(default_factory=lambda: array("l"))

    def add(self, n_messages: int, n_tokens: int, n_assistant: int) -> None:
        self.messages.append(n_messages)
        self.total.append(n_tokens)
        self.assistant.append(n_assistant)
        if n_tokens > self.limit:
            self.over_limit += 1

    def add_pair(self, n_prompt_messages: int, tokens: PairTokens) -> None:
        self.messages.append(n_prompt_messages)
        self.total.append(tokens.total)
        self.assistant.append(tokens.preferred + tokens.non_preferred)
        self.prompt.append(tokens.prompt)
        self.preferred.append(tokens.preferred)
        self.non_preferred.append(tokens.non_preferred)
        if tokens.longest > self.limit:
            self.over_limit += 1

    @property
    def n(self) -> int:
        return len(self.total)

    def summary(self) -> dict[str, Any]:
        out = self._summary()
        if self.pairs:
            out["pair_tokens"] = {
                "prompt": sum(self.prompt), "preferred": sum(self.preferred),
                "non_preferred": sum(self.non_preferred),
                "distributions": {f"{side}_tokens_per_pair": asdict(Distribution.of(values))
                                  for side, values in (("prompt", self.prompt),
                                                       ("preferred", self.preferred),
                                                       ("non_preferred", self.non_preferred))}}
        return out

    def _summary(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer, "exact": self.exact, "limit": self.limit,
            "examples_counted": self.n, "total_tokens": sum(self.total),
            "assistant_tokens": sum(self.assistant),
            "missing_system": self.missing_system, "missing_user": self.missing_user,
            "over_limit": self.over_limit,
            "distributions": {
                "messages_per_example": asdict(Distribution.of(self.messages)),
                "total_tokens_per_example": asdict(Distribution.of(self.total)),
                "assistant_tokens_per_example": asdict(Distribution.of(self.assistant)),
            },
        }
