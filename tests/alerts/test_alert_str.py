"""An alert's printed form (the CollapseWarning, the log record): a headline, then what it means and what to check,
each line within 120 characters (the headline's first line leaves room for the warning's ``file:line:`` prefix), and
each alert delivered once per channel."""
import warnings

import spherewatch as sw
from spherewatch.alerts.alert import PREFIX_ROOM, WIDTH, Alert, split_message
from spherewatch.demo import run_scenario


def test_collapse_alerts_print_short_with_their_advice():
    mon = sw.Monitor(every_n_steps=10, sinks=("memory",), warn=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_scenario("simsiam_no_stopgrad", mon, steps=120)
    mon.close()
    collapse = [a for a in mon.alerts if a.kind == "collapse" and a.status == "fired"]
    assert collapse
    shown = [str(w.message) for w in caught if issubclass(w.category, sw.CollapseWarning)]
    assert shown == [str(a) for a in collapse]  # once each, as a warning, nothing else
    for text in shown:
        lines = text.splitlines()
        assert lines[0].startswith("[spherewatch ") and len(lines[0]) <= WIDTH - PREFIX_ROOM
        assert all(len(line) <= WIDTH for line in lines)
        assert sum(line.startswith("  what it means: ") for line in lines) == 1
        assert sum(line.startswith("  check: ") for line in lines) == 1
        assert " Check " not in text  # the advice is on its own line, not inside the headline


def test_split_message_reads_the_rules_form_and_leaves_others_whole():
    head, what, check = split_message(
        "uniformity rose above -0.4 to -0.2 at step 7 (tap 'enc'): embeddings are losing spread on the sphere — "
        "possible collapse. Check the learning rate.", "spherewatch/enc/uniformity")
    assert head == "uniformity rose above -0.4 to -0.2 at step 7 (tap 'enc')"
    assert what == "embeddings are losing spread on the sphere — possible collapse" and check == "the learning rate"
    assert split_message("something odd happened at 0.5.", "x") == ("something odd happened at 0.5", "", "")
    alert = Alert("custom", "spherewatch/uniformity", -0.2, 7, message="custom rule fired")
    assert str(alert) == "[spherewatch warning] step 7: custom rule fired (spherewatch/uniformity=-0.2)"
