"""Direct preference optimisation (Rafailov et al. 2023) of a LoRA adapter on the CPU.

The policy is the base model with a LoRA adapter that starts as a supervised job's adapter and
trains; the reference is that same adapter, frozen. Since the reference never changes, its
log-probabilities of every training and validation pair are computed once, before the first
step, and the reference model is never kept. Per pair the loss is

    -log sigmoid(beta * ((log pi(yw) - log ref(yw)) - (log pi(yl) - log ref(yl))))

with yw the chosen reply, yl the rejected one, and log pi(y) the summed log-probability of the
reply's tokens (its end-of-turn marker included) given the prompt. beta * (log pi - log ref) is
a reply's implicit reward; reward accuracy is the share of pairs whose chosen reply has the
higher one.

Passes share what they can (see llama_forward): the step's common prefix (the system prompt) runs
once for all pairs, each pair's prompt once for both replies, and each pair is backpropagated on
its own, so memory is one pair's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from admin.training import llama_forward as lf
from admin.training import lora
from admin.training.preferences import EncodedPair

DEFAULT_BETA = 0.1


@dataclass(frozen=True)
class PairLogps:
    chosen: float  # summed log-probability of the chosen reply's tokens
    rejected: float
    chosen_correct: int = 0  # the chosen reply's tokens that are the top-1 prediction
    chosen_tokens: int = 0


def dpo_losses(policy_chosen: Any, policy_rejected: Any, ref_chosen: Any, ref_rejected: Any,
               beta: float) -> tuple[Any, Any, Any]:
    """(loss, chosen reward, rejected reward) per pair, from summed log-probabilities."""
    import torch.nn.functional as F

    chosen = beta * (policy_chosen - ref_chosen)
    rejected = beta * (policy_rejected - ref_rejected)
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def _pair_pass(model: Any, pair: EncodedPair, prefix: lf.KV | None, start: int, pad_id: int,
               checkpoint: bool) -> lf.TokenLoss:
    """Both replies of one pair after the shared `prefix` (`start` tokens): the rest of the
    prompt once, then the two replies as a batch of two."""
    import torch

    both = [pair.chosen, pair.rejected]
    split = max(start, lf.shared_prefix(both))
    kv = prefix
    if split > start:
        ids = torch.tensor([pair.chosen.input_ids[start:split]])
        kv = lf.decoder_pass(model, ids, prefix, keep_kv=True, checkpoint=checkpoint).kv
    ids, targets = lf.padded(both, split, pad_id)
    hidden = lf.decoder_pass(model, ids, kv, checkpoint=checkpoint).hidden
    return lf.token_loss(model, hidden, targets)


def common_start(pairs: Sequence[EncodedPair]) -> int:
    """The prefix all `pairs` share (the system prompt). A job fixes it once for all its passes:
    a pair is then split the same way in every batch, so its log-probabilities do not depend
    on the batch it is in (in bf16 a different split moves them by ~0.1 nats), and the policy
    starts exactly at the reference."""
    return lf.shared_prefix([s for p in pairs for s in (p.chosen, p.rejected)])


def sequence_logps(model: Any, pairs: Sequence[EncodedPair], pad_id: int, *, batch_size: int,
                   start: int | None = None,
                   should_stop: Callable[[], bool] = lambda: False) -> list[PairLogps]:
    """Summed reply log-probabilities of each pair under the model as it is (no gradient,
    dropout off), in order. Run under the same precision as training, so that the policy
    starts exactly at the reference."""
    import torch

    model.eval()
    out: list[PairLogps] = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            if should_stop():
                raise lora.Cancelled()
            chunk = pairs[i:i + batch_size]
            split = common_start(chunk) if start is None else start
            ids = chunk[0].chosen.input_ids[:split]
            prefix = lf.prefix_pass(model, ids) if split else None
            for pair in chunk:
                part = _pair_pass(model, pair, prefix, split, pad_id, False)
                out.append(PairLogps(float(part.row_logp[0]), float(part.row_logp[1]),
                                     int(part.row_correct[0]), pair.chosen.n_target))
    model.train()
    return out


def reference_logps(model: Any, pairs: Sequence[EncodedPair], pad_id: int, *, batch_size: int,
                    start: int | None = None,
                    should_stop: Callable[[], bool] = lambda: False) -> list[PairLogps]:
    """The frozen reference's log-probabilities: the model before any DPO step."""
    return sequence_logps(model, pairs, pad_id, batch_size=batch_size, start=start,
                          should_stop=should_stop)


def summarize(policy: Sequence[PairLogps], ref: Sequence[PairLogps], beta: float
              ) -> lora.Measured:
    """Mean DPO loss, reward accuracy and rewards of pairs (a validation figure)."""
    import torch

    def col(rows: Sequence[PairLogps], attr: str) -> Any:
        return torch.tensor([getattr(r, attr) for r in rows], dtype=torch.float64)

    loss, chosen, rejected = dpo_losses(col(policy, "chosen"), col(policy, "rejected"),
                                        col(ref, "chosen"), col(ref, "rejected"), beta)
    accuracy = (sum(p.chosen_correct for p in policy)
                / max(1, sum(p.chosen_tokens for p in policy)))
    return lora.Measured(float(loss.mean()), accuracy, _reward_fields(chosen, rejected))


def _reward_fields(chosen: Any, rejected: Any) -> dict[str, float]:
    margin = chosen - rejected
    return {"reward_accuracy": float((margin > 0).double().mean()),
            "reward_margin": float(margin.mean()), "chosen_reward": float(chosen.mean()),
            "rejected_reward": float(rejected.mean())}


def batch_step(model: Any, pairs: Sequence[EncodedPair], refs: Sequence[PairLogps], beta: float,
               pad_id: int, *, checkpoint: bool, start: int | None = None) -> lora.Measured:
    """Accumulate the gradient of the batch's mean DPO loss; report loss, rewards, and the
    token accuracy of the chosen replies."""
    import torch

    start = common_start(pairs) if start is None else start
    prefix_ids = pairs[0].chosen.input_ids[:start]
    losses, chosen, rejected = [], [], []
    n_tok = n_ok = 0

    def pair_loss(pair: EncodedPair, ref: PairLogps) -> Callable[[lf.KV | None], Any]:
        def run(prefix: lf.KV | None) -> Any:
            nonlocal n_tok, n_ok
            part = _pair_pass(model, pair, prefix, start, pad_id, checkpoint)
            loss, c, r = dpo_losses(part.row_logp[0], part.row_logp[1],
                                    torch.tensor(ref.chosen), torch.tensor(ref.rejected), beta)
            losses.append(float(loss.detach()))
            chosen.append(float(c.detach()))
            rejected.append(float(r.detach()))
            # Token accuracy of the chosen reply: the one that should become likelier.
            n_tok, n_ok = n_tok + pair.chosen.n_target, n_ok + int(part.row_correct[0])
            return loss / len(pairs)
        return run

    lf.shared_backward(model, prefix_ids, [pair_loss(p, r) for p, r in zip(pairs, refs,
                                                                             strict=True)],
                       checkpoint=checkpoint)
    fields = _reward_fields(torch.tensor(chosen), torch.tensor(rejected))
    return lora.Measured(sum(losses) / len(losses), n_ok / max(n_tok, 1), fields)


def pair_batches(items: Sequence[int], size: int, rng: random.Random) -> list[list[int]]:
    """A shuffled epoch of pair indices in batches of `size`."""
    order = list(items)
    rng.shuffle(order)
    return [order[i:i + size] for i in range(0, len(order), size)]


def train(model: Any, train_pairs: Sequence[EncodedPair], valid_pairs: Sequence[EncodedPair],
          hp: lora.Hyper, beta: float, *, on_step: Callable[[lora.StepMetrics], None],
          on_epoch: Callable[[lora.EpochMetrics], None],
          should_stop: Callable[[], bool]) -> lora.Outcome:
    """DPO of the PEFT `model`, whose adapter is the reference at the start (see the module
    doc); the best epoch is the one with the lowest validation DPO loss."""
    pad_id = lora.pad_token(model)
    indexed = list(range(len(train_pairs)))
    start = common_start([*train_pairs, *valid_pairs])
    try:
        with lora.precision(hp):
            refs = reference_logps(model, [*train_pairs, *valid_pairs], pad_id,
                                   batch_size=hp.batch_size, start=start,
                                   should_stop=should_stop)
    except lora.Cancelled:
        return lora.Outcome(0, float("nan"), float("nan"), cancelled=True)
    train_refs, valid_refs = refs[:len(train_pairs)], refs[len(train_pairs):]

    def step(batch: list[int]) -> lora.Measured:
        return batch_step(model, [train_pairs[i] for i in batch], [train_refs[i] for i in batch],
                          beta, pad_id, checkpoint=hp.checkpoint, start=start)

    def validate() -> lora.Measured:
        with lora.precision(hp):
            policy = sequence_logps(model, valid_pairs, pad_id, batch_size=hp.batch_size,
                                    start=start, should_stop=should_stop)
        return summarize(policy, valid_refs, beta)

    return lora.fit(model, indexed, hp,
                    batches=lambda items, rng: pair_batches(items, hp.batch_size, rng),
                    step=step, validate=validate, on_step=on_step, on_epoch=on_epoch,
                    should_stop=should_stop)
