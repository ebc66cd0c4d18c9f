"""``MonitorCallback`` for the ``pytorch_lightning`` package (see ``spherewatch.integrations.lightning``).

Example::

    import pytorch_lightning as pl
    from spherewatch.integrations.pytorch_lightning import MonitorCallback

    trainer = pl.Trainer(callbacks=[MonitorCallback(module_path="encoder", every_n_steps=50)],
                         logger=pl.loggers.TensorBoardLogger("runs"))
    trainer.fit(model, data)
"""
from __future__ import annotations

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger

from spherewatch.integrations._lightning_core import LightningMonitorCallbackCore

__all__ = ["MonitorCallback"]


class MonitorCallback(LightningMonitorCallbackCore, Callback):
    """:class:`spherewatch.integrations.lightning.MonitorCallback` for the ``pytorch_lightning`` package.

    Same arguments and behaviour; it subclasses ``pytorch_lightning.Callback`` and recognises
    ``pytorch_lightning``'s ``TensorBoardLogger`` and ``MLFlowLogger``.
    """

    _tensorboard_logger_types = (TensorBoardLogger,)
    _mlflow_logger_types = (MLFlowLogger,)
