"""examples/dino.py runs (plain PyTorch DINO on the digits) and logs its two taps: the backbone and the head."""
import importlib.util
import pathlib

import torch

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "dino.py"


def test_dino_example_runs_and_logs_the_backbone_and_the_head(tmp_path):
    spec = importlib.util.spec_from_file_location("example_dino", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mon = mod.main(["--steps", "60", "--every", "20", "--sinks", "jsonl", "--log-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    keys = set(mon.last_values)
    assert {"spherewatch/backbone/effective_rank", "spherewatch/head/teacher_entropy",
            "spherewatch/head/prototypes_in_use", "spherewatch/head/teacher_student_kl"} <= keys
    assert (tmp_path / "spherewatch.jsonl").exists()
