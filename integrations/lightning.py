"""``MonitorCallback``: spherewatch for ``lightning.pytorch`` (``pytorch_lightning``: see ``pytorch_lightning.py``).

Example::

    import lightning.pytorch as pl
    from spherewatch.integrations.lightning import MonitorCallback

    trainer = pl.Trainer(callbacks=[MonitorCallback(module_path="encoder", every_n_steps=50)],
                         logger=pl.loggers.TensorBoardLogger("runs"))
    trainer.fit(model, data)
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger

from spherewatch.integrations._lightning_core import LightningMonitorCallbackCore

__all__ = ["MonitorCallback"]


class MonitorCallback(LightningMonitorCallbackCore, Callback):
    """Watch embedding geometry in a Lightning ``Trainer`` fit; alert (and optionally stop) when it collapses.

    A thin adapter, like Lightning's ``SpikeDetection``: it pulls embeddings out of the run and hands them to a
    :class:`spherewatch.Monitor`, which decides when to sample, computes the metrics and fires the alerts.

    * **What is captured**: the output of a submodule (``module_path="encoder"``, a path relative to the
      LightningModule; ``torch.compile`` wrappers are looked through), or a tensor of the dict that
      ``training_step`` returns (``output_key="z"``, plus ``output_key_pos="z_pos"`` for the paired view that
      alignment needs and ``labels_key="y"`` for label-aware metrics). Only training forward passes are taken:
      the sanity check and validation passes never are.
    * **When**: ``trainer.global_step`` is the step; the Monitor steps once per optimizer step (so gradient
      accumulation takes one micro-batch per step).
    * **Where it logs**: through the trainer's own loggers: a ``TensorBoardLogger``'s writer (the run's event
      file), an ``MLFlowLogger``'s run (no second run) and, for any other logger, its ``log_metrics``. Values are
      also logged with ``pl_module.log(key, value, logger=False)``, so ``EarlyStopping(monitor=...)`` and
      ``ModelCheckpoint(monitor=...)`` can use a key such as ``"spherewatch/effective_rank"``. With no
      logger and no configured sink, it writes ``<default_root_dir>/spherewatch/spherewatch.jsonl``.
    * **Validation-epoch metrics** (optional, ``val_tap="val_embeddings"``): the same source is also read during
      validation (the first ``max_samples`` rows of the epoch); the metrics are computed at the end of each
      validation epoch and logged under ``<prefix>/<val_tap>/<metric>`` at the current global step.
    * **Stopping**: when a rule with ``action="stop"`` fires, ``trainer.should_stop`` is set (OR-reduced
      across ranks).
    * **Checkpoints**: the Monitor's state (schedule position, alert state, alerts) is saved with the
      checkpoint under :attr:`state_key`, which includes the tap, so several callbacks (one per tap) coexist.
    * **Loss family**: without ``loss_family=``, the loss modules among the LightningModule's submodules
      (lightly's ``BarlowTwinsLoss``, ``NegativeCosineSimilarity``, ``DINOLoss`` ... by class name) give it when
      they agree on one family (:attr:`inferred_loss_family`; logged once at INFO).

    Args:
        config: a :class:`~spherewatch.MonitorConfig`, dict or config-file path (see ``spherewatch.Monitor``).
        module_path: dotted path of the submodule whose output is watched, e.g. ``"encoder"``, ``"backbone.layer4"``.
        output_key: key of ``training_step``'s returned dict holding the embeddings (instead of ``module_path``).
        output_key_pos: key of the paired view (``z_pos``) in that dict.
        labels_key: key of integer class labels in that dict.
        tap: tap name in the log keys (default: ``config.default_tap``, ``"embeddings"``).
        select: which part of the watched module's output holds the embeddings (see ``Monitor.watch``).
        pool: pooling of ``(B, T, H)`` outputs (``"mean"``, ``"first"``, ``"last"``; default: ``config.pool``).
        val_tap: also compute the metrics over each validation epoch's embeddings, under this tap.
        log_to_module: also ``pl_module.log`` the values (for ``EarlyStopping`` / ``ModelCheckpoint``).
        use_loggers: log through ``trainer.loggers``.
        sinks: more sinks: names (the ``sinks`` config field) and/or sink objects.
        on_alert: callable(s) called with every fired :class:`~spherewatch.Alert`.
        head: an assignment head (DINO, iBOT, SwAV, MSN; issue 18): where its logits are in ``training_step``'s
            returned dict, e.g. ``{"teacher": "teacher_logits", "student": "student_logits", "teacher_temp":
            "teacher_temp", "student_temp": 0.1}`` (temperatures: numbers, callables or keys of that dict; also
            ``center``, ``probs``, ``tap``); logged under ``<prefix>/head/...`` (see ``Monitor.observe_head``).
            With ``head=``, ``module_path`` / ``output_key`` may both be left out (the head alone is watched).
        **overrides: ``MonitorConfig`` fields, e.g. ``every_n_steps=50, preset="full"``.

    Attributes:
        monitor: the :class:`~spherewatch.Monitor` of the current (or last) fit: ``monitor.alerts``,
            ``monitor.last_values``.
        val_monitor: the Monitor that evaluates the validation epochs (``Monitor.evaluate_now``): the same object as
            ``monitor`` (``None`` without ``val_tap``).

    Raises:
        ValueError: neither or both of ``module_path`` / ``output_key``; an invalid config value; at
            ``fit`` start, a ``module_path`` that does not exist (the message lists close matches).
    """

    _tensorboard_logger_types = (TensorBoardLogger,)
    _mlflow_logger_types = (MLFlowLogger,)
