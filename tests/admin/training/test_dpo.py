"""Local DPO (admin/training/dpo.py, preferences.py): the loss against a hand computation, the
shared-prefix gradient against transformers' own forward, the reference computed once, and the
preference file's errors. A tiny random llama: no model file needed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from admin.training.chat_data import IGNORE, Encoded
from admin.training.preferences import EncodedPair, check_file, load_rows

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from tests.admin.training.test_training_forward import PREFIX, example, tiny_model  # noqa: E402


def pair(prompt: list[int], chosen: list[int], rejected: list[int]) -> EncodedPair:
    return EncodedPair(example(PREFIX, prompt, chosen), example(PREFIX, prompt, rejected))


PAIRS = [pair([3, 4], [7, 8, 2], [9, 10, 11, 2]), pair([6], [12, 2], [13, 14, 2]),
         pair([15, 16, 17], [18, 19, 20, 21, 2], [22, 2]), pair([23], [24, 25, 2], [26, 2])]


def test_loss_and_rewards_match_a_hand_computation() -> None:
    from admin.training.dpo import dpo_losses

    loss, chosen, rejected = dpo_losses(torch.tensor([-10.0, -20.0]), torch.tensor([-12.0, -15.0]),
                                        torch.tensor([-11.0, -20.0]), torch.tensor([-11.0, -16.0]),
                                        0.1)
    # Pair 1: rewards 0.1 (chosen) and -0.1 (rejected): -log sigmoid(0.2) = log(1 + e^-0.2).
    # Pair 2: the chosen reply is as likely as under the reference, the rejected one became
    # likelier: rewards 0 and 0.1, -log sigmoid(-0.1) = log(1 + e^0.1).
    assert chosen.tolist() == pytest.approx([0.1, 0.0])
    assert rejected.tolist() == pytest.approx([-0.1, 0.1])
    assert loss.tolist() == pytest.approx([math.log1p(math.exp(-0.2)), math.log1p(math.exp(0.1))])
    assert float(loss[0]) == pytest.approx(0.598139, abs=1e-6)


def hf_logp(model: Any, e: Encoded) -> Any:
    """Summed log-probability of the trained tokens by transformers' forward, from scratch."""
    logits = model(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
    targets = torch.tensor(e.labels[1:])
    keep = targets != IGNORE
    return torch.log_softmax(logits[keep], -1).gather(1, targets[keep, None]).sum()


def test_dpo_step_gradient_equals_the_naive_one() -> None:
    from admin.training.dpo import PairLogps, batch_step, dpo_losses

    model = tiny_model(2)
    model.train()
    refs = [PairLogps(-3.0 - i, -2.5 - i) for i in range(len(PAIRS))]
    total = sum(dpo_losses(hf_logp(model, p.chosen), hf_logp(model, p.rejected),
                           torch.tensor(r.chosen), torch.tensor(r.rejected), 0.5)[0]
                for p, r in zip(PAIRS, refs, strict=True)) / len(PAIRS)
    total.backward()
    expected = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    measured = batch_step(model, PAIRS, refs, 0.5, 0, checkpoint=True)
    assert measured.loss == pytest.approx(float(total.detach()), rel=1e-5)
    assert set(measured.extra) == {"reward_accuracy", "reward_margin", "chosen_reward",
                                   "rejected_reward"}
    for name, g in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, g, rtol=1e-4, atol=1e-6,
                                   msg=name)


def test_reference_is_computed_once_and_the_policy_starts_at_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from admin.training import dpo, lora

    calls: list[int] = []
    real = dpo.reference_logps

    def counted(model: Any, pairs: Any, pad_id: int, **kw: Any) -> Any:
        calls.append(len(pairs))
        return real(model, pairs, pad_id, **kw)

    monkeypatch.setattr(dpo, "reference_logps", counted)
    model = tiny_model(3)
    steps: list[lora.StepMetrics] = []
    epochs: list[lora.EpochMetrics] = []
    hp = lora.Hyper(epochs=3, batch_size=2, learning_rate=5e-3, bf16=False, patience=5)
    out = dpo.train(model, PAIRS[:3], PAIRS[3:], hp, 0.1, on_step=steps.append,
                    on_epoch=epochs.append, should_stop=lambda: False)
    assert calls == [4]  # all training and validation pairs, once, before the first step
    assert len(steps) == 3 * 2 and out.steps == 6 and len(out.epochs) == 3
    # Before any step the policy is the reference: every reward is 0, the loss log 2.
    assert epochs[0].valid_loss == pytest.approx(math.log(2), abs=1e-6)
    assert epochs[0].extra["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert steps[0].train_loss == pytest.approx(math.log(2), abs=1e-5)
    assert all({"reward_accuracy", "reward_margin"} <= set(s.extra) for s in steps)
    # A few steps on three pairs move it: the training pairs' margins grow.
    assert steps[-1].extra["reward_margin"] > 0 and steps[-1].train_loss < math.log(2)
    assert out.best_state and out.best_epoch >= 1


def write_lines(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"input": {"messages": [{"role": "system", "content": "Be Wayfarer."},
                               {"role": "user", "content": "Where to stay in Rome?"}]},
        "preferred_output": [{"role": "assistant", "content": "Trastevere is lively. Why Rome?"}],
        "non_preferred_output": [{"role": "assistant", "content": "Book the Hotel Roma."}]}


def test_preference_file_problems_name_line_and_field(tmp_path: Path) -> None:
    bad = write_lines(tmp_path / "pairs.jsonl", [
        GOOD, "not json",
        {**GOOD, "preferred_output": []},
        {**GOOD, "non_preferred_output": [{"role": "user", "content": "x"}]},
        {**GOOD, "input": {"messages": [*GOOD["input"]["messages"],
                                        {"role": "assistant", "content": "Hi"}]}},
        {**GOOD, "non_preferred_output": GOOD["preferred_output"]},
        {**GOOD, "input": {"messages": [{"role": "robot", "content": "x"}]}},
        {**GOOD, "extra": 1},
    ])
    report = check_file(bad)
    assert not report.ok and report.n_examples == 8 and len(report.rows) == 1
    found = {(p.line, p.message.split(":")[0]) for p in report.problems}
    assert found == {(2, "line"), (3, "preferred_output"), (4, "non_preferred_output[0].role"),
                     (5, "input.messages[2].role"), (6, "non_preferred_output[0].content"),
                     (7, "input.messages[0].role"), (8, "extra")}
    assert all(p.path == bad and p.severity == "error" for p in report.problems)
    with pytest.raises(ValueError, match=r"pairs.jsonl line 2: line: not JSON .* \(and 6 more\)"):
        load_rows(bad)
    assert load_rows(write_lines(tmp_path / "ok.jsonl", [GOOD, GOOD])) == [GOOD, GOOD]
    assert not check_file(write_lines(tmp_path / "empty.jsonl", [""])).ok
