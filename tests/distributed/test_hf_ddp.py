"""HF Trainer under torchrun (2 processes, gloo on CPU): both ranks stop at the same step, rank zero logs."""
import json
import os
import subprocess
import sys

import pytest
from mlflow_server import free_port

SCRIPT = os.path.join(os.path.dirname(__file__), "_hf_ddp_script.py")


@pytest.mark.timeout(300)
def test_hf_trainer_ddp_stops_everywhere_and_logs_on_rank_zero(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", SCRIPT, str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=280, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    finals = [json.loads((tmp_path / f"final_{r}.json").read_text()) for r in (0, 1)]
    assert finals[0]["world"] == finals[1]["world"] == 2
    assert finals[0]["wrapped"] == "DistributedDataParallel"  # the model whose Reducer the script frees first
    assert finals[0]["should_stop"] and finals[1]["should_stop"]
    assert finals[0]["global_step"] == finals[1]["global_step"] == 3  # the first evaluation step
    assert "spherewatch/pooler/uniformity" in finals[0]["history"] and finals[1]["history"] == {}
