"""LoggingChannel, CallableChannel and AlertDispatcher."""
import dataclasses
import logging
import warnings

import pytest

from spherewatch.alerts import Alert, AlertDispatcher, CallableChannel, Channel, LoggingChannel
from spherewatch.errors import CollapseWarning, MonitorFault, SpherewatchError


def make_alert(severity="warning", step=10, message="uniformity rose from -3.4 to -0.9"):
    return Alert("uniformity_degradation", "spherewatch/uniformity", -0.9, step, severity, message)


def test_logging_channel_delivers_once_as_a_warning_without_a_log_line(caplog):
    caplog.set_level(logging.INFO, logger="spherewatch")
    alert = make_alert()
    with pytest.warns(CollapseWarning, match="uniformity rose from -3.4 to -0.9") as got:
        LoggingChannel().send(alert)
    assert len(got) == 1 and str(got[0].message) == str(alert)
    assert [r for r in caplog.records if r.name == "spherewatch"] == []  # the warning is the delivery


def test_logging_channel_critical_warns_info_and_resolved_only_log(caplog):
    caplog.set_level(logging.INFO, logger="spherewatch")
    channel = LoggingChannel()
    with pytest.warns(CollapseWarning):
        channel.send(make_alert("critical"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning would raise
        channel.send(make_alert("info"))
        channel.send(dataclasses.replace(make_alert("critical"), status="resolved"))
    assert [r.levelno for r in caplog.records if r.name == "spherewatch"] == [logging.INFO, logging.INFO]


def test_faults_are_monitor_fault_warnings_not_collapse_warnings(caplog):
    caplog.set_level(logging.INFO, logger="spherewatch")
    fault = Alert("monitor_fault", "spherewatch/monitor/capture:x", float("nan"), 3, message="capture:x failed",
                  kind="fault")
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        LoggingChannel().send(fault)
    assert [w.category for w in got] == [MonitorFault]
    assert not issubclass(MonitorFault, CollapseWarning)
    LoggingChannel(warn=False).send(fault)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [(logging.ERROR, str(fault))]
    assert str(fault) == "capture:x failed (step 3)"


def test_warning_points_at_the_callers_line_outside_spherewatch():
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        LoggingChannel().send(make_alert())  # this line
    assert got[0].filename == __file__


def test_logging_channel_warn_false_and_custom_logger(caplog):
    logger = logging.getLogger("spherewatch.custom")
    caplog.set_level(logging.INFO, logger="spherewatch.custom")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LoggingChannel(logger, warn=False).send(make_alert())
    assert [r.name for r in caplog.records] == ["spherewatch.custom"]
    with pytest.raises(TypeError, match="logging.Logger or a logger name"):
        LoggingChannel(logger=42)


def test_collapse_warning_can_be_escalated_to_an_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        with pytest.raises(CollapseWarning):
            LoggingChannel().send(make_alert())


def test_dispatcher_does_not_swallow_an_escalated_warning_and_still_delivers_everything():
    got = []
    dispatcher = AlertDispatcher([LoggingChannel(), CallableChannel(got.append)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        with pytest.raises(CollapseWarning):
            dispatcher.dispatch([make_alert(step=1), make_alert(step=2)])
    assert [a.step for a in got] == [1, 2] and dispatcher.errors == {}


def test_callable_channel_calls_fn_with_the_alert():
    got = []
    channel = CallableChannel(got.append)
    alert = make_alert()
    channel.send(alert)
    channel.close()
    assert got == [alert] and got[0] is alert
    with pytest.raises(TypeError, match="callable"):
        CallableChannel("not callable")


def test_base_channel_send_is_abstract():
    with pytest.raises(NotImplementedError, match="send"):
        Channel().send(make_alert())


class Broken(Channel):
    def __init__(self):
        self.calls = 0

    def send(self, alert):
        self.calls += 1
        raise ConnectionError("endpoint down")

    def close(self, timeout=5.0):
        raise OSError("cannot close")

    def __repr__(self):
        return "Broken()"


def test_dispatcher_survives_a_raising_channel_and_reports_once(caplog):
    caplog.set_level(logging.ERROR, logger="spherewatch.alerts")
    before, after, errors = [], [], []
    broken = Broken()
    dispatcher = AlertDispatcher(
        [CallableChannel(before.append), broken, CallableChannel(after.append)],
        on_error=lambda ch, err: errors.append((ch, err)),
    )
    alerts = [make_alert(step=s) for s in range(3)]
    dispatcher.dispatch(alerts[:2])
    dispatcher.dispatch(alerts[2])  # a single Alert is accepted too
    assert before == alerts and after == alerts and broken.calls == 3
    assert dispatcher.errors == {1: 3}
    assert len(errors) == 1 and errors[0][0] is broken and isinstance(errors[0][1], ConnectionError)
    reports = [r for r in caplog.records if r.name == "spherewatch.alerts"]
    assert len(reports) == 1 and "Broken()" in reports[0].getMessage() and "endpoint down" in reports[0].getMessage()


def test_dispatcher_strict_raises_spherewatch_error():
    dispatcher = AlertDispatcher([Broken()], strict=True)
    with pytest.raises(SpherewatchError, match="Broken.*send.*ConnectionError: endpoint down") as info:
        dispatcher.dispatch([make_alert()])
    assert isinstance(info.value.__cause__, ConnectionError)


def test_dispatcher_close_closes_every_channel_and_reports_close_failures(caplog):
    closed = []

    class Closable(Channel):
        def send(self, alert):
            pass

        def close(self, timeout=5.0):
            closed.append(timeout)

    caplog.set_level(logging.ERROR, logger="spherewatch.alerts")
    with AlertDispatcher([Broken(), Closable()], strict=False) as dispatcher:
        pass
    dispatcher.close()  # idempotent
    assert len(closed) == 1 and 0 <= closed[0] <= 5.0
    assert any("close()" in r.getMessage() for r in caplog.records)


def test_dispatcher_rejects_non_channels():
    with pytest.raises(TypeError, match="send"):
        AlertDispatcher([object()])
    with pytest.raises(TypeError, match="on_error"):
        AlertDispatcher([], on_error=3)
