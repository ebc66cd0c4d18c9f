"""Issue 22 row 11: a checkpoint is validated at `load_state_dict`: run keys are names, not paths; steps are
integers. A bad one fails there, naming the key, instead of creating folders elsewhere or failing at a later step."""
from __future__ import annotations

import os

import pytest
import torch


@pytest.mark.parametrize("run_key", ["../outside", "/tmp/abs", "a/b", "..", 5])
def test_a_run_key_that_is_a_path_is_refused_at_load(run_key, make_monitor, tmp_path):
    mon = make_monitor(sinks=("jsonl",), every_n_steps=1)
    state = mon.state_dict()
    state["writer"] = dict(state["writer"], run_key=run_key)
    with pytest.raises(ValueError, match="run_key"):
        mon.load_state_dict(state)
    mon.observe(torch.randn(16, 4))
    mon.step(0)
    mon.close()
    assert not os.path.exists(tmp_path / "outside") and not os.path.exists("/tmp/abs")


@pytest.mark.parametrize("key,value", [("last_step", "abc"), ("next_eval", True), ("evaluations", -1),
                                       ("next_spectral", 1.5), ("should_stop", "yes")])
def test_a_step_that_is_not_an_integer_is_refused_at_load(key, value, make_monitor):
    mon = make_monitor(sinks=("memory",), every_n_steps=2)
    for step in range(3):
        mon.observe(torch.randn(16, 4))
        mon.step(step)
    good = mon.state_dict()
    with pytest.raises(ValueError, match=key):
        mon.load_state_dict(dict(good, **{key: value}))
    assert mon.state_dict() == good  # nothing was taken from the bad state
    mon.observe(torch.randn(16, 4))
    mon.step(3)  # and training goes on


@pytest.mark.parametrize("how", ["pickle", "deepcopy"])
def test_pickling_a_monitor_names_the_fix(how, make_monitor):
    import copy
    import pickle

    mon = make_monitor(sinks=("memory",))
    with pytest.raises(TypeError, match=r"cannot be pickled.*state_dict\(\)"):
        pickle.dumps(mon) if how == "pickle" else copy.deepcopy(mon)
