"""The one hand-driven clock of the tests: injected wherever code takes ``clock=``."""

from __future__ import annotations


class FakeClock:
    """A monotonic (or wall) clock that moves only when a test says so.

    ``clock()`` reads it; ``clock(5)`` or ``clock.advance(5)`` moves it 5 s forward and returns
    the new time; ``clock.t`` may also be set directly.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self, advance: float = 0.0) -> float:
        self.t += advance
        return self.t

    def advance(self, seconds: float) -> float:
        return self(seconds)

    @property
    def now(self) -> float:
        return self.t

    @now.setter
    def now(self, value: float) -> None:
        self.t = value
