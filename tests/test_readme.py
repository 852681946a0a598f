"""The README's two set-up commands are what users and CI run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]


def test_readme_opens_with_demo_and_test_commands():
    demo, test = _readme_commands()
    assert demo.startswith("python3 -m venv") and demo.endswith("genbound demo")
    assert "pip install torch==2.13.0 && pip install" in demo, "torch pinned before anything else"
    assert (
        test.endswith("python -m pytest -q") and "pip install torch==2.13.0 && pip install" in test
    )


def test_ci_runs_the_readme_test_command():
    _, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()
