"""Live scoring (chatapp/chat/scoring.py): every reply a model wrote gets the policy checks'
score after the turn is recorded, never before the reply is back; fixed replies get none."""

from __future__ import annotations

import asyncio

from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.domain import Exchange, Outcome
from chatapp.providers.base import ProviderError
from chatapp.settings import Settings
from chatapp.store import AutoScore, Store
from harness.fakes.chat_model import FakeChatModel
from tests.services import add_fake_deployments, fake_service, run_experiment

GOOD = "Kyoto glows in autumn! Which temples are on your list?"
BAD = "Book a room at the Kyoto Grand Hotel and fly China Airlines."


async def _service(settings: Settings, store: Store, model: FakeChatModel) -> ChatService:
    await add_fake_deployments(store, {"base-1": model})
    await run_experiment(store, "base-1")
    return fake_service(settings, store, {"base-1": model})


async def _turn(service: ChatService, n: int, text: str = "What is Kyoto like in autumn?"
                ) -> Exchange:
    return await service.reply(TurnRequest(user_id="ann", thread_id="t-1", turn_index=n,
                                           text=text))


async def test_each_model_reply_is_scored_and_fixed_replies_are_not(
        settings: Settings, store: Store) -> None:
    model = FakeChatModel().push(GOOD, BAD, ProviderError("down"))
    limited = settings.model_copy(update={"max_input_tokens": 50})
    service = await _service(limited, store, model)
    good, bad, failed = [await _turn(service, n) for n in range(3)]
    too_long = await _turn(service, 3, "Kyoto? " * 200)
    await service.scorer.drain()
    assert failed.outcome == Outcome.ERROR and too_long.outcome == Outcome.REJECTED
    scores = await store.scores.of_exchanges([good.id, bad.id, failed.id, too_long.id])
    assert set(scores) == {good.id, bad.id}
    assert scores[good.id].compliant and scores[good.id].failed_checks == ()
    assert not scores[bad.id].compliant
    assert "no_business" in scores[bad.id].failed_checks
    assert "ends_with_question" in scores[bad.id].failed_checks
    # ab report's rows carry it apart from the (absent) travellers' rating.
    rows = await store.exchanges.experiment_rows(good.experiment_id or "", ["web"])
    assert sorted(str((r["rating"], r["compliance"])) for r in rows) == [
        "(None, False)", "(None, None)", "(None, None)", "(None, True)"]


async def test_the_reply_never_waits_for_its_score(settings: Settings, store: Store) -> None:
    service = await _service(settings, store, FakeChatModel(default=GOOD))
    release = asyncio.Event()
    add = store.scores.add

    async def slow_add(score: AutoScore) -> bool:
        await release.wait()  # a database that takes its time
        return await add(score)

    store.scores.add = slow_add  # type: ignore[method-assign]
    ex = await asyncio.wait_for(_turn(service, 0), timeout=10)
    assert ex.outcome == Outcome.OK
    assert await store.scores.of_exchanges([ex.id]) == {}  # the reply came back first
    release.set()
    await service.scorer.drain()
    assert (await store.scores.of_exchanges([ex.id]))[ex.id].compliant


async def test_scores_in_flight_are_bounded(settings: Settings, store: Store) -> None:
    service = await _service(settings, store, FakeChatModel(default=GOOD))
    release = asyncio.Event()

    async def stuck(score: AutoScore) -> bool:
        await release.wait()
        return True

    store.scores.add = stuck  # type: ignore[method-assign]
    service.scorer._tasks._limit = 2  # the bound of its BoundedTasks (chat/background.py)
    for n in range(4):
        await _turn(service, n)
    assert service.scorer.skipped == 2  # two in flight; the other replies went unscored
    release.set()
    await service.scorer.drain()
