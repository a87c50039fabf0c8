"""The README's Python quickstart runs as written (with fewer steps)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.network
def test_python_quickstart_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text().split("## Quickstart in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "max_steps=600" in code
    code = code.replace("max_steps=600", "max_steps=3, eval_interval=3, eval_batches=2, progress=False")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("ROMEO:")
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "checkpoints" / "step_000003" / "manifest.json").is_file()
