"""Fault row 9: untrusted input. Config files are parsed, never evaluated; files the monitor writes are never
world-writable, whatever the umask."""
from __future__ import annotations

import os
import stat

import pytest
from reliability._harness import TinyTrainer

import spherewatch as sw
from spherewatch.config import MonitorConfig, load_config

PAYLOADS = {
    "object/apply in a value": "every_n_steps: !!python/object/apply:os.system ['touch {marker}']\n",
    "object/new at the top": "!!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    "object/apply in a rule": "rules:\n  - !!python/object/apply:subprocess.check_call [['touch', '{marker}']]\n",
    "python/name": "sinks: !!python/name:os.system ''\n",
    "python/module": "log_dir: !!python/module:os\n",
}


@pytest.mark.parametrize("payload", list(PAYLOADS))
def test_yaml_tags_that_build_python_objects_are_refused_and_nothing_runs(payload, tmp_path):
    pytest.importorskip("yaml")
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(PAYLOADS[payload].format(marker=marker))
    for load in (lambda: load_config(path), lambda: MonitorConfig.from_file(path),
                 lambda: sw.Monitor(str(path), sinks=("memory",))):
        with pytest.raises(ValueError) as info:
            load()
        message = str(info.value)
        assert str(path) in message and "!!python/object are refused" in message
        assert "tag:yaml.org,2002:python/" in message  # the refused tag is named
    assert not marker.exists(), "the payload ran"


def test_files_the_monitor_writes_are_not_world_writable_even_with_umask_zero(make_monitor, tmp_path):
    pytest.importorskip("tensorboard")
    runs = tmp_path / "runs" / "deep" / "exp"  # folders the monitor creates, several levels
    old = os.umask(0)
    try:
        mon = make_monitor(sinks=("tensorboard", "jsonl"), log_dir=str(runs), every_n_steps=2)
        TinyTrainer().run(mon, range(6))
        mon.close()
        # a sink on a full disk: its backlog goes to a spool file (in folders the monitor creates)
        full = make_monitor(sinks=("jsonl",), jsonl_path="/dev/full", spool_dir=str(tmp_path / "spool" / "deep"),
                            every_n_steps=2)
        TinyTrainer().run(full, range(6))
        full.close()
    finally:
        os.umask(old)
    written = sorted(p for p in tmp_path.rglob("*"))
    names = {p.name for p in written}
    assert "spherewatch.jsonl" in names and "jsonl-0.spool.jsonl" in names
    assert any(n.startswith("events.out.tfevents.") for n in names)
    open_to_all = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode))
                   for p in written if p.stat().st_mode & stat.S_IWOTH}
    assert open_to_all == {}, f"world-writable: {open_to_all}"
