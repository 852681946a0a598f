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


def test_readme_training_example_runs(tmp_path):
    """The README's training snippet, on a small MLP whose layers are called query and value."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    import genbound
    from genbound import adapters
    from genbound.train import fit

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(16, 16)
            self.value = nn.Linear(16, 16)
            self.classifier = nn.Linear(16, 3)

        def forward(self, x):
            return self.classifier(torch.relu(self.value(torch.relu(self.query(x)))))

    torch.manual_seed(0)
    model = Net()
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(tmp_path / "base.safetensors"),
    )
    x_train, y_train = torch.randn(64, 16), torch.randint(0, 3, (64,))
    x_test, y_test = torch.randn(32, 16), torch.randint(0, 3, (32,))
    handle = adapters.apply(model, "c3la", rank=4, targets=["query", "value"], chain=3, seed=0)
    result = fit(handle, (x_train, y_train), (x_test, y_test), epochs=3, lr=1e-3, batch_size=32)
    handle.save(
        tmp_path / "run",
        base_model=tmp_path / "base.safetensors",
        n_train=len(y_train),
        metrics=result.metrics(),
    )
    ckpt = genbound.load_checkpoint(tmp_path / "run")
    q = ckpt.updates["query"]
    assert q.kind == "chain" and len(q.links) == 3
    assert torch.allclose(q.delta(), handle.delta_weights()["query"].float(), atol=1e-6)


def test_readme_subspace_example_runs(tmp_path, monkeypatch):
    """The "Getting a non-vacuous bound" snippet, verbatim, on a small MLP: the run stores
    z on 4 levels and reloads with num_trainable = d."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    import genbound

    section = (ROOT / "README.md").read_text().split("## Getting a non-vacuous bound", 1)[1]
    snippet = re.search(r"```python\n(.+?)\n```", section, re.S).group(1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.query = nn.Linear(16, 32)
            self.value = nn.Linear(32, 32)
            self.classifier = nn.Linear(32, 3)

        def forward(self, x):
            return self.classifier(torch.relu(self.value(torch.relu(self.query(x)))))

    torch.manual_seed(0)
    model = Net()
    base = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(base))
    train = (torch.randn(64, 16), torch.randint(0, 3, (64,)))
    monkeypatch.chdir(tmp_path)
    exec(snippet.replace("path/to/base", str(base)), {"model": model, "train": train})
    ckpt = genbound.load_checkpoint(tmp_path / "runs" / "lora_sub")
    assert ckpt.num_trainable == 500 and ckpt.hparams.extra["qat_bits"] == 2
    assert len(torch.unique(ckpt.subspace.z[0])) <= 4
