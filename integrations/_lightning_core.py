"""Body of the Lightning ``MonitorCallback``, shared by ``lightning.pytorch`` and ``pytorch_lightning``.

Nothing here imports a training framework; ``lightning.py`` and ``pytorch_lightning.py`` bind it to their own
``Callback`` and logger classes. It only pulls embeddings out of the run and hands them to the Monitor; the config,
sinks, the Monitor's life, checkpoint state and closing are :class:`~spherewatch.integrations._core.AdapterCore`'s.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional, Sequence, Tuple

import torch

from spherewatch.capture import Selector
from spherewatch.integrations._core import AdapterCore
from spherewatch.integrations._heads import check_head_spec, observe_head_from
from spherewatch.integrations._hooks import RowCollector, add_output_hook, extract
from spherewatch.integrations._sinks import lightning_host_sinks
from spherewatch.integrations.torch import resolve_module
from spherewatch.monitor import Monitor

__all__ = ["LightningMonitorCallbackCore"]


class LightningMonitorCallbackCore(AdapterCore):
    """A subclass sets ``_tensorboard_logger_types`` / ``_mlflow_logger_types`` and inherits the framework's
    ``Callback`` after this class (see ``lightning.MonitorCallback`` for the behaviour)."""

    _tensorboard_logger_types: Tuple[type, ...] = ()
    _mlflow_logger_types: Tuple[type, ...] = ()

    def __init__(self, config: Any = None, *, module_path: Optional[str] = None, output_key: Optional[str] = None,
                 output_key_pos: Optional[str] = None, labels_key: Optional[str] = None, tap: Optional[str] = None,
                 select: Selector = None, pool: Optional[str] = None, val_tap: Optional[str] = None,
                 log_to_module: bool = True, use_loggers: bool = True, sinks: Optional[Sequence[Any]] = None,
                 on_alert: Any = None, head: Optional[Mapping[str, Any]] = None, **overrides: Any) -> None:
        self.head = check_head_spec(head)  # the assignment head's logits in training_step's dict (issue 18)
        if (module_path is None) == (output_key is None) and not (self.head is not None and module_path is None):
            raise ValueError(
                "Pass exactly one of `module_path=` (a submodule of the LightningModule, e.g. 'encoder') or "
                "`output_key=` (a key of the dict that `training_step` returns, e.g. 'z'); got "
                f"module_path={module_path!r}, output_key={output_key!r}.")
        if output_key is None and (output_key_pos is not None or labels_key is not None):
            raise ValueError(
                f"`output_key_pos={output_key_pos!r}` and `labels_key={labels_key!r}` read `training_step`'s "
                "returned dict: pass `output_key=` too (instead of `module_path=`).")
        if output_key is not None and select is not None:
            raise ValueError(f"`select={select!r}` applies to `module_path=` outputs; with `output_key=` the value "
                             "under that key is used as is.")
        super().__init__(config, sinks=sinks, on_alert=on_alert, **overrides)
        self.module_path, self.output_key = module_path, output_key
        self.output_key_pos, self.labels_key = output_key_pos, labels_key
        self.tap = tap or self.config.default_tap
        if val_tap is not None and (not val_tap or "/" in val_tap):
            raise ValueError(f"`val_tap` must be a non-empty name without '/', got {val_tap!r}.")
        if val_tap == self.tap:
            raise ValueError(f"`val_tap` must differ from the training tap {self.tap!r}, e.g. 'val_{self.tap}'.")
        self.val_tap, self.select, self.pool = val_tap, select, pool or self.config.pool
        self.log_to_module, self.use_loggers = bool(log_to_module), bool(use_loggers)
        self._keys = (output_key, output_key_pos, labels_key)
        self._last_global_step: Optional[int] = None
        self._val_rows = RowCollector(self.config.max_samples)
        self._val_open = False

    @property
    def val_monitor(self) -> Optional[Monitor]:
        """The Monitor that evaluates the validation epochs: the same as :attr:`monitor` (``None`` without
        ``val_tap``)."""
        return self.monitor if self.val_tap is not None else None

    # ------------------------------------------------------------------ identity and state
    @property
    def state_key(self) -> str:
        """Checkpoint key: includes the tap, so several instances (one per tap) coexist."""
        return self._generate_state_key(tap=self.tap)  # type: ignore[attr-defined]

    def state_dict(self) -> Dict[str, Any]:
        """The Monitor's state (schedule position, alert state, alerts): ``{"version": 1, "monitor": ...}``."""
        return self.checkpoint_state()

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (applied when the Monitor exists, i.e. now or at ``setup``)."""
        self.load_checkpoint_state(state_dict)

    # ------------------------------------------------------------------ set-up
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage != "fit":
            return
        sinks = (lightning_host_sinks(trainer.loggers, self._tensorboard_logger_types, self._mlflow_logger_types,
                                      self.config.prefix, self.config.alert_channels)
                 if (self.use_loggers and trainer.is_global_zero) else [])
        self.open_monitor(sinks, trainer.default_root_dir, module=pl_module)  # a second fit continues

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.module_path is None or self.monitor is None:
            return
        mon = self.monitor

        def take(output: Any, kwargs: Mapping) -> None:
            training = trainer.training and mon.armed
            if not training and not (self._val_open and trainer.validating and not self._val_rows.full):
                return
            tap = self.tap if training else self.val_tap
            try:
                z = extract(output, kwargs, self.select, self.pool)
            except Exception as exc:
                mon.report_fault(f"capture:{tap}", exc, "this batch was not recorded")
                return
            if training:
                mon.observe(z, tap=tap)
            else:
                self._val_rows.add(z)

        self.attach(add_output_hook(resolve_module(pl_module, self.module_path),
                                    lambda: mon.armed or self._val_open, take, mon))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._last_global_step = trainer.global_step

    # ------------------------------------------------------------------ training
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        mon = self.monitor
        if mon is None:
            return
        if self.output_key is not None and mon.armed:
            got = _step_tensors(mon, outputs, self._keys, self.tap, "training_step")
            if got is not None:
                mon.observe(got[0], got[1], tap=self.tap, labels=got[2], pool=self.pool)
        if self.head is not None and mon.armed:
            observe_head_from(mon, outputs, self.head, "training_step")
        step = int(trainer.global_step)
        if step == self._last_global_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_global_step = step
        mon.step(step)
        # The Monitor decides evaluations from the step alone, the same on every rank, so the collective in
        # reduce_boolean_decision is reached by all of them, and only on evaluation steps.
        if mon.last_evaluation_step == step:
            _publish(trainer, pl_module, mon.last_values, on_step=True, to_module=self.log_to_module,
                     stop=self.should_stop)

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._val_open = bool(self.val_tap is not None and self.monitor is not None and trainer.state.fn == "fit"
                              and not trainer.sanity_checking)

    def on_validation_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if not self._val_open or self.output_key is None or self._val_rows.full:
            return
        got = _step_tensors(self.monitor, outputs, self._keys, self.val_tap, "validation_step")
        if got is not None:
            z, labels = got[0], got[2]
            z = extract(z, None, None, self.pool) if z.ndim == 3 else z
            self._val_rows.add(z, labels if isinstance(labels, torch.Tensor) else None)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self._val_open:
            return
        self._val_open = False
        z, labels = self._val_rows.take()
        # every rank: the Monitor gathers the rows across ranks
        values = self.monitor.evaluate_now(z, tap=self.val_tap, labels=labels, step=int(trainer.global_step))
        _publish(trainer, pl_module, values, on_step=False, to_module=self.log_to_module, stop=self.should_stop)

    # ------------------------------------------------------------------ end
    def close_monitor(self) -> None:
        super().close_monitor()
        self._val_open = False

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.close_monitor()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close_monitor()


def _step_tensors(mon: Monitor, outputs: Any, keys: Tuple[Optional[str], ...], tap: str, where: str):
    """``(z, z_pos, labels)`` out of a step's returned dict (``keys``: their keys), or ``None`` (a fault of ``mon``)
    when it has no tensor under the first key."""
    output_key, pos_key, labels_key = keys
    if not isinstance(outputs, Mapping) or not isinstance(outputs.get(output_key), torch.Tensor):
        got = f"a dict with keys {list(outputs)}" if isinstance(outputs, Mapping) else type(outputs).__name__
        mon.report_fault(f"capture:{tap}", KeyError(
            f"`{where}` returned {got}, without a tensor under output_key={output_key!r}; return e.g. "
            f"`{{'loss': loss, {output_key!r}: z}}`"), "nothing is captured from it")
        return None
    get = outputs.get
    return get(output_key), get(pos_key) if pos_key else None, get(labels_key) if labels_key else None


def _publish(trainer: Any, pl_module: Any, values: Dict[str, float], *, on_step: bool, to_module: bool,
             stop: bool) -> None:
    """``pl_module.log`` the values (for ``EarlyStopping`` / ``ModelCheckpoint``) and OR-reduce ``stop`` across
    ranks into ``trainer.should_stop`` (a collective: every rank calls it, on the same steps)."""
    if to_module:
        for key, value in values.items():
            pl_module.log(key, float(value), on_step=on_step, on_epoch=not on_step, prog_bar=False,
                          logger=False, batch_size=1)
    stop = trainer.strategy.reduce_boolean_decision(bool(stop), all=False)
    trainer.should_stop = bool(trainer.should_stop or stop)
