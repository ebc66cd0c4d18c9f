"""What a newcomer sees on a mistake or a plain run (issue 19, point 7): a bad shape is reported once, without the
misleading "call monitor.observe(z)" line; no empty `spool/` folder is left in the log dir; a config typo's
did-you-mean is not followed by every field name."""
import logging
import os
import warnings

import pytest
import torch

import spherewatch as sw
from spherewatch.errors import MonitorFault


def test_a_1d_tensor_is_reported_once_and_not_as_a_missing_observe(tmp_path, caplog):
    mon = sw.Monitor(every_n_steps=1, sinks=("jsonl",), log_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="spherewatch"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(4):
            mon.observe(torch.randn(64))
            mon.step(step)
    mon.close()
    faults = [w for w in caught if issubclass(w.category, MonitorFault)]
    assert len(faults) == 1 and "2-D tensor (N, D), got" in str(faults[0].message) and "(64,)" in str(faults[0].message)
    assert not [r for r in caplog.records if "no usable embeddings" in r.getMessage()]


def test_no_observe_at_all_still_says_to_call_observe(tmp_path, caplog):
    mon = sw.Monitor(every_n_steps=1, sinks=("jsonl",), log_dir=str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        for step in range(3):
            mon.step(step)
    mon.close()
    assert sum("no usable embeddings" in r.getMessage() for r in caplog.records) == 1


def test_no_empty_spool_folder_is_left_in_the_log_dir(tmp_path):
    log_dir = tmp_path / "run"
    with sw.Monitor(every_n_steps=1, sinks=("jsonl",), log_dir=str(log_dir), warn=False) as mon:
        for step in range(3):
            mon.observe(torch.randn(32, 8))
            mon.step(step)
        assert mon.flush(60.0)  # the sinks (and the run's folder) are opened by the writer's thread: wait for it
        assert (log_dir / "spool").is_dir()  # the run's lock folder lives there while it runs
    assert sorted(os.listdir(log_dir)) == ["spherewatch.jsonl"]


def test_a_spool_folder_the_user_made_is_kept(tmp_path):
    spool = tmp_path / "my-spool"
    spool.mkdir()
    with sw.Monitor(every_n_steps=1, sinks=("jsonl",), log_dir=str(tmp_path / "run"), spool_dir=str(spool)) as mon:
        mon.observe(torch.randn(32, 8))
        mon.step(0)
    assert spool.is_dir() and os.listdir(spool) == []


def test_a_config_typo_gets_a_did_you_mean_without_the_field_list():
    with pytest.raises(Exception) as err:
        sw.Monitor(every_n_step=5)
    text = str(err.value)
    assert "Did you mean 'every_n_steps'?" in text and "start_step" not in text
    with pytest.raises(Exception) as err:
        sw.Monitor(zzzz=1)
    text = str(err.value)
    assert "Fields:" in text and "every_n_steps" in text  # no close match: the fields, wrapped
    assert all(len(line) <= 130 for line in text.splitlines())
