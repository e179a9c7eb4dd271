"""Our own pass over a llama model's decoder layers, so that a prefix every example shares (the
system prompt and the chat template's header) is computed once and its keys/values reused.

Every training example starts with the same ~216 tokens of system prompt and ends with ~110
tokens of user and assistant turn: recomputing the prefix for each example was most of a step.
Here the prefix runs once (batch 1, with gradient); its keys/values per layer are handed to the
passes over the rest of each example, which attend to them exactly as they would inside one long
sequence (positions continue after the prefix; a causal mask shifted by its length). The LoRA
modules are PEFT's, called as they are, so the adapter trained is the adapter exported.

`shared_backward` turns this into exact gradients for any loss that is a sum over groups of
examples: the prefix keys/values become detached leaves, each group's loss is backpropagated on
its own (so only one group's activations are alive at a time), and the gradients gathered on the
leaves are sent once through the prefix's graph at the end. The result equals backpropagating
one loss over every example computed from scratch
(tests/admin/training/test_training_forward.py checks it).

torch and transformers are untyped at our boundary: tensors and models are `Any` here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from admin.training.chat_data import IGNORE, Encoded

KV = list[tuple[Any, Any]]  # per layer: (keys, values), each [batch, kv heads, length, head dim]
# Below this a shared prefix saves less than the extra pass costs.
MIN_PREFIX = 8


@dataclass(frozen=True)
class Pass:
    hidden: Any  # [batch, length, hidden] after the final norm
    kv: KV | None  # the prefix's and this pass's keys/values per layer (when asked for)


def causal_lm(model: Any) -> Any:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _rotate_half(x: Any) -> Any:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def decoder_pass(model: Any, ids: Any, past: KV | None = None, *, keep_kv: bool = False,
                 checkpoint: bool = False) -> Pass:
    """Run `ids` [batch, length] through the decoder after `past` (a prefix's keys/values, batch
    1 or the same batch). Right padding needs no mask: attention is causal, so no real token sees
    a pad, and the loss never falls on one.

    `checkpoint` keeps only each layer's input for the backward pass and recomputes the layer
    then: about a third more compute for a fraction of the activation memory."""
    import torch
    from torch.utils.checkpoint import checkpoint as recompute

    lm = causal_lm(model)
    core = lm.model
    length = ids.shape[1]
    start = 0 if past is None else int(past[0][0].shape[2])
    positions = torch.arange(start, start + length).unsqueeze(0)
    hidden = core.embed_tokens(ids)
    cos, sin = core.rotary_emb(hidden, positions)
    rope = (cos.unsqueeze(1), sin.unsqueeze(1))  # broadcast over heads
    # Query i sits at position start + i and sees keys 0 .. start + i.
    mask = (torch.ones(length, start + length, dtype=torch.bool).tril(start) if start
            else None)
    recomputing = checkpoint and torch.is_grad_enabled()
    kv: KV = []
    for index, layer in enumerate(core.layers[: lm.config.num_hidden_layers]):
        layer_past = None if past is None else past[index]
        if recomputing:
            hidden, k, v = recompute(_layer, layer, hidden, layer_past, rope, mask,
                                     use_reentrant=False)
        else:
            hidden, k, v = _layer(layer, hidden, layer_past, rope, mask)
        if keep_kv:
            kv.append((k, v))
    return Pass(core.norm(hidden), kv if keep_kv else None)


def _layer(layer: Any, hidden: Any, past: tuple[Any, Any] | None, rope: tuple[Any, Any],
           mask: Any) -> tuple[Any, Any, Any]:
    """One decoder layer as transformers' LlamaDecoderLayer computes it; returns the new hidden
    state and the keys/values attended to (past and new)."""
    import torch
    import torch.nn.functional as F

    attn = layer.self_attn
    batch, length = hidden.shape[:2]
    cos, sin = rope
    x = layer.input_layernorm(hidden)
    shape = (batch, length, -1, attn.head_dim)
    q = attn.q_proj(x).view(shape).transpose(1, 2)
    k = attn.k_proj(x).view(shape).transpose(1, 2)
    v = attn.v_proj(x).view(shape).transpose(1, 2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    if past is not None:
        k = torch.cat((past[0].expand(batch, -1, -1, -1), k), dim=2)
        v = torch.cat((past[1].expand(batch, -1, -1, -1), v), dim=2)
    groups = attn.num_key_value_groups  # grouped-query attention: a kv head serves n heads
    out = F.scaled_dot_product_attention(
        q, k.repeat_interleave(groups, dim=1) if groups > 1 else k,
        v.repeat_interleave(groups, dim=1) if groups > 1 else v,
        attn_mask=mask, is_causal=mask is None, scale=attn.scaling)
    hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(batch, length, -1))
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return hidden, k, v


@dataclass(frozen=True)
class TokenLoss:
    nll: Any  # summed negative log-likelihood (tensor, with graph when training)
    n_tokens: int
    n_correct: int  # trained tokens that are the model's top-1 prediction
    row_logp: Any  # [batch] summed log-probability of each row's trained tokens
    row_correct: Any  # [batch] trained tokens of each row that are the top-1 prediction


def token_loss(model: Any, hidden: Any, targets: Any) -> TokenLoss:
    """Loss where `targets` [batch, length] is not IGNORE; hidden[:, i] predicts targets[:, i].
    The LM head runs only on those rows: the 49k-wide logits of every position were most of a
    step's memory."""
    import torch
    import torch.nn.functional as F

    keep = targets != IGNORE
    logits = causal_lm(model).lm_head(hidden[keep])
    wanted = targets[keep]
    nll = F.cross_entropy(logits, wanted, reduction="none")
    rows = keep.nonzero()[:, 0]
    row_logp = torch.zeros(targets.shape[0], dtype=nll.dtype).index_add(0, rows, -nll)
    hits = (logits.detach().argmax(-1) == wanted).long()
    row_correct = torch.zeros(targets.shape[0], dtype=torch.long).index_add(0, rows, hits)
    return TokenLoss(nll.sum(), int(keep.sum()), int(hits.sum()), row_logp, row_correct)


# -- shared prefixes ------------------------------------------------------------------------------


def first_target(e: Encoded) -> int:
    """Index of the first trained token (callers keep only examples that have one)."""
    return next(i for i, label in enumerate(e.labels) if label != IGNORE)


def shared_prefix(examples: Sequence[Encoded]) -> int:
    """How many leading tokens all `examples` share and no loss needs: the hidden state at
    position i predicts token i + 1, so the prefix stops before the first trained token's
    predecessor. 0 when that is too short to be worth a pass of its own."""
    first = examples[0].input_ids
    n = first_target(examples[0]) - 1
    for e in examples[1:]:
        n = min(n, first_target(e) - 1)
        for i in range(n):
            if e.input_ids[i] != first[i]:
                n = i
                break
    return n if n >= MIN_PREFIX else 0


def groups_within(examples: Sequence[Encoded], start: int, budget: int) -> list[list[Encoded]]:
    """Examples by length, grouped so that each group's padded tokens after `start` stay within
    `budget` (an example longer than the budget is a group of its own, never cut): activation
    memory follows the group, not the batch."""
    out: list[list[Encoded]] = []
    group: list[Encoded] = []
    for e in sorted(examples, key=lambda e: len(e.input_ids)):
        width = len(e.input_ids) - start  # the longest of the group so far: sorted
        if group and (len(group) + 1) * width > budget:
            out.append(group)
            group = []
        group.append(e)
    if group:
        out.append(group)
    return out


def padded(examples: Sequence[Encoded], start: int, pad_id: int) -> tuple[Any, Any]:
    """(ids, targets) after `start`, right-padded; targets[:, i] is the token hidden[:, i]
    predicts (the labels shifted by one), IGNORE where nothing is trained."""
    import torch

    width = max(len(e.input_ids) for e in examples) - start
    ids = [e.input_ids[start:] + [pad_id] * (width - len(e.input_ids) + start) for e in examples]
    targets = [e.labels[start + 1:] + [IGNORE] * (width - len(e.labels) + start + 1)
               for e in examples]
    return torch.tensor(ids), torch.tensor(targets)


def prefix_pass(model: Any, ids: Sequence[int], *, checkpoint: bool = False) -> KV:
    import torch

    out = decoder_pass(model, torch.tensor([list(ids)]), keep_kv=True, checkpoint=checkpoint).kv
    assert out is not None
    return out


def shared_backward(model: Any, prefix_ids: Sequence[int],
                    groups: Sequence[Callable[[KV | None], Any]], *,
                    checkpoint: bool = False) -> None:
    """Backpropagate the sum of `groups`' losses, each computed by its callable from the shared
    prefix's keys/values (None when the prefix is empty); see the module doc."""
    import torch

    if not prefix_ids:
        for group_loss in groups:
            group_loss(None).backward()
        return
    prefix = prefix_pass(model, prefix_ids, checkpoint=checkpoint)
    leaves = [(k.detach().requires_grad_(), v.detach().requires_grad_()) for k, v in prefix]
    for group_loss in groups:
        group_loss(leaves).backward()
    tensors = [t for pair in prefix for t in pair]
    grads = [t.grad if t.grad is not None else torch.zeros_like(t)
             for pair in leaves for t in pair]
    torch.autograd.backward(tensors, grads)
