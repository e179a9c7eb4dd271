"""An ops signal for a failing fine-tuned deployment: the share of fallbacks over recent turns.

A single fallback is routine (a timeout, a 500) and logged per turn as a warning already; what an
operator must not miss is a sustained share, such as a deleted deployment sending half the traffic
to base. So the monitor keeps the outcome of the last N turns and logs one WARNING when the
fallback share reaches the threshold and one INFO when it has recovered, never one per turn.
"""

from __future__ import annotations

import logging
from collections import deque

log = logging.getLogger(__name__)


class FallbackMonitor:
    """Rolling fallback share over the last `window` turns with a one-shot alert.

    The alert clears only when the share falls below half the threshold: a share hovering at the
    threshold would otherwise flap, one warning and one recovery per turn.
    """

    def __init__(self, ratio: float, window: int, logger: logging.Logger = log) -> None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"fallback alert ratio must be in (0, 1], got {ratio}")
        if window < 1:
            raise ValueError(f"fallback alert window must be at least 1 turn, got {window}")
        self.ratio, self.window = ratio, window
        self._recent: deque[bool] = deque(maxlen=window)
        self._fallbacks = 0
        self.alerting = False
        self._log = logger

    @property
    def share(self) -> float:
        return self._fallbacks / len(self._recent) if self._recent else 0.0

    def record(self, fallback: bool) -> None:
        """Count one finished turn; log when the alert state changes."""
        if len(self._recent) == self.window and self._recent[0]:
            self._fallbacks -= 1  # the oldest turn leaves the window
        self._recent.append(fallback)
        self._fallbacks += fallback
        # Judge only a full window: 1 fallback in the first 2 turns is not an outage.
        if len(self._recent) < self.window:
            return
        share = self.share
        if not self.alerting and share >= self.ratio:
            self.alerting = True
            self.log_alert(self._fallbacks)
        elif self.alerting and share < self.ratio / 2:
            self.alerting = False
            self.log_cleared(self._fallbacks)

    # The lines operators search for; the alarm shared across processes logs them too
    # (chatapp/shared/alarms.py).
    def log_alert(self, fallbacks: int) -> None:
        self._log.warning(
            "fallbacks to base in %d of the last %d turns (%.0f%%, alert at %.0f%%):"
            " check the fine-tuned deployment", fallbacks, self.window,
            fallbacks / self.window * 100, self.ratio * 100)

    def log_cleared(self, fallbacks: int) -> None:
        self._log.info("fallbacks back to %d of the last %d turns (%.0f%%): alert cleared",
                       fallbacks, self.window, fallbacks / self.window * 100)
