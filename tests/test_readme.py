"""README stays true: its quickstarts are copied from example files the suite runs, and its commands exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _code(line: str) -> str:
    return line.split("  #")[0].strip()


def test_readme_starts_with_the_two_commands_and_they_exist_in_the_makefile():
    head = README[: README.index("## Quickstart")]
    assert "make demo" in head and "make test" in head
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_quickstart_is_copied_from_its_example_file():
    quick = README[README.index("## Quickstart"): README.index("## What is logged")]
    blocks = []
    for m in re.finditer(r"```python\n(.*?)```", quick, re.S):
        named = re.findall(r"\(`(examples/[\w.]+)`\)", quick[: m.start()])
        blocks.append((named[-1], m.group(1)))
    assert {name for name, _ in blocks} == {"examples/plain_torch.py", "examples/lightning_simclr.py",
                                          "examples/hf_trainer.py"}
    for name, block in blocks:
        source = [_code(line) for line in (ROOT / name).read_text().splitlines()]
        lines = [_code(line) for line in block.splitlines()]
        assert len([x for x in lines if x]) < 10, f"the {name} quickstart must stay under ten lines"
        for line in lines:
            if not line or line.startswith("...") or line.startswith("import ") or line.startswith("from "):
                continue
            stem = line.rstrip(")")
            assert any(src.startswith(stem) for src in source), f"README line not in {name}: {line!r}"
