"""The README works as written: each python block runs as a file, exactly as shown; its shell commands run
or name what exists; the demo's numbers in the metric table and the figure's caption are what the demo produces."""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
BASH_BLOCKS = re.findall(r"```bash\n(.*?)```", README, re.S)
#: pages other helpers write in parallel (issue 19); the lead merges them before this branch lands
PENDING_PAGES: set = set()  # docs pages linked before they exist (none now)



def _imports(block: str):
    return [m.group(1).split(".")[0] for m in re.finditer(r"^(?:from|import) ([\w.]+)", block, re.M)]


def _lines(text: str):
    return len(text.splitlines())


def test_readme_is_short_and_says_what_a_newcomer_needs():
    # a five-minute read: ~200 lines (issue 19), plus the detector-accuracy table (issue 17) and the W&B set-up (issue 20)
    assert _lines(README) <= 235
    headings = re.findall(r"^## (.+)$", README, re.M)
    for needed in ("Install", "Quickstart", "What is logged", "What to do when it alerts", "How to read the charts"):
        assert needed in headings
    assert "make demo" not in README[: README.index("## Development")]  # a pip user has no Makefile
    assert ".venv/bin" not in README


def test_extras_table_lists_every_extra_and_only_real_ones():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]) - {"dev"}
    install = README[README.index("## Install"): README.index("## See it first")]
    table = set(re.findall(r"^\| `([\w-]+)` \|", install, re.M))
    assert table == extras
    for named in re.findall(r"spherewatch\[([\w,-]+)\]", README):
        assert set(named.split(",")) <= extras, named


def test_project_urls_point_at_the_source_and_the_examples():
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Source", "Examples"} <= set(urls)
    assert urls["Examples"].startswith(urls["Source"]) and "examples" in urls["Examples"]


def test_links_to_docs_exist():
    for link in re.findall(r"\]\(((?:docs|examples)/[^)#]+)\)", README):
        if link in PENDING_PAGES and not (ROOT / link).exists():
            continue
        assert (ROOT / link).exists(), link


def test_shell_commands_exist():
    makefile = (ROOT / "Makefile").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # the README's test command is what CI runs
    commands = [line.split("#")[0].strip() for block in BASH_BLOCKS for line in block.splitlines()]
    for command in filter(None, commands):
        if command.startswith("make "):
            assert re.search(rf"^{command.split()[1]}:", makefile, re.M), command
        elif command.startswith("pip install"):
            continue  # checked by test_extras_table_lists_every_extra_and_only_real_ones
        elif command.startswith("spherewatch "):
            sub = command.split()[1]
            done = subprocess.run([sys.executable, "-m", "spherewatch", sub, "--help"], capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, done.stderr
        else:
            raise AssertionError(f"a README command this test does not know how to check: {command!r}")
    assert any("spherewatch demo" in c for c in commands)  # run by test_demo_matches_the_readme


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_as_written(index, tmp_path):
    block = PYTHON_BLOCKS[index]
    for module in _imports(block):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    assert "..." not in block and "args." not in block
    assert re.search(r"^(from|import) ", block, re.M), "a self-contained block imports what it uses"
    path = tmp_path / f"readme_block_{index}.py"
    path.write_text(block)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONWARNINGS="default", WANDB_MODE="offline", WANDB_SILENT="true",
               WANDB_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    out = done.stdout + done.stderr
    # each alert reaches the user once per channel: never a warning and a print of the same alert
    headlines = re.findall(r"\[spherewatch (?:warning|critical)\] step \d+: [^\n]*", out)
    assert len(headlines) == len(set(headlines)), headlines


def _demo_runs(cwd: Path):
    """`spherewatch demo` as the README writes it, run where the test is; the runs it wrote, read back."""
    from spherewatch.report import load_run

    done = subprocess.run([sys.executable, "-m", "spherewatch", "demo"], capture_output=True, text=True, timeout=600,
                          cwd=cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {}
    for name in ("simsiam-healthy", "simsiam-no-stopgrad"):
        runs[name] = load_run(str(cwd / "runs" / name / "spherewatch.jsonl"))
    return done.stdout, runs


def test_demo_matches_the_readme(tmp_path):
    """The metric table's demo values and the figure caption's steps and thresholds are what `spherewatch demo`
    produces now; when a rule or the demo changes, regenerate the figure (python docs/make_demo_figure.py) and
    update the caption."""
    from spherewatch.alerts.verdict import collapse_alerts
    from spherewatch.keys import parse_key
    from spherewatch.report.thresholds import threshold_lines

    _, runs = _demo_runs(tmp_path)
    healthy, collapsing = runs["simsiam-healthy"], runs["simsiam-no-stopgrad"]

    def last(run, metric):
        return run.scalars[f"spherewatch/{metric}"][-1][1]

    table = {m.group(1): m.groups()[1:] for m in re.finditer(
        r"^\| `(\w+)` \| [^|]+ \| ([-\d.]+)(?: of \d+)? \| ([-\d.]+) \|", README, re.M)}
    assert set(table) == {"uniformity", "effective_rank", "mean_cosine", "alignment"}
    for metric, (good, bad) in table.items():
        for run, text in ((healthy, good), (collapsing, bad)):
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert abs(last(run, metric) - float(text)) <= 1.5 * 10 ** -decimals, (metric, run.name, text)

    caption = README[README.index("*The demo's two runs"):]
    caption = " ".join(caption[: caption.index("*", 1)].split())
    fired = collapse_alerts(collapsing.alerts)
    assert not collapse_alerts(healthy.alerts)
    first = min(fired, key=lambda a: a.step)
    first_metric = parse_key(first.key)[1]
    assert f"The first alert is {first_metric}'s at step {first.step}" in caption
    assert f"the first critical one at step {min(a.step for a in fired if a.severity == 'critical')}" in caption
    for metric, words in (("uniformity", "uniformity"), ("effective_rank", "effective rank")):
        steps = sorted(a.step for a in fired if parse_key(a.key)[1] == metric)
        assert f"{words}: steps {', '.join(map(str, steps))}" in caption, (metric, steps)
    for _, metric, side, value in threshold_lines(collapsing):
        if metric in ("uniformity", "effective_rank"):
            words = metric.replace("_", " ")
            assert f"{words} {side} {value:g}" in caption, (metric, side, value)
    start = healthy.scalars["spherewatch/effective_rank"][0][1]
    assert f"the effective rank falls from {start:.0f} to {last(collapsing, 'effective_rank'):.0f}" in caption


def test_what_to_do_covers_every_default_rule_by_its_name():
    from spherewatch.alerts.rules import default_rules

    section = README[README.index("## What to do when it alerts"): README.index("## How to read the charts")]
    named = {n for bold in re.findall(r"\*\*(.*?)\*\*", section) for n in re.findall(r"`([a-z_]+)`", bold)}
    named |= {f"{n}_persists" for n in named if "`..._persists`" in section}
    rules = {str(rule.name) for rule in default_rules()}
    assert rules <= named, rules - named
    assert {n for n in named if not n.endswith("_persists")} <= rules, named - rules
