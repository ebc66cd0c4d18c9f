"""``AdapterCore``: the framework-free part every adapter shares (config, sinks, the Monitor's life, state, stop).

An adapter (Lightning's ``MonitorCallback``, HF's ``MonitorTrainerCallback``, any later one) subclasses this core and
its host's callback class, like Lightning's ``SpikeDetection`` on top of fabric's: the core holds the plumbing and the
adapter only pulls data out of the host and delegates. What the core does:

* **Config and sinks**, at construction: ``sinks=`` split into names (the ``sinks`` config field) and sink objects,
  the config loaded and validated once (a ``MonitorConfig``, dict or file path, plus field overrides).
* **Opening**: :meth:`open_monitor` builds the Monitor on the host's sinks plus the user's, writing to JSONL under
  the host's folder when there are none, and carries state over: a checkpoint loaded before the Monitor existed, or
  else the state of the previous Monitor (a second ``fit``/``train`` with the same callback continues).
* **State**: :attr:`monitor_state` (the Monitor's own ``state_dict``, or the one waiting for the Monitor) and the
  versioned :meth:`checkpoint_state` / :meth:`load_checkpoint_state` pair, tolerant of keys added later.
* **Closing**: :meth:`close_monitor` removes the capture handle and closes the Monitor (flushes and closes its
  sinks; the host's own writers and runs stay open); safe to call any number of times, from the end of a run or
  from an exception.
* **Stopping**: :attr:`should_stop` is true once a rule with ``action="stop"`` has fired.

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> core = AdapterCore(every_n_steps=1, sinks=("memory",), warn=False, log_dir=root)
    >>> mon = core.open_monitor([], default_root=root)
    >>> mon.observe(torch.randn(32, 8)); _ = mon.step(0)
    >>> state = core.checkpoint_state(); sorted(state)
    ['monitor', 'version']
    >>> core.close_monitor(); core.close_monitor()  # closing twice is fine
    >>> resumed = AdapterCore(every_n_steps=1, sinks=("memory",), warn=False, log_dir=root)
    >>> resumed.load_checkpoint_state(state)  # before the Monitor exists: applied when it opens
    >>> resumed.open_monitor([], default_root=root).state_dict()["last_step"]
    0
    >>> resumed.close_monitor()
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

from spherewatch.alerts.advice import infer_loss_family
from spherewatch.config import MonitorConfig, load_config
from spherewatch.integrations._sinks import open_monitor as _open_monitor
from spherewatch.integrations._sinks import split_sinks
from spherewatch.monitor import Monitor

__all__ = ["AdapterCore"]

#: Version of :meth:`AdapterCore.checkpoint_state` (``{"version": 1, "monitor": <Monitor.state_dict()>}``).
STATE_VERSION = 1

logger = logging.getLogger("spherewatch.integrations")


class AdapterCore:
    """Config, sinks, the Monitor's life, state and stop of one adapter (see the module docstring).

    Args:
        config: a :class:`~spherewatch.MonitorConfig`, dict or config-file path.
        sinks: more sinks: names (the ``sinks`` config field) and/or sink objects.
        on_alert: callable(s) called with every fired :class:`~spherewatch.Alert`.
        **overrides: ``MonitorConfig`` fields, e.g. ``every_n_steps=50``.

    Attributes:
        config: the validated :class:`~spherewatch.MonitorConfig`.
        monitor: the :class:`~spherewatch.Monitor` of the current (or last) run, ``None`` before the first.
    """

    def __init__(self, config: Any = None, *, sinks: Optional[Sequence[Any]] = None, on_alert: Any = None,
                 **overrides: Any) -> None:
        super().__init__()
        names, self._user_sinks = split_sinks(sinks)
        if names:
            overrides["sinks"] = names
        self.config: MonitorConfig = load_config(config, **overrides)
        self._on_alert = on_alert
        self.monitor: Optional[Monitor] = None
        self._pending: Optional[Dict[str, Any]] = None  # a Monitor state waiting for the Monitor
        self._handle: Any = None  # the capture (a hook handle: anything with .remove())
        #: ``(family, loss class name)`` when ``loss_family`` was inferred from the host's model, else ``None``
        self.inferred_loss_family: Optional[Tuple[str, str]] = None

    # ------------------------------------------------------------------ life
    def open_monitor(self, host_sinks: List[Any], default_root: Any, module: Any = None) -> Monitor:
        """Close the previous Monitor and open a new one on ``host_sinks`` plus the user's sink objects (JSONL under
        ``<default_root>/spherewatch`` when there is no sink at all); it resumes from the pending checkpoint state,
        else from the previous Monitor's state. ``module``: the host's model; when ``loss_family`` was not given,
        the family of the loss modules found in it (by class name: lightly's ``BarlowTwinsLoss``, ``DINOLoss`` ...,
        :func:`~spherewatch.alerts.advice.infer_loss_family`) is used, and said once in the log."""
        previous = self.monitor.state_dict() if self.monitor is not None else None
        self.close_monitor()
        if self.config.loss_family is None and module is not None and self.inferred_loss_family is None:
            found = infer_loss_family(module)
            if found is not None:
                self.inferred_loss_family = found
                self.config = self.config.model_copy(update={"loss_family": found[0]})
                logger.info("spherewatch: loss_family=%r, from the %s in the model (pass loss_family= to set it)",
                            found[0], found[1])
        self.monitor = _open_monitor(self.config, list(host_sinks) + self._user_sinks, default_root, self._on_alert)
        state = self._pending if self._pending is not None else previous
        if state is not None:
            self.monitor_state = state
        return self.monitor

    def attach(self, handle: Any) -> None:
        """Keep the capture ``handle`` (anything with ``.remove()``, or ``None``): removed by :meth:`close_monitor`."""
        self._handle = handle

    @property
    def capture(self) -> Any:
        """The capture handle given to :meth:`attach` (``None`` when none is installed)."""
        return self._handle

    def close_monitor(self, timeout: Optional[float] = None) -> None:
        """Remove the capture and close the Monitor (idempotent; the Monitor stays readable as :attr:`monitor`);
        ``timeout``: :meth:`Monitor.close <spherewatch.Monitor.close>`'s (default its ``close_timeout``)."""
        if self._handle is not None:
            handle, self._handle = self._handle, None
            handle.remove()
        if self.monitor is not None:
            self.monitor.close(timeout)

    def mark_change(self, what: str = "", *, step: Optional[int] = None, settle_steps: Optional[int] = None) -> None:
        """Say that you changed the recipe from ``step`` on (default: the next step): :meth:`Monitor.mark_change
        <spherewatch.Monitor.mark_change>` of the current run. Outside a run there is nothing to mark: a warning."""
        if self.monitor is None:
            logger.warning("spherewatch: mark_change(%r) outside a training run: nothing to mark (call it during "
                           "fit/train, when the recipe changes)", what)
            return
        self.monitor.mark_change(what, step=step, settle_steps=settle_steps)

    @property
    def should_stop(self) -> bool:
        """True once a rule with ``action="stop"`` has fired in the current Monitor."""
        return bool(self.monitor is not None and self.monitor.should_stop)

    # ------------------------------------------------------------------ state
    @property
    def monitor_state(self) -> Optional[Dict[str, Any]]:
        """The Monitor's ``state_dict()`` (or the state waiting to be loaded when the Monitor opens)."""
        if self.monitor is not None:
            return self.monitor.state_dict()
        return self._pending

    @monitor_state.setter
    def monitor_state(self, state: Optional[Mapping[str, Any]]) -> None:
        self._pending = dict(state) if state else None
        if self.monitor is not None and self._pending is not None:
            self.monitor.load_state_dict(self._pending)
            self._pending = None

    def checkpoint_state(self) -> Dict[str, Any]:
        """``{"version": 1, "monitor": <the Monitor's state>}`` (``{}`` before there is any state)."""
        state = self.monitor_state
        if self.monitor is None and state is None:
            return {}
        return {"version": STATE_VERSION, "monitor": state}

    def load_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`checkpoint_state` output (now, or when the Monitor opens); a missing ``monitor`` is no
        state."""
        if not isinstance(state, Mapping):
            raise TypeError(f"Expected the dict returned by checkpoint_state(), got {type(state).__name__}.")
        self.monitor_state = state.get("monitor")
