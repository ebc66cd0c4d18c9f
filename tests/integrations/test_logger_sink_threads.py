"""A Lightning logger written from two threads at once: spherewatch's writer thread (LoggerSink) and the training
thread (Lightning's own log_metrics/save). CSVLogger's save writes its pending rows, then clears them, so unserialised
calls write a row twice or lose one; with the sink's lock every row lands exactly once."""
import csv
import os
import threading

import pytest

pytest.importorskip("lightning")

from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from spherewatch.integrations._sinks import LoggerSink  # noqa: E402

ROUNDS = 400


def test_rows_from_the_writer_and_the_training_thread_each_land_once(tmp_path):
    host = CSVLogger(tmp_path, name="csv")
    sink = LoggerSink(host)
    start = threading.Barrier(2)

    def writer():  # what spherewatch's writer thread does, one evaluation at a time
        start.wait()
        for step in range(ROUNDS):
            sink.log_scalars(step, {"spherewatch/uniformity": -2.0})
            sink.flush()

    thread = threading.Thread(target=writer)
    thread.start()
    start.wait()
    for step in range(ROUNDS):  # what Lightning does on the training thread
        host.log_metrics({"train/loss": 1.0}, step=step)
        host.save()
    thread.join()
    sink.close()
    host.save()
    with open(os.path.join(host.log_dir, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    ours = sorted(int(r["step"]) for r in rows if r.get("spherewatch/uniformity"))
    theirs = sorted(int(r["step"]) for r in rows if r.get("train/loss"))
    assert ours == list(range(ROUNDS)) and theirs == list(range(ROUNDS))
    assert "log_metrics" not in vars(host) and "save" not in vars(host)  # the logger's own methods again at close
