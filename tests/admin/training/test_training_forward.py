"""The training engine's own decoder pass (admin/training/llama_forward.py) on a tiny random
llama: a shared prefix computed once gives the same loss and gradients as every example computed
from scratch by transformers' own forward. No model file needed."""

from __future__ import annotations

from typing import Any

import pytest

from admin.training.chat_data import IGNORE, Encoded

torch = pytest.importorskip("torch")
pytest.importorskip("peft")


def tiny_model(seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    from admin.training import lora

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, pad_token_id=0, tie_word_embeddings=True)
    model = lora.add_lora(LlamaForCausalLM(config), lora.Hyper(r=4, alpha=8))
    with torch.no_grad():  # PEFT starts lora_B at zero: make the adapter matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return model


def example(prefix: list[int], prompt: list[int], reply: list[int]) -> Encoded:
    ids = prefix + prompt + reply
    return Encoded(ids, [IGNORE] * (len(prefix) + len(prompt)) + reply, False)


PREFIX = [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45]
BATCH = [example(PREFIX, [3, 4], [7, 8, 9, 2]), example(PREFIX, [6], [10, 11, 2]),
         example(PREFIX, [12, 13, 14, 15], [16, 17, 18, 19, 20, 2]),
         example(PREFIX, [21], [22, 2])]


def naive_loss(model: Any, batch: list[Encoded]) -> Any:
    """Mean NLL per trained token, each example through transformers' forward on its own."""
    total, n = 0.0, 0
    for e in batch:
        logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
        targets = torch.tensor(e.labels[1:])
        total = total + torch.nn.functional.cross_entropy(logits, targets, reduction="sum",
                                                          ignore_index=IGNORE)
        n += e.n_target
    return total / n


def grads(model: Any) -> dict[str, Any]:
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_shared_prefix_stops_before_the_first_trained_token() -> None:
    from admin.training.llama_forward import shared_prefix

    assert shared_prefix(BATCH) == len(PREFIX)
    # One example: everything up to the token that predicts its first trained token.
    assert shared_prefix(BATCH[:1]) == len(PREFIX) + 2 - 1
    other = example([1, 5, 9, 99, 17, 21, 25, 29, 33, 37, 41, 45], [3], [4, 2])
    assert shared_prefix([BATCH[0], other]) == 0  # 3 shared tokens: not worth a pass


def test_groups_stay_within_the_budget_and_keep_every_example() -> None:
    from admin.training.llama_forward import groups_within

    groups = groups_within(BATCH, len(PREFIX), 12)
    assert sorted(len(e.input_ids) for g in groups for e in g) == sorted(
        len(e.input_ids) for e in BATCH)
    for g in groups:
        width = max(len(e.input_ids) for e in g) - len(PREFIX)
        assert len(g) == 1 or len(g) * width <= 12
    assert len(groups_within(BATCH, len(PREFIX), 1)) == len(BATCH)  # never cut, one each


@pytest.mark.parametrize("checkpoint", [False, True])
def test_shared_prefix_loss_and_gradients_equal_the_naive_ones(checkpoint: bool) -> None:
    from admin.training.lora import batch_loss

    model = tiny_model()
    model.train()
    naive = naive_loss(model, BATCH)
    naive.backward()
    expected = grads(model)
    model.zero_grad(set_to_none=True)
    nll, n, _ = batch_loss(model, BATCH, 0, budget=12, backward=True, checkpoint=checkpoint)
    assert n == sum(e.n_target for e in BATCH)
    assert nll / n == pytest.approx(float(naive), rel=1e-5)
    got = grads(model)
    assert set(got) == set(expected) and len(got) == 2 * 2 * 7  # A and B, 2 layers, 7 modules
    for name, g in expected.items():
        torch.testing.assert_close(got[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_evaluation_pass_equals_transformers_forward() -> None:
    from admin.training.lora import batch_loss

    model = tiny_model(1)
    model.eval()
    with torch.no_grad():
        naive = float(naive_loss(model, BATCH))
    nll, n, ok = batch_loss(model, BATCH, 0, budget=64, backward=False)
    assert nll / n == pytest.approx(naive, rel=1e-5)
    assert 0 <= ok <= n
