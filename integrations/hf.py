"""``MonitorTrainerCallback``: spherewatch for the Hugging Face ``transformers.Trainer``.

Example::

    from spherewatch.integrations.hf import MonitorTrainerCallback

    callback = MonitorTrainerCallback(module_path="bert.pooler", tap="pooler", every_n_steps=50)
    trainer = Trainer(model=model, args=TrainingArguments(..., report_to=["tensorboard"]), callbacks=[callback])
    trainer.train()
"""
from __future__ import annotations

import logging
import time
import weakref
from typing import Any, Dict, Optional, Sequence

from transformers import TrainerCallback

from spherewatch.integrations._core import AdapterCore
from spherewatch.integrations._sinks import calling_callbacks, hf_host_sinks
from spherewatch.integrations.sentence_transformers import SentenceTransformerCapture, is_sentence_transformer
from spherewatch.integrations.torch import resolve_module, unwrap_model

try:  # transformers >= 4.41
    from transformers.trainer_callback import ExportableState
except ImportError:  # pragma: no cover - older transformers: no callback state in checkpoints
    class ExportableState:  # type: ignore[no-redef]
        """Stand-in for transformers' ExportableState (absent before 4.41)."""

__all__ = ["MonitorTrainerCallback"]

logger = logging.getLogger("spherewatch.integrations")

# HF rebuilds a stateful callback from the JSON of `state()` when it restores a checkpoint
# (`type(cb)(**state["args"])`, see `Trainer._load_callback_state`); callables (`on_alert`, `select`) and sink
# objects cannot live in that JSON. The rebuilt instance takes them (and the rest of its settings) from the live
# instance the user constructed for the same tap. Weak references only: nothing is kept alive by this table.
_LIVE: "weakref.WeakValueDictionary[str, MonitorTrainerCallback]" = weakref.WeakValueDictionary()


class MonitorTrainerCallback(AdapterCore, TrainerCallback, ExportableState):
    """Watch embedding geometry during ``Trainer.train()``; alert (and optionally stop) when it collapses.

    A thin adapter on :class:`~spherewatch.integrations._core.AdapterCore` (config, sinks, the Monitor's life, state,
    stop): it finds the host's writers and the module to watch, and steps the Monitor.

    * **What is captured**: the output of the submodule at ``module_path`` (e.g. ``"bert.pooler"``,
      ``"bert.encoder.layer.5"``; token outputs ``(B, T, H)`` are mean-pooled with the call's attention mask),
      through a forward hook installed at ``on_train_begin`` on the model the Trainer trains (DDP and
      ``torch.compile`` wrappers are looked through). Only training passes are taken (the model is in training
      mode); evaluation passes never are. Without ``module_path``, feed ``callback.monitor.observe(z)`` yourself
      (e.g. in a ``compute_loss`` override).
    * **When**: at ``on_step_end`` with ``state.global_step`` (once per optimizer step: with gradient
      accumulation one micro-batch per step is taken, every one with ``every_micro_batch=True``).
    * **Where it logs**, on the main process only: into the event file of HF's ``TensorBoardCallback`` (its
      ``tb_writer``) when that callback is active, into the MLflow run of HF's ``MLflowCallback`` (the
      active run; never a second run) when ``"mlflow"`` is in ``report_to``, and into the W&B run of its
      ``WandbCallback`` when ``"wandb"`` is (see :class:`~spherewatch.sinks.WandbSink`). With none of them and no
      configured sink, it writes ``<output_dir>/spherewatch/spherewatch.jsonl``. When training is about to end
      (the last ``on_epoch_end``) it waits until every point reached them, before HF closes its writer and ends its
      run in ``on_train_end``.
    * **Stopping**: ``control.should_training_stop = True`` once a rule with ``action="stop"`` has fired.
    * **Checkpoints**: an ``ExportableState``: the Monitor's state is saved in ``trainer_state.json`` and,
      with ``TrainingArguments(restore_callback_states_from_checkpoint=True)``, restored on resume. HF rebuilds
      the callback from that JSON; callables and sink objects are taken from the callback you passed to the
      resumed ``Trainer`` (matched by tap). A webhook URL is never written to checkpoints: give it again (config or
      ``SPHEREWATCH_WEBHOOK_URL``).
    * **Loss family**: without ``loss_family=``, loss modules inside ``model`` (by class name, as for Lightning)
      give it when they agree on one family (:attr:`inferred_loss_family`).

    Args:
        config: a :class:`~spherewatch.MonitorConfig`, dict or config-file path.
        module_path: dotted path of the watched submodule, relative to the model given to the Trainer.
        tap: tap name in the log keys (default: ``config.default_tap``, ``"embeddings"``).
        select: which part of the module's output holds the embeddings (see ``Monitor.watch``).
        pool: pooling of ``(B, T, H)`` outputs (``"mean"``, ``"first"`` for [CLS], ``"last"``).
        use_host_loggers: log into HF's TensorBoard writer and MLflow run.
        head_path: dotted path of an assignment head (DINO, iBOT, SwAV, MSN; issue 18) whose output holds ``(B, K)``
            logits (a tensor, or ``logits`` of a ``ModelOutput``; ``""``: the model itself), watched as by
            ``Monitor.watch(module, kind="head")`` in training passes, at ``head_temperature``, under ``head_tap``
            (default ``"head"``).
        sinks: more sinks: names (the ``sinks`` config field) and/or sink objects.
        on_alert: callable(s) called with every fired :class:`~spherewatch.Alert`.
        **overrides: ``MonitorConfig`` fields, e.g. ``every_n_steps=50``.

    Attributes:
        monitor: the :class:`~spherewatch.Monitor` of the current (or last) ``train()`` call.

    Raises:
        ValueError: an invalid config value; at ``on_train_begin``, a ``module_path`` that does not exist (the
            message lists close matches).
    """

    def __init__(
        self,
        config: Any = None,
        *,
        module_path: Optional[str] = None,
        tap: Optional[str] = None,
        select: Any = None,
        pool: Optional[str] = None,
        use_host_loggers: bool = True,
        sinks: Optional[Sequence[Any]] = None,
        on_alert: Any = None,
        head_path: Optional[str] = None,
        head_temperature: Any = 1.0,
        head_tap: str = "head",
        _from_checkpoint: bool = False,
        **overrides: Any,
    ) -> None:
        super().__init__(config, sinks=sinks, on_alert=on_alert, **overrides)
        self.module_path = module_path
        self.tap = tap or self.config.default_tap
        self.select = select
        self.pool = pool
        self.use_host_loggers = bool(use_host_loggers)
        self.head_path, self.head_temperature, self.head_tap = head_path, head_temperature, head_tap
        self._close_budget: Optional[float] = None  # what is left of close_timeout after the end-of-training wait
        live = _LIVE.get(self.tap) if _from_checkpoint else None
        if live is not None:
            self._adopt(live)
        elif not _from_checkpoint:
            _LIVE[self.tap] = self

    def _adopt(self, live: "MonitorTrainerCallback") -> None:
        for name in ("config", "module_path", "select", "pool", "use_host_loggers", "_user_sinks", "_on_alert",
                     "head_path", "head_temperature", "head_tap"):
            setattr(self, name, getattr(live, name))

    # ------------------------------------------------------------------ ExportableState
    def state(self) -> Dict[str, Any]:
        """``{"args": ..., "attributes": {"monitor_state": ...}}``, JSON-serialisable, for ``trainer_state.json``."""
        args: Dict[str, Any] = {
            "config": self.config.model_dump(mode="json", exclude_unset=True, exclude={"webhook_url"}),
            "module_path": self.module_path,
            "tap": self.tap,
            "select": self.select if isinstance(self.select, (str, int)) else None,
            "pool": self.pool,
            "use_host_loggers": self.use_host_loggers,
            "head_path": self.head_path,
            "head_temperature": self.head_temperature if isinstance(self.head_temperature, (int, float)) else 1.0,
            "head_tap": self.head_tap,
            "_from_checkpoint": True,
        }
        return {"args": args, "attributes": {"monitor_state": self.monitor_state}}

    # ------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Open the Monitor (with the host's sinks) and install the hook on ``model``'s ``module_path``."""
        sinks = (hf_host_sinks(calling_callbacks(self), args, self.config.prefix, self.config.alert_channels)
                 if (self.use_host_loggers and state.is_world_process_zero) else [])
        self.open_monitor(sinks, args.output_dir, module=model)  # a second train() with the same callback continues
        if model is not None and is_sentence_transformer(unwrap_model(model)):  # module_path None = sentence embedding
            root = unwrap_model(model)
            self.attach(SentenceTransformerCapture(
                self.monitor, root, self.module_path, tap=self.tap, pool=self.pool or self.config.pool,
                when=lambda: root.training, report=self.monitor.report_fault))
        elif self.module_path is not None:
            if model is None:
                raise ValueError("MonitorTrainerCallback needs the model (on_train_begin got model=None) to watch "
                                 f"{self.module_path!r}.")
            root = unwrap_model(model)
            module = resolve_module(root, self.module_path)
            self.attach(self.monitor.watch(module, self.tap, select=self.select, pool=self.pool,
                                           when=lambda: root.training))
        else:
            logger.info("spherewatch: no module_path given; call `callback.monitor.observe(z)` to feed embeddings.")
        if self.head_path is not None:  # the assignment head's logits (issue 18)
            if model is None:
                raise ValueError("MonitorTrainerCallback needs the model (on_train_begin got model=None) to watch "
                                 f"the head {self.head_path!r}.")
            root = unwrap_model(model)
            head = root if self.head_path == "" else resolve_module(root, self.head_path)
            # the Monitor removes its own hooks when it closes (attach() keeps the embeddings' capture)
            self.monitor.watch(head, self.head_tap, kind="head", temperature=self.head_temperature,
                               when=lambda: root.training)
        return control

    def on_step_end(self, args, state, control, **kwargs):
        """Step the Monitor at ``state.global_step``; request a stop when a stop rule fired."""
        if self.monitor is not None:
            if hasattr(self.capture, "before_step"):  # sentence-transformers: lone anchors, never-fired check
                self.capture.before_step(int(state.global_step))
            self.monitor.step(int(state.global_step))
            if self.should_stop:
                control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        """When training is about to end, wait until the Monitor handed everything to the sinks: HF's own callbacks
        come first in the list, and in ``on_train_end`` the ``TensorBoardCallback`` closes the writer shared with
        spherewatch (a point written after that would open a second event file) and ``MLflowCallback`` ends its run.
        ``on_epoch_end`` is the last event before that on every way out of the loop (max_steps, a stop rule, early
        stopping); at the end of other epochs nothing waits."""
        if self.monitor is not None and (control.should_training_stop or state.global_step >= state.max_steps):
            budget = float(self.monitor.config.close_timeout)
            started = time.monotonic()
            self.monitor.flush(budget)
            # the end of training waits at most close_timeout in all, this wait and close()'s together
            self._close_budget = max(0.0, budget - (time.monotonic() - started))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        """Remove the hook, flush and close the Monitor's sinks (the host's writer and run stay open)."""
        budget, self._close_budget = self._close_budget, None
        self.close_monitor(budget)
        return control
