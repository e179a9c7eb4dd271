"""The LLM judge (chatapp/chat/judge.py): a sample of scored live replies is read by a model
against the policy, bounded in rate and tokens, off the reply's path; its verdicts sit beside the
rules' in `ab report`, and an answer that is not the verdict asked for is dropped, not guessed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from admin.cli.ab import _print_report
from chatapp.chat.conversation import ChatService
from chatapp.chat.judge import (
    SCORED,
    SKIPPED_RATE,
    UNPARSEABLE,
    VerdictError,
    parse_verdict,
    sampled,
)
from chatapp.chat.request import TurnRequest
from chatapp.experiments.operations import experiment_report, report_json
from chatapp.settings import Settings
from chatapp.store import Store
from chatapp.store.scores import JUDGE
from harness.fakes.chat_model import FakeChatModel
from tests.services import add_fake_deployments, fake_service, run_experiment

GOOD = "Kyoto glows in autumn! Which temples are on your list?"
BAD = "Stay at the Kyoto Grand Hotel."
COMPLIANT = '{"compliant": true, "failed": [], "reason": "fine"}'
BUSINESS = '{"compliant": false, "failed": ["no_business"], "reason": "names a hotel"}'


class Gated(FakeChatModel):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = asyncio.Event()

    async def stream(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        await self.release.wait()
        async for chunk in super().stream(messages, **kw):
            yield chunk


class Reading(FakeChatModel):
    """A judge that names the hotel when the reply under judgement does: judgements run in the
    background, so they may reach the model in either order."""

    async def stream(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        self.push(BUSINESS if BAD in messages[-1]["content"] else COMPLIANT)
        async for chunk in super().stream(messages, **kw):
            yield chunk


async def _service(settings: Settings, store: Store, live: FakeChatModel, judge: FakeChatModel,
                   **overrides: Any) -> ChatService:
    conf = settings.model_copy(update={"judge_deployment": "judge", "judge_share": 1.0,
                                       **overrides})
    await add_fake_deployments(store, {"base-1": live, "judge": judge})
    await run_experiment(store, "base-1")
    return fake_service(conf, store, {"base-1": live, "judge": judge})


async def _turn(service: ChatService, n: int, user: str = "ann") -> Any:
    return await service.reply(TurnRequest(user_id=user, thread_id=f"t-{user}", turn_index=n,
                                           text="What is Kyoto like in autumn?"))


async def _settled(service: ChatService) -> None:
    await service.scorer.drain()
    assert service.judge is not None
    await service.judge.drain()


async def test_verdicts_are_stored_beside_the_rules_and_reported_per_arm(
        settings: Settings, store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    judge = Reading()
    service = await _service(settings, store, FakeChatModel().push(GOOD, BAD), judge)
    good, bad = await _turn(service, 0), await _turn(service, 1, user="bo")
    await _settled(service)
    verdicts = await store.scores.of_exchanges([good.id, bad.id], scorer=JUDGE)
    assert verdicts[good.id].compliant and not verdicts[bad.id].compliant
    assert verdicts[bad.id].failed_checks == ("no_business",)
    # The judge read the policy and the exchange, at temperature 0 within its token bound.
    assert len(judge.calls) == 2
    [first] = [call for call in judge.calls if GOOD in call[1]["content"]]
    assert first[0]["role"] == "system" and "no_business" in first[0]["content"]
    assert GOOD in first[1]["content"] and "What is Kyoto like in autumn?" in first[1]["content"]
    raw = await experiment_report(store, service.settings, None)
    _print_report(raw)  # what `ab report` prints
    printed = capsys.readouterr().out
    assert "LLM judge per traveller" in printed
    assert "agrees with the rule-based checks on 2/2" in printed
    j = report_json(raw)["llm_judge"]
    assert j["scored"]["base"] == 2 and j["compliant"]["base"] == 1
    assert (j["agrees_with_rules"], j["scored_by_both"]) == (2, 2)
    text = service.metrics.render()[0].decode()
    assert 'travel_judge_verdicts_total{result="scored"} 2.0' in text


async def test_the_judge_is_bounded_per_hour_and_never_delays_the_reply(
        settings: Settings, store: Store) -> None:
    judge = Gated(default=COMPLIANT)
    service = await _service(settings, store, FakeChatModel(default=GOOD), judge,
                             judge_max_per_hour=2)
    replies = [await asyncio.wait_for(_turn(service, n), timeout=10) for n in range(4)]
    assert all(r.reply == GOOD for r in replies)  # back while the judge still waits
    await service.scorer.drain()
    await asyncio.sleep(0.05)
    assert service.judge is not None and service.judge.counts[SKIPPED_RATE] == 2
    judge.release.set()
    await _settled(service)
    assert service.judge.counts[SCORED] == 2
    scored = await store.scores.of_exchanges([r.id for r in replies], scorer=JUDGE)
    assert len(scored) == 2


async def test_an_answer_that_is_not_the_verdict_is_dropped(settings: Settings,
                                                             store: Store) -> None:
    judge = FakeChatModel().push("Looks good to me!", '{"compliant": "yes"}')
    service = await _service(settings, store, FakeChatModel(default=GOOD), judge)
    a, b = await _turn(service, 0), await _turn(service, 1)
    await _settled(service)
    assert service.judge is not None and service.judge.counts[UNPARSEABLE] == 2
    assert await store.scores.of_exchanges([a.id, b.id], scorer=JUDGE) == {}
    # The rules' scores are there all the same.
    assert len(await store.scores.of_exchanges([a.id, b.id])) == 2


async def test_without_a_judge_deployment_nothing_is_judged(settings: Settings,
                                                            store: Store) -> None:
    await add_fake_deployments(store, {"base-1": None})
    await run_experiment(store, "base-1")
    service = fake_service(settings, store, {"base-1": FakeChatModel(default=GOOD)})
    assert service.judge is None
    await _turn(service, 0)


@pytest.mark.parametrize(("answer", "problem"), [
    ("no json here", "no JSON object"),
    ('{"compliant": true, "failed": [}', "does not parse"),
    ('{"failed": []}', "no boolean field 'compliant'"),
    ('{"compliant": false, "failed": "no_business"}', "not a list of rule names"),
    ('{"compliant": false, "failed": ["be_nice"]}', "rules the policy does not have"),
    ('{"compliant": true, "failed": ["no_business"]}', "contradicts"),
])
def test_parse_verdict_says_what_is_wrong(answer: str, problem: str) -> None:
    with pytest.raises(VerdictError, match=problem):
        parse_verdict(answer)


def test_parse_verdict_reads_the_object_inside_prose() -> None:
    v = parse_verdict('Sure.\n{"compliant": false, "failed": ["ends_with_question"],'
                      ' "reason": "no question"}\nHope that helps.')
    assert (v.compliant, v.failed, v.reason) == (False, ("ends_with_question",), "no question")
    assert json.loads(COMPLIANT)["compliant"] is parse_verdict(COMPLIANT).compliant


def test_the_sample_is_a_stable_share() -> None:
    ids = [f"ex-{i}" for i in range(4000)]
    assert 140 <= sum(sampled(i, 0.05) for i in ids) <= 260  # 5 % +- 4.5 sd
    assert all(sampled(i, 1.0) for i in ids)
