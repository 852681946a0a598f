"""The first-token last layer: the same logits as the full layer, with and without padding,
adapters and dropout off; second derivatives whatever the attention kernel."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert

from genbound.adapters import apply
from genbound.tasks.first_token import first_token_output, reads_first_token_only
from genbound.tasks.hf_text import EncoderSuffix


def _inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t, h = 5, 9, model.config.hidden_size
    hidden = torch.randn(b, t, h, generator=g)
    mask = torch.ones(b, t, dtype=torch.long)
    mask[1, 5:] = 0
    mask[3, 2:] = 0
    mask[4, 1:] = 0  # only the first token
    return hidden, mask


@pytest.mark.parametrize("start", [0, 1])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_equal_the_full_layers(start, attn):
    model = tiny_bert()
    model.config._attn_implementation = attn
    hidden, mask = _inputs(model)
    fast = EncoderSuffix(model, start)(hidden, mask)
    full = EncoderSuffix(model, start, first_token=False)(hidden, mask)
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-6)


def test_layer_output_is_the_first_row_with_adapters_in_train_mode_without_dropout():
    model = tiny_bert()
    apply(model, "lora", rank=2, targets=[r".*layer\.1\..*"], seed=0)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train()
    layer = model.bert.encoder.layer[1]
    hidden, mask = _inputs(model, seed=1)
    from transformers.masking_utils import create_bidirectional_mask

    full_mask = create_bidirectional_mask(
        config=model.config, inputs_embeds=hidden, attention_mask=mask
    )
    full = layer(hidden, full_mask)
    full = full[0] if isinstance(full, tuple) else full
    got = first_token_output(layer, hidden, mask)
    assert got.shape == (5, 1, model.config.hidden_size)
    torch.testing.assert_close(got, full[:, :1], rtol=1e-5, atol=1e-6)


def test_second_derivatives_with_the_default_kernel():
    """d^2/dt^2 of the loss along a direction through the first-token layer equals the
    full-layer eager value (the SDPA kernel on CPU has no double backward)."""
    model = tiny_bert()
    hidden, mask = _inputs(model)
    labels = torch.tensor([0, 1, 2, 0, 1])
    w = model.bert.encoder.layer[1].output.dense.weight
    direction = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))

    def curvature(suffix) -> float:
        from torch.func import functional_call

        params = dict(suffix.named_parameters())
        name = "model.bert.encoder.layer.1.output.dense.weight"
        t = torch.zeros((), requires_grad=True)
        p = params | {name: w.detach() + t * direction}
        logits = functional_call(suffix, p, (hidden, mask))
        loss = torch.nn.functional.cross_entropy(logits, labels)
        (g,) = torch.autograd.grad(loss, t, create_graph=True)
        (h,) = torch.autograd.grad(g, t)
        return float(h)

    model.config._attn_implementation = "sdpa"
    fast = curvature(EncoderSuffix(model, 0))
    model.config._attn_implementation = "eager"
    full = curvature(EncoderSuffix(model, 0, first_token=False))
    assert abs(full) > 1e-6 and fast == pytest.approx(full, rel=1e-4)


def test_other_structures_take_the_full_layer():
    model = tiny_bert()
    layer = model.bert.encoder.layer[1]
    assert reads_first_token_only(model, layer)
    model.config.position_embedding_type = "relative_key"
    assert not reads_first_token_only(model, layer)
    model.config.position_embedding_type = "absolute"
    model.bert.pooler = torch.nn.Identity()  # a head that may read every position
    assert not reads_first_token_only(model, layer)
