"""adapter_objective: a checkpoint's updates as adapter layers again, for curvature and
landscapes in the coordinates that trained. Checked against the live training model of
every variant, and against PEFT's own LoRA modules with scipy's ARPACK."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from test_adapters import CHAINED, MLP, TRAINABLE, kwargs, save_base, train_all_links

import genbound.adapters as ga
from genbound import load_checkpoint
from genbound.curvature import top_eigenvalues
from genbound.tasks import Batch, Objective, cross_entropy_loss
from genbound.tasks.rebuild import adapter_objective, load_updates_into, resolve_parameter


def merged_objective(ckpt, x, y) -> Objective:
    """The merged model (a fresh MLP with W0 + dW loaded) as tasks build it."""
    model = load_updates_into(MLP(), ckpt).eval()
    names = {n for n, _ in model.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    return Objective(model, [Batch(x, y)], cross_entropy_loss, trainable, "MLP merged")


@pytest.mark.parametrize("method", TRAINABLE)
def test_rebuilt_adapters_equal_the_live_training_model(method, tmp_path):
    model = MLP()
    base = save_base(model, tmp_path)
    h = ga.apply(model, method, rank=2, targets=["fc1", "fc2"], seed=3, **kwargs(method))
    x, y = torch.randn(9, 32), torch.randint(0, 3, (9,))
    train_all_links(h, x)
    ckpt = load_checkpoint(h.save(tmp_path / "run", base_model=base, n_train=9))
    merged = merged_objective(ckpt, x, y)
    merged.model.fc2.bias.requires_grad_(False)
    merged.model.fc1.train()
    before = {k: v.clone() for k, v in merged.model.state_dict().items()}

    def flags(model):
        return [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()]

    flags_before, rng = flags(merged.model), torch.get_rng_state()

    rebuilt, notes = adapter_objective(merged, ckpt)
    assert not notes
    # the merged objective's model untouched: values, flags, modes; the global RNG too
    after = merged.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert flags(merged.model) == flags_before
    assert torch.equal(rng, torch.get_rng_state())
    # the same function
    merged.model.eval()
    rebuilt.model.eval()
    assert rebuilt.mean_loss() == pytest.approx(merged.mean_loss(), rel=1e-6)
    # the coordinates that trained: the live model's last-link factors and dense tensors,
    # by name and value
    live = h.named_trainable_parameters()
    params = dict(rebuilt.model.named_parameters())
    assert set(rebuilt.trainable) == set(live)
    for name, p in live.items():
        torch.testing.assert_close(params[name].detach(), p.detach(), rtol=0, atol=1e-7)
    if method in CHAINED:  # finished links live in the base weight
        for layer in ("fc1", "fc2"):
            torch.testing.assert_close(
                params[f"{layer}.base.weight"],
                dict(h.model.named_parameters())[f"{layer}.base.weight"],
            )


def test_factor_curvature_equals_peft_lora_by_arpack(tmp_path):
    """Top Hessian eigenvalue in (A, B) coordinates on the rebuilt model against ARPACK on
    plain double-backward products through PEFT's own LoRA modules (and its head)."""
    from conftest import build_peft, tiny_bert
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    base_dir, adapter_dir, _ = build_peft(
        tmp_path,
        tiny_bert,
        dict(r=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    ckpt = load_checkpoint(adapter_dir)
    ids = torch.randint(5, 60, (12, 7), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(1))

    def loss(model, batch):
        return cross_entropy_loss(model, batch)

    base = AutoModelForSequenceClassification.from_pretrained(base_dir, attn_implementation="eager")
    merged = load_updates_into(base, ckpt).eval()
    names = {n for n, _ in merged.named_parameters()}
    trainable = tuple(resolve_parameter(names, u.param) for u in ckpt.updates.values())
    batch = Batch({"input_ids": ids}, y)
    objective = Objective(merged, [batch], loss, trainable, "tiny bert")
    rebuilt, _ = adapter_objective(objective, ckpt)
    ours = top_eigenvalues(rebuilt, k=1, tol=1e-6, parameterization="factors")

    peft = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(base_dir, attn_implementation="eager"),
        adapter_dir,
    ).eval()
    ps = [p for n, p in peft.named_parameters() if "lora_" in n or "modules_to_save" in n]
    for p in ps:
        p.requires_grad_(True)
    assert sum(p.numel() for p in ps) == ours.dimension

    def hvp(v):
        v = torch.as_tensor(v, dtype=torch.float32)
        chunks, i = [], 0
        for p in ps:
            chunks.append(v[i : i + p.numel()].view_as(p))
            i += p.numel()
        out = torch.nn.functional.cross_entropy(peft(input_ids=ids).logits, y)
        grads = torch.autograd.grad(out, ps, create_graph=True)
        hv = torch.autograd.grad(sum((g * c).sum() for g, c in zip(grads, chunks, strict=True)), ps)
        return torch.cat([h.reshape(-1) for h in hv]).double().numpy()

    dim = ours.dimension
    ref = eigsh(LinearOperator((dim, dim), matvec=hvp, dtype=np.float64), k=1, which="LA",
                tol=1e-8, return_eigenvectors=False)[0]  # fmt: skip
    assert ours.converged and ours.eigenvalues[0] == pytest.approx(ref, rel=1e-4)
