"""The Monitor's record writer, kept importable here: it lives in :mod:`spherewatch.delivery` (the façade in
:mod:`spherewatch.delivery.writer`, the sink registry in :mod:`spherewatch.delivery.registry`)."""
from spherewatch.delivery.registry import check_sink_names
from spherewatch.delivery.writer import RecordWriter, split_sink_args

__all__ = ["RecordWriter", "check_sink_names", "split_sink_args"]
