"""Loading a checkpoint imports no training code, and library code sets no environment
variables. Each check runs in a fresh interpreter, so modules other tests imported do not
count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import build_peft, tiny_bert
from helpers import tiny_bert_with_tokenizer, tiny_run

ROOT = Path(__file__).parents[1]

#: Modules that train or wrap models; reading a checkpoint needs none of them.
TRAINING = (
    "genbound.train",
    "genbound.adapters.wrap",
    "genbound.adapters.handle",
    "genbound.adapters.peft_export",
    "genbound.callbacks",
    "peft",
)


def run_python(code: str, *, env_drop: tuple[str, ...] = ()) -> dict:
    """Run ``code`` in a fresh interpreter at the repository root; it prints one JSON line."""
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def imported_after(statements: str) -> list[str]:
    code = f"import json, sys\n{statements}\nprint(json.dumps(sorted(sys.modules)))\n"
    return run_python(code)


def training_modules(modules: list[str]) -> list[str]:
    return [m for m in modules if any(m == t or m.startswith(t + ".") for t in TRAINING)]


def test_importing_the_checkpoint_package_imports_no_adapter_code():
    """At most the adapter registry (variant names and counts), no adapter layer."""
    modules = imported_after("import genbound.checkpoint")
    adapters = {m for m in modules if m.startswith(("genbound.adapters", "genbound.train"))}
    assert adapters <= {"genbound.adapters", "genbound.adapters.registry"}
    assert "transformers" not in modules and "peft" not in modules


def test_loading_a_peft_checkpoint_imports_no_training_code(tmp_path):
    _, adapter_dir, _ = build_peft(tmp_path, tiny_bert, {"r": 2, "target_modules": ["query"]})
    modules = imported_after(
        "import genbound\n"
        f"ckpt = genbound.load_checkpoint({str(adapter_dir)!r})\n"
        "assert ckpt.num_trainable == 2 * 2 * (32 + 32) and ckpt.variant == 'lora'\n"
    )
    assert training_modules(modules) == []


def test_loading_a_genbound_run_imports_no_training_code(tmp_path):
    run = tiny_run(tmp_path)
    modules = imported_after(
        f"import genbound\nckpt = genbound.load_checkpoint({str(run)!r})\n"
        "assert ckpt.variant == 'cla' and ckpt.num_trainable_by_formula() == 4 * 2\n"
    )
    assert training_modules(modules) == []


def test_library_code_leaves_the_environment_alone(tmp_path):
    """Importing genbound, loading a checkpoint and building a Hugging Face model from a
    local folder set no environment variable (the model and tokenizer are read with
    local_files_only instead of HF_HUB_OFFLINE) and leave transformers' progress bars
    and verbosity as found."""
    base_dir = tiny_bert_with_tokenizer(tmp_path)
    run = tiny_run(tmp_path)
    code = f"""
import json, os
before = dict(os.environ)
import genbound
from genbound.tasks.hf_text import TextClassificationTask, load_tokenizer
from genbound.tasks.texts import LabelledTexts
import torch
from transformers.utils import logging as hf_logging
settings = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
genbound.load_checkpoint({str(run)!r})
data = LabelledTexts(("good film", "bad day"), torch.tensor([0, 2]), ("neg", "neu", "pos"), "t")
task = TextClassificationTask(data, data, base_path={str(base_dir)!r})
model = task.build_model(None)
tok = load_tokenizer(task.base_for(None))
assert model.config.num_labels == 3 and tok("good")["input_ids"]
assert (hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()) == settings
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print(json.dumps(changed))
"""
    assert run_python(code, env_drop=("HF_HUB_OFFLINE", "OMP_WAIT_POLICY")) == []


#: Statements that change the process environment.
SETS_ENV = re.compile(
    r"environ\s*\[[^\]]+\]\s*=|environ\.(setdefault|update|pop|popitem|clear)\(|"
    r"\bdel\s+os\.environ|putenv\(|unsetenv\("
)


def test_no_library_module_sets_environment_variables():
    """Only the command line (a program, not a library) may set variables for its process."""
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / "genbound").rglob("*.py"))
        if "cli" not in path.relative_to(ROOT / "genbound").parts
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SETS_ENV.search(line)
    ]
    assert found == []
