"""Issue 22 row 7, rest: a password in the tracking URI appears in no output of a run.

A real ``mlflow server`` on 127.0.0.1 (it ignores the credentials), reached as ``http://bob:<password>@127.0.0.1``;
the run (a subprocess: its stdout and stderr are captured whole) logs JSONL and MLflow, fires alerts to a local
webhook endpoint, and ends its MLflow run. Then every output is searched for the password: stdout, stderr (log
lines, warnings, MLflow's own "View run ... at:" line), every file under the run's folder (log dir, JSONL, spool,
report), the MLflow run's params, tags and artifacts, and the webhook bodies.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from webhook_server import WebhookEndpoint

pytestmark = pytest.mark.timeout(300)
PASSWORD = "Pl4nted-pw-7c1e"

_RUN = textwrap.dedent("""
    import json, sys, logging
    sys.path.insert(0, sys.argv[1])
    logging.basicConfig(level=logging.DEBUG)
    from reliability._harness import TinyTrainer
    import spherewatch as sw
    out = sys.argv[4]
    mon = sw.Monitor(sinks=("jsonl", "mlflow"), tracking_uri=sys.argv[2], webhook_url=sys.argv[3],
                     experiment_name="planted", run_name="planted", log_dir=out, spool_dir=out + "/spool",
                     every_n_steps=2, warn=True, sample_first_step=False)
    print(mon.config, repr(mon.config), mon.config.model_dump(), flush=True)
    collapsed = lambda s, z1, z2: (z1 * 0 + 1, z2 * 0 + 1)
    TinyTrainer().run(mon, range(12), embeddings=collapsed)
    run_id = mon.sink("mlflow").run_id
    mon.close()
    print(json.dumps({"run_id": run_id}), flush=True)
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory, mlflow_template_db):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), mlflow_template_db)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_a_planted_password_appears_in_no_output(server, tmp_path):
    from mlflow import MlflowClient

    uri = server.uri.replace("http://", f"http://bob:{PASSWORD}@")
    endpoint = WebhookEndpoint("T0/B0/planted")
    out = tmp_path / "out"
    try:
        res = subprocess.run([sys.executable, "-c", _RUN, str(Path(__file__).parents[1]), uri, endpoint.url, str(out)],
                             capture_output=True, text=True, timeout=240)
        bodies = [json.dumps(r["body"]) for r in endpoint.requests]
    finally:
        endpoint.close()
    assert res.returncode == 0, res.stderr[-3000:]
    run_id = json.loads(res.stdout.strip().splitlines()[-1])["run_id"]
    assert bodies  # the alerts went out
    texts = {"stdout": res.stdout, "stderr": res.stderr}
    texts.update({f"webhook {i}": b for i, b in enumerate(bodies)})
    for path in out.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("utf-8", "replace")
    client = MlflowClient(server.uri)
    run = client.get_run(run_id)
    texts["params"] = json.dumps(run.data.params)
    texts["tags"] = json.dumps(run.data.tags)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    client.download_artifacts(run_id, "", str(artifacts))
    for path in artifacts.rglob("*"):
        if path.is_file():
            texts[f"artifact {path.relative_to(artifacts)}"] = path.read_bytes().decode("utf-8", "replace")
    assert any(name.startswith("artifact ") for name in texts)  # the report and alerts were attached
    leaked = [name for name, text in texts.items() if PASSWORD in text]
    assert leaked == [], leaked
