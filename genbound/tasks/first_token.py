"""The last encoder layer of a BERT-family classifier computed for the first token only.

A BERT classifier reads only the first token's final hidden state (its pooler takes
``hidden[:, 0]``). The last layer's keys and values still need every token, but its query,
attention output, feed-forward block and layer norms are needed only at position 0, so the
layer costs about a sixth of the full one at 30 tokens. Same modules, same parameters, same
dropout in train mode: the first row of the full layer's output, up to float rounding.
Written with plain tensor operations, so it has second derivatives whatever attention
kernel the model was loaded with.
"""

from __future__ import annotations

import torch
from torch import nn

#: Parts of a BERT layer the first-token path calls.
_LAYER_PARTS = ("attention.self", "attention.output", "intermediate", "output")
_SELF_ATTENTION = ("query", "key", "value", "num_attention_heads", "attention_head_size")


def _part(module: nn.Module, dotted: str):
    for name in dotted.split("."):
        module = getattr(module, name, None)
        if module is None:
            return None
    return module


def reads_first_token_only(model: nn.Module, layer: nn.Module) -> bool:
    """True when ``model``'s head reads only position 0 of ``layer``'s output (its pooler is
    BERT's, or there is none and the head takes ``hidden[:, 0]``) and ``layer`` is a plain
    bidirectional BERT layer (absolute positions, no cross-attention)."""
    from transformers.models.bert.modeling_bert import BertPooler

    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    pooler = getattr(model.base_model, "pooler", None)
    if pooler is not None and not isinstance(pooler, BertPooler):
        return False
    if any(_part(layer, p) is None for p in _LAYER_PARTS):
        return False
    attention = layer.attention.self
    return all(hasattr(attention, a) for a in _SELF_ATTENTION)


def first_token_output(
    layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """``layer``'s output at position 0.

    Args:
        layer: a BERT layer (see :func:`reads_first_token_only`).
        hidden: (B, T, H) hidden states entering the layer.
        attention_mask: (B, T), 1 for tokens, 0 for padding.

    Returns:
        (B, 1, H): what ``layer(hidden, mask)[:, :1]`` is.
    """
    sa = layer.attention.self
    b, t, _ = hidden.shape
    heads, d = sa.num_attention_heads, sa.attention_head_size
    first = hidden[:, :1]
    q = sa.query(first).view(b, 1, heads, d).transpose(1, 2)  # (B, heads, 1, d)
    k = sa.key(hidden).view(b, t, heads, d).transpose(1, 2)  # (B, heads, T, d)
    v = sa.value(hidden).view(b, t, heads, d).transpose(1, 2)
    scale = getattr(sa, "scaling", d**-0.5)
    scores = torch.matmul(q, k.transpose(2, 3)) * scale  # (B, heads, 1, T)
    padding = attention_mask[:, None, None, :] == 0
    scores = scores.masked_fill(padding, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    dropout = getattr(sa, "dropout", None)
    if dropout is not None:
        probs = nn.functional.dropout(probs, p=dropout.p, training=sa.training)
    context = torch.matmul(probs, v).transpose(1, 2).reshape(b, 1, heads * d)
    attended = layer.attention.output(context, first)
    return layer.output(layer.intermediate(attended), attended)
