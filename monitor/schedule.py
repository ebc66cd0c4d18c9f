"""When to evaluate: a pure function of the global step, identical on every rank."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["Schedule", "StepClock"]


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


class StepClock:
    """The Monitor's position in the schedule: which step this is, whether it is evaluated, whether the coming
    forward passes are captured (``armed``), and when the spectral metrics are next due. Decided from the step
    alone, so every rank agrees."""

    def __init__(self, config: Any) -> None:
        self.schedule = Schedule(config.every_n_steps, config.start_step, config.log_spaced)
        self.spectral_schedule = Schedule(config.spectral_every_n_steps or config.every_n_steps, config.start_step)
        self.window = int(config.window_steps)
        self.sample_first = bool(config.sample_first_step)
        self.last_step: Optional[int] = None
        self.next_eval: Optional[int] = None
        self.next_spectral: Optional[int] = None
        self.evaluations = 0
        self.armed = self.sample_first or self.schedule.next_after(-1) < self.window

    def begin(self, global_step: Optional[int]) -> Tuple[int, bool]:
        """``(step, due)`` for a call to ``Monitor.step(global_step)``."""
        s = (0 if self.last_step is None else self.last_step + 1) if global_step is None else int(global_step)
        first = self.last_step is None
        if not first and s <= self.last_step:  # restarted counter without load_state_dict
            self.next_eval = None
        if self.next_eval is None:
            self.next_eval = self.schedule.next_after(s - 1)
        due = s >= self.next_eval or (first and self.sample_first and self.evaluations == 0)
        return s, due

    def spectral_due(self, s: int) -> bool:
        return self.next_spectral is None or s >= self.next_spectral

    def evaluated(self, s: int, spectral: bool) -> None:
        """An evaluation ran at ``s`` (``spectral``: with the eigen-decomposition metrics)."""
        if spectral:
            self.next_spectral = self.spectral_schedule.next_after(s)
        self.evaluations += 1

    def end(self, s: int, due: bool, extra: Optional[int] = None) -> bool:
        """Close step ``s``; True when the rows buffered so far fall outside the next evaluation's window. ``extra``:
        a step after ``s`` that is evaluated too (a rule asked for it), when it comes before the schedule's next."""
        if due:
            self.next_eval = self.schedule.next_after(s)
        if extra is not None and s < extra < self.next_eval:
            self.next_eval = extra
        stale = not due and self.next_eval - s >= self.window
        self.last_step = s
        self.armed = self.next_eval - (s + 1) < self.window
        return stale

    def state_dict(self) -> Dict[str, Any]:
        return {"last_step": self.last_step, "next_eval": self.next_eval, "next_spectral": self.next_spectral,
                "evaluations": self.evaluations}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from :meth:`state_dict`; every value is checked before any is taken (a ``ValueError`` names the
        key and the value)."""
        steps = {k: state.get(k) for k in ("last_step", "next_eval", "next_spectral")}
        evaluations = state.get("evaluations", 0)
        for key, value in {**steps, "evaluations": evaluations}.items():
            if value is None and key != "evaluations":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"Monitor state: `{key}` must be a non-negative integer step count, got {value!r} "
                                 "(pass the dict Monitor.state_dict() returned).")
        self.last_step, self.next_eval, self.next_spectral = steps["last_step"], steps["next_eval"], steps["next_spectral"]
        self.evaluations = evaluations
        if self.last_step is not None and self.next_eval is not None:
            self.armed = self.next_eval - (self.last_step + 1) < self.window
