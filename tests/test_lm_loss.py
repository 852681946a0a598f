"""Chunked next-token losses: equal to the unchunked cross-entropy of the full logits, with
padding on either side and masked prompts; gradients equal too; a tiny Llama end to end."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from genbound.errors import GenboundError
from genbound.tasks.lm_loss import next_token_losses


def _reference(logits, input_ids, loss_mask):
    """Per text: summed cross-entropy, wrong top-1 count and predicted tokens, from the full
    (B, T, V) logits with torch's cross_entropy, one text at a time."""
    out = []
    for i in range(input_ids.shape[0]):
        keep = loss_mask[i, 1:].bool()
        lg, tg = logits[i, :-1][keep], input_ids[i, 1:][keep]
        loss = torch.nn.functional.cross_entropy(lg.double(), tg, reduction="sum")
        out.append((loss, float((lg.argmax(-1) != tg).sum()), int(keep.sum())))
    return out


def _batch(seed=0, b=4, t=11, h=8, v=37):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, t, h, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(h, v, bias=False).double()
    torch.nn.init.normal_(head.weight, generator=g)
    ids = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 7:] = False  # right padding
    mask[2, :4] = False  # left padding, or a masked prompt
    mask[3, 1:] = False  # one token: nothing to predict
    return hidden, head, ids, mask


@pytest.mark.parametrize("chunk", [1, 3, 5, 1000])
def test_chunked_losses_equal_the_full_logits(chunk):
    hidden, head, ids, mask = _batch()
    got = next_token_losses(hidden, head, ids, mask, chunk_tokens=chunk)
    want = _reference(head(hidden), ids, mask)
    for i, (loss, wrong, n) in enumerate(want):
        assert got.loss_sum[i].item() == pytest.approx(loss.item(), rel=1e-12, abs=1e-12)
        assert got.error_sum[i].item() == wrong and got.tokens[i].item() == n
    assert got.tokens.tolist() == [10, 6, 7, 0]  # t - 1, right-padded, left-masked, one token


def test_gradients_do_not_depend_on_the_chunk():
    hidden, head, ids, mask = _batch(seed=1)
    grads = []
    for chunk in (2, 1000):
        h = hidden.clone().requires_grad_(True)
        head.zero_grad()
        next_token_losses(h, head, ids, mask, chunk_tokens=chunk).loss_sum.sum().backward()
        grads.append((h.grad.clone(), head.weight.grad.clone()))
    ref = hidden.clone().requires_grad_(True)
    head.zero_grad()
    sum(x[0] for x in _reference(head(ref), ids, mask)).backward()
    for g_h, g_w in grads:
        torch.testing.assert_close(g_h, ref.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g_w, head.weight.grad, rtol=1e-12, atol=1e-12)


def test_tiny_llama_matches_its_own_loss():
    """The model's labels-shifted loss (mean over predicted tokens, -100 ignored) equals the
    summed chunked loss over the predicted token count."""
    model = tiny_llama().eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, model.config.vocab_size, (3, 9), generator=g)
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, 6:] = 0
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        labels = ids.masked_fill(mask == 0, -100)
        want = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        got = next_token_losses(out.hidden_states[-1], model.lm_head, ids, mask, chunk_tokens=4)
    assert (got.loss_sum.sum() / got.tokens.sum()).item() == pytest.approx(want.item(), rel=1e-5)


def test_shapes_and_chunk_are_checked():
    hidden, head, ids, mask = _batch()
    with pytest.raises(GenboundError, match="expected hidden"):
        next_token_losses(hidden, head, ids[:, :-1], mask)
    with pytest.raises(GenboundError, match="chunk_tokens"):
        next_token_losses(hidden, head, ids, mask, chunk_tokens=0)
