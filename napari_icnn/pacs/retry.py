"""Bounded retries with exponential back-off for PACS requests.

Only :class:`~napari_icnn.pacs.errors.PacsUnavailable` (no answer, a dropped connection, a
temporary server error) is tried again; a refusal is final at once. The number of tries and the
total wait are bounded, so a PACS that is down costs seconds, not a hung job.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from napari_icnn.errors import ConfigError
from napari_icnn.pacs.errors import PacsUnavailable

__all__ = ["RetryPolicy"]

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a failed request is tried again.

    Valid once built: ``retries`` in 0-20, ``backoff`` and ``factor`` in [0, 3600).
    """

    retries: int = 3
    """Tries after the first one (3: four tries in all)."""
    backoff: float = 0.5
    """Seconds before the first retry."""
    factor: float = 2.0
    """Each further wait is this many times the one before (0.5, 1, 2 s by default)."""

    def __post_init__(self) -> None:
        if isinstance(self.retries, bool) or not isinstance(self.retries, int) or not 0 <= self.retries <= 20:
            raise ConfigError(f"PACS retries: must be an integer in 0-20 (got {self.retries!r})")
        for name in ("backoff", "factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 3600:
                raise ConfigError(f"PACS {name}: must be a number in [0, 3600) (got {value!r})")
            object.__setattr__(self, name, float(value))

    @property
    def delays(self) -> tuple[float, ...]:
        """The waits before each retry, in seconds (none longer than five minutes)."""
        return tuple(min(300.0, self.backoff * self.factor**i) for i in range(self.retries))

    def call(
        self,
        fn: Callable[[], T],
        on_retry: Callable[[PacsUnavailable, float], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> T:
        """``fn()``, tried again after each :class:`PacsUnavailable` until the retries run out.

        ``on_retry(error, delay)`` is told before each wait.

        Raises
        ------
        PacsUnavailable
            The last failure, its message saying how many tries were made.
        PacsRefused
            At once, without retrying.
        """
        delays = self.delays
        for attempt in range(len(delays) + 1):
            try:
                return fn()
            except PacsUnavailable as exc:
                if attempt == len(delays):
                    if delays:
                        raise PacsUnavailable(f"{exc} (gave up after {attempt + 1} tries)") from None
                    raise
                if on_retry is not None:
                    on_retry(exc, delays[attempt])
                sleep(delays[attempt])
        raise AssertionError("unreachable")  # pragma: no cover
