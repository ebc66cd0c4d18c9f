import re

import numpy as np
import pytest

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from torch.utils.tensorboard import SummaryWriter

from spherewatch.alerts.alert import Alert
from spherewatch.sinks import TensorBoardSink

SIZE_ALL = {"compressedHistograms": 0, "images": 0, "audio": 0, "scalars": 0, "histograms": 0, "tensors": 0}


def _read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance=SIZE_ALL)
    acc.Reload()
    return acc


def test_scalars_histogram_alert_and_layout_read_back_from_event_files(tmp_path):
    sink = TensorBoardSink(str(tmp_path))
    for step, u in [(0, -3.8), (10, -3.1), (20, -1.5)]:
        sink.log_scalars(step, {
            "spherewatch/uniformity": u,
            "spherewatch/encoder/uniformity": u - 0.1,
            "spherewatch/effective_rank": 100.0 - step,
        })
    sink.log_histogram(20, "spherewatch/spectrum", np.array([0.5, 0.3, 0.2, 0.0, np.nan]))
    sink.log_alert(Alert(rule="uniformity_degradation", key="spherewatch/uniformity", value=-1.5,
                         step=20, severity="warning", message="embeddings are losing spread"))
    sink.close()

    acc = _read(tmp_path)
    events = acc.Scalars("spherewatch/uniformity")
    assert [e.step for e in events] == [0, 10, 20]
    assert [e.value for e in events] == pytest.approx([-3.8, -3.1, -1.5])
    assert [e.value for e in acc.Scalars("spherewatch/encoder/uniformity")] == pytest.approx([-3.9, -3.2, -1.6])
    assert [e.step for e in acc.Scalars("spherewatch/effective_rank")] == [0, 10, 20]

    (hist,) = acc.Histograms("spherewatch/spectrum")
    assert hist.step == 20
    assert hist.histogram_value.num == 4  # the NaN is left out
    assert hist.histogram_value.max == pytest.approx(0.5)

    (text,) = acc.Tensors("spherewatch/alerts/text_summary")
    assert text.step == 20
    markdown = text.tensor_proto.string_val[0].decode()
    assert "WARNING" in markdown and "uniformity_degradation" in markdown and "losing spread" in markdown

    assert "custom_scalars__config__" in acc.PluginTagToContent("custom_scalars")
    layouts = acc.Tensors("custom_scalars__config__")
    assert len(layouts) == 1  # written once, though log_scalars ran three times
    layout = layout_pb2.Layout.FromString(layouts[0].tensor_proto.string_val[0])
    (category,) = layout.category  # (H11) the catalogue's categories; tests/report/test_dashboards.py has the rest
    assert category.title == "Collapse overview" and not category.closed
    charts = {chart.title: list(chart.multiline.tag) for chart in category.chart}
    # one chart per metric, a line per tap, for both key schemes; never the alert counter or a fault key
    tags = ["spherewatch/uniformity", "spherewatch/embeddings/uniformity", "spherewatch/encoder/uniformity",
            "spherewatch/uniformity_pos", "spherewatch/alerts/uniformity", "spherewatch/monitor/uniformity",
            "spherewatch/effective_rank", "spherewatch/a/b/effective_rank", "train/uniformity"]
    for title, expected in (("uniformity", tags[:3]), ("effective rank", tags[6:7])):
        (pattern,) = charts[title]
        assert [t for t in tags if re.match(pattern, t)] == expected, title


def test_external_writer_is_flushed_but_never_closed(tmp_path):
    writer = SummaryWriter(log_dir=str(tmp_path))
    sink = TensorBoardSink(writer=writer)
    sink.log_scalars(1, {"spherewatch/mean_cosine": 0.25})
    sink.close()
    sink.close()
    assert writer.all_writers is not None  # still open: the host owns it
    writer.add_scalar("loss", 1.5, global_step=2)  # the host keeps logging
    writer.close()
    acc = _read(tmp_path)
    assert [e.value for e in acc.Scalars("spherewatch/mean_cosine")] == [0.25]
    assert [e.step for e in acc.Scalars("loss")] == [2]


def test_custom_scalars_can_be_switched_off_for_a_host_with_its_own_layout(tmp_path):
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        sink = TensorBoardSink(writer=writer, custom_scalars=False)
        sink.log_scalars(1, {"spherewatch/uniformity": -3.0})
        sink.close()
    acc = _read(tmp_path)
    assert [e.value for e in acc.Scalars("spherewatch/uniformity")] == [-3.0]
    assert "custom_scalars__config__" not in acc.Tags()["tensors"]


def test_histogram_without_finite_values_raises_value_error(tmp_path):
    with TensorBoardSink(str(tmp_path)) as sink, pytest.raises(ValueError, match="none of its 2 values is finite"):
        sink.log_histogram(0, "spherewatch/spectrum", [float("nan"), float("inf")])


def test_writer_without_the_needed_methods_is_rejected_with_the_fix():
    class NotAWriter:
        def add_scalar(self, *args, **kwargs):
            pass

    with pytest.raises(TypeError, match="lacks add_histogram, add_text, flush"):
        TensorBoardSink(writer=NotAWriter())
