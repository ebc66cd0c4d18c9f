"""When to evaluate: a pure function of the global step, identical on every rank."""
from __future__ import annotations

__all__ = ["Schedule"]


class Schedule:
    """Evaluation steps: ``start + k * every_n_steps`` and, with ``log_spaced``, the powers of two below
    ``every_n_steps`` (1, 2, 4, ...) so the early, fast-moving phase of training is seen too.

    Example:
        >>> s = Schedule(every_n_steps=50, log_spaced=True)
        >>> [s.next_after(x) for x in (-1, 0, 1, 5, 32, 50)]
        [0, 1, 2, 8, 50, 100]
    """

    def __init__(self, every_n_steps: int, start_step: int = 0, log_spaced: bool = False) -> None:
        self.every = int(every_n_steps)
        self.start = int(start_step)
        self.log_spaced = bool(log_spaced)

    def next_after(self, step: int) -> int:
        """The first evaluation step strictly after ``step``."""
        if step < self.start:
            regular = self.start
        else:
            regular = self.start + ((step - self.start) // self.every + 1) * self.every
        if self.log_spaced:
            p = 1
            while p <= step:
                p *= 2
            if self.start <= p < self.start + self.every and p < regular:
                return p
        return regular

    def is_due(self, step: int) -> bool:
        return self.next_after(step - 1) == step
