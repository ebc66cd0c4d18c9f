"""Delivery: how records get from the training thread to the sinks, one job per module.

* :mod:`~spherewatch.delivery.record` -- the record types and their one versioned codec (a JSON line each), the
  non-finite float codec and the alert codec every writer and reader uses;
* :mod:`~spherewatch.delivery.files` -- private folders and files, atomic JSON;
* :mod:`~spherewatch.delivery.worker` -- the writer thread and its queue (barrier, close with a deadline, errors
  stored and surfaced);
* :mod:`~spherewatch.delivery.spool` -- the spool: a sink's backlog file, a run's folder (lock, ``run.json``),
  the queue's overflow files;
* :mod:`~spherewatch.delivery.retry` -- :class:`~spherewatch.delivery.retry.ResilientSink`, the retrying wrapper;
* :mod:`~spherewatch.delivery.registry` -- one entry per sink backend (check, spec, build, local, rebuildable);
* :mod:`~spherewatch.delivery.sinkset` -- the opened sinks of a run (and of a crashed run's spool, replayed);
* :mod:`~spherewatch.delivery.writer` -- :class:`~spherewatch.delivery.writer.RecordWriter`, the façade the Monitor
  uses.

Only the codec is imported here (it is light, and sinks use it); import the other modules by name.
"""
from spherewatch.delivery.record import FORMAT_VERSION, decode, decode_float, encode, encode_float

__all__ = ["FORMAT_VERSION", "decode", "decode_float", "encode", "encode_float"]
