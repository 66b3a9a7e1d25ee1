"""The circuit breaker around a run: repeated trouble stops the run at a resumable point.

Pure state: the migrator reports each observation; the breaker decides. Errors must repeat
(``threshold`` in a row) before it trips, because one slow answer is weather, not a storm.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Breaker:
    threshold: int = 3
    consecutive: int = 0
    open: bool = False
    reason: str | None = None
    history: list[str] = field(default_factory=list)

    def success(self) -> None:
        self.consecutive = 0

    def failure(self, reason: str) -> bool:
        """Record one failure; True when this one trips the breaker."""
        self.consecutive += 1
        self.history.append(reason)
        if self.consecutive >= self.threshold and not self.open:
            self.open = True
            self.reason = f"{self.consecutive} failures in a row, last: {reason}"
            return True
        return False

    def trip(self, reason: str) -> None:
        """Open at once: for conditions that must never be retried into (cluster red)."""
        self.open = True
        self.reason = reason
        self.history.append(reason)

    def to_json(self) -> dict[str, object]:
        return {"open": self.open, "reason": self.reason, "consecutive": self.consecutive}
