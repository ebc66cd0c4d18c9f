"""sentence-transformers through MonitorTrainerCallback: SentenceTransformerTrainer on generated sentence pairs, a
WordLevel tokenizer trained here and a tiny BERT built from a config (nothing downloaded)."""
from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
pytest.importorskip("sentence_transformers")

from scenarios.sentence_pairs import run_sentence_scenario  # noqa: E402

from spherewatch.integrations.hf import MonitorTrainerCallback  # noqa: E402

U = "spherewatch/"


@pytest.fixture(scope="module")
def model_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("st-models"))


def test_healthy_mnrl_fine_tune_logs_the_pair_and_raises_no_alert(model_root):
    cb = MonitorTrainerCallback(sinks=("memory",), warn=False)
    run_sentence_scenario("st_mnrl", cb, model_root, seed=0, steps=200)
    assert cb.monitor.alerts == [], [str(a) for a in cb.monitor.alerts]
    history = cb.monitor.sink("memory").scalars
    first, last = history[0][1], history[-1][1]
    # the mean-pooled random transformer starts anisotropic and MNRL spreads it out: never alerted
    assert first[U + "mean_cosine"] > 0.85 and last[U + "uniformity"] < -2.5
    # both columns of MNRL are captured as the pair: alignment is logged; rows = the batch size
    assert U + "alignment" in last and last[U + "rows"] == 32


def test_cosine_loss_on_random_pairs_is_alerted_within_one_interval_and_critical_only_once_real(model_root):
    cb = MonitorTrainerCallback(sinks=("memory",), warn=False)
    run = run_sentence_scenario("st_random_pairs", cb, model_root, seed=0, steps=150)
    alerts = list(cb.monitor.alerts)
    assert run.onset is not None and alerts
    assert min(a.step for a in alerts) <= run.onset + cb.config.every_n_steps
    assert min(a.step for a in alerts if a.severity == "critical") >= run.onset


@pytest.mark.parametrize("module_path", ["0", "1"])
def test_transformer_and_pooling_modules_are_captured(model_root, module_path):
    cb = MonitorTrainerCallback(module_path=module_path, sinks=("memory",), warn=False, every_n_steps=2)
    run_sentence_scenario("st_mnrl", cb, model_root, seed=0, steps=4, probe_every=100)
    values = cb.monitor.sink("memory").scalars[-1][1]
    assert values[U + "rows"] == 32 and U + "alignment" in values
    assert not any(k.startswith("capture") for k in cb.monitor.faults)


def test_a_module_whose_forward_is_called_directly_is_reported_once(model_root, caplog):
    cb = MonitorTrainerCallback(module_path="0.model", sinks=("memory",), warn=False, every_n_steps=2)
    with caplog.at_level(logging.WARNING, logger="spherewatch"):
        run_sentence_scenario("st_mnrl", cb, model_root, seed=0, steps=4, probe_every=100)
    text = [r.getMessage() for r in caplog.records if "never fired" in r.getMessage()]
    assert text and "module_path=None" in text[0] and "'1'" in text[0]
    assert cb.monitor.faults["capture:embeddings"] == 1  # one report, not one per step
    # nothing was recorded: the memory sink holds no scalars (or was never opened: sinks open at the first record)
    assert all(s.scalars == [] for s in cb.monitor.sinks if getattr(s, "name", None) == "memory")
