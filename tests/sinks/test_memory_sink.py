import numpy as np

from spherewatch.alerts.alert import Alert
from spherewatch.sinks import MemorySink

U = "spherewatch/uniformity"
R = "spherewatch/encoder/effective_rank"


def test_memory_sink_keeps_history_last_value_and_keys_in_order():
    sink = MemorySink()
    assert sink.last(U) is None and sink.history(U) == [] and sink.keys() == []
    sink.log_scalars(0, {U: -3.9})
    sink.log_scalars(10, {R: 100.0, U: -3.5})
    assert sink.history(U) == [(0, -3.9), (10, -3.5)]
    assert sink.history(R) == [(10, 100.0)]
    assert sink.last(U) == -3.5
    assert sink.keys() == [U, R]
    assert sink.scalars == [(0, {U: -3.9}), (10, {R: 100.0, U: -3.5})]


def test_memory_sink_copies_histograms_and_keeps_alerts():
    sink = MemorySink()
    values = np.array([3.0, 2.0, 1.0])
    sink.log_histogram(5, "spherewatch/spectrum", values)
    values[0] = 99.0  # the caller reuses its buffer
    alert = Alert(rule="r", key=U, value=-0.5, step=5)
    sink.log_alert(alert)
    (step, key, stored), = sink.histograms
    assert (step, key) == (5, "spherewatch/spectrum")
    np.testing.assert_array_equal(stored, [3.0, 2.0, 1.0])
    assert sink.alerts == [alert]
