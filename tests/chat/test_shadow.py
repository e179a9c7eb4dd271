"""Shadow traffic (chatapp/chat/shadow.py): a share of live turns is answered again by a candidate
that no traveller sees, off the live reply's path; the copies stay out of what travellers see,
of datasets and of the A/B figures, and go with the traveller's data."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from admin.cli import app
from chatapp import privacy
from chatapp.chat.conversation import ChatService
from chatapp.chat.request import TurnRequest
from chatapp.chat.shadow import (
    PREEMPTED,
    SKIPPED_BUSY,
    SKIPPED_FULL,
    chosen,
    competes_for_cores,
)
from chatapp.domain import Deployment, Exchange, Outcome, Provider, Source
from chatapp.experiments.operations import shadow_comparison
from chatapp.experiments.shadow import mcnemar_exact
from chatapp.providers.base import ProviderError
from chatapp.settings import Settings
from chatapp.store import ExchangeScope, RatedFilter, Store, StoreError
from harness.fakes.chat_model import FakeChatModel
from tests.services import add_fake_deployments, fake_service, run_experiment

LIVE = "Kyoto glows in autumn, with maple leaves at Tofuku-ji. Which temples are on your list?"
CANDIDATE_BAD = "Stay at the Kyoto Grand Hotel and fly China Airlines."
runner = CliRunner()


class Gated(FakeChatModel):
    """A fake model that waits for `release` before it answers (a slow candidate)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = asyncio.Event()
        self.started = 0

    async def stream(self, messages, **kw):  # type: ignore[no-untyped-def,override]
        self.started += 1
        await self.release.wait()
        async for chunk in super().stream(messages, **kw):
            yield chunk


async def _setup(settings: Settings, store: Store, live: FakeChatModel, cand: FakeChatModel,
                 *, share: float = 1.0, provider: str = Provider.OPENAI_COMPAT
                 ) -> ChatService:
    await add_fake_deployments(store, {"base-1": live})
    await store.deployments.add(Deployment("cand", "c", Provider(provider), "gpt-4o-mini"))
    await run_experiment(store, "base-1")
    await store.experiments.set_shadow("cand", share, "ops")
    return fake_service(settings, store, {"base-1": live, "cand": cand})


async def _turn(service: ChatService, n: int, user: str = "ann") -> Exchange:
    return await service.reply(TurnRequest(user_id=user, thread_id=f"t-{user}", turn_index=n,
                                           text=f"What is Kyoto like in autumn? ({n})"))


async def _ids(store: Store, which: RatedFilter) -> list[str]:
    return [e.id async for batch in store.exchanges.rated(which) for e in batch]


async def _settled(service: ChatService) -> None:
    await service.shadow.drain()
    await service.scorer.drain()


async def test_a_copy_answers_the_live_prompt_and_stays_out_of_what_travellers_see(
        settings: Settings, store: Store) -> None:
    live, cand = FakeChatModel(default=LIVE), FakeChatModel(default=CANDIDATE_BAD)
    service = await _setup(settings, store, live, cand)
    first = await _turn(service, 0)
    second = await _turn(service, 1)
    await _settled(service)
    # The candidate got exactly the prompt each live reply answered (system, history, message).
    # Copies run concurrently in the background, so they may reach the candidate in any order.
    assert sorted(cand.calls, key=repr) == sorted(live.calls, key=repr)
    assert len(cand.calls) == 2
    everything = await store.exchanges.thread("t-ann", shadow=True)
    copies = [e for e in everything if e.source == Source.SHADOW]
    assert sorted(c.shadow_of or "" for c in copies) == sorted([first.id, second.id])
    for c in copies:
        assert c.deployment == "cand" and c.reply == CANDIDATE_BAD and c.outcome == Outcome.OK
        assert c.user_id == "ann" and c.experiment_id == first.experiment_id
    # What the traveller's history, the A/B figures and a dataset build read: live turns only.
    assert [e.id for e in await store.exchanges.thread("t-ann")] == [first.id, second.id]
    rows = await store.exchanges.experiment_rows(first.experiment_id or "", ["web"])
    assert len(rows) == 2 and {r["user_id"] for r in rows} == {"ann"}
    web = RatedFilter(scope=ExchangeScope(), ratings=(0, 1), unrated=True)
    assert sorted(await _ids(store, web)) == sorted([first.id, second.id])
    asked = RatedFilter(scope=ExchangeScope(sources=(Source.SHADOW.value,)), ratings=(0, 1),
                        unrated=True)
    assert sorted(await _ids(store, asked)) == sorted(c.id for c in copies)  # unless asked
    # Both sides scored by the live checks, compared on the same prompts.
    c = await shadow_comparison(store, None)
    assert (c.copies, c.pairs, c.both, c.live_only, c.candidate_only) == (2, 2, 0, 2, 0)
    assert c.live is not None and c.candidate is not None
    assert (c.live.compliant, c.candidate.compliant) == (2, 0)
    assert c.candidate.failed_checks["no_business"] == 2
    assert c.p_value == pytest.approx(0.5)  # two discordant prompts prove nothing yet
    assert "no significant difference" in c.verdict
    assert service.shadow.counts["answered"] == 2


async def test_the_live_reply_never_waits_for_the_candidate_and_copies_are_bounded(
        settings: Settings, store: Store) -> None:
    cand = Gated(default=LIVE)
    bounded = settings.model_copy(update={"shadow_concurrency": 2})
    service = await _setup(bounded, store, FakeChatModel(default=LIVE), cand)
    replies = [await asyncio.wait_for(_turn(service, n), timeout=10) for n in range(5)]
    assert all(r.outcome == Outcome.OK and r.reply == LIVE for r in replies)
    await asyncio.sleep(0.05)
    assert cand.started == 2 and service.shadow.counts[SKIPPED_FULL] == 3
    cand.release.set()
    await _settled(service)
    copies = [e for e in await store.exchanges.thread("t-ann", shadow=True)
              if e.source == Source.SHADOW]
    assert len(copies) == 2
    text = service.metrics.render()[0].decode()
    assert 'travel_shadow_turns_total{result="skipped_full"} 3.0' in text


async def test_a_failing_candidate_is_recorded_and_the_traveller_never_notices(
        settings: Settings, store: Store) -> None:
    cand = FakeChatModel().push(ProviderError("candidate down"))
    service = await _setup(settings, store, FakeChatModel(default=LIVE), cand)
    live = await _turn(service, 0)
    await _settled(service)
    assert live.outcome == Outcome.OK and live.reply == LIVE
    c = await shadow_comparison(store, None)
    assert (c.copies, c.failed, c.pairs) == (1, 1, 0)
    assert c.verdict == "no scored pairs yet"


async def test_travellers_who_opted_out_of_training_are_never_copied(
        settings: Settings, store: Store) -> None:
    cand = FakeChatModel(default=LIVE)
    service = await _setup(settings, store, FakeChatModel(default=LIVE), cand)
    await store.accounts.add("bea", "x", is_admin=False)
    await store.accounts.set_training_opt_out("bea", True)
    await _turn(service, 0, user="bea")
    await _turn(service, 0, user="ann")
    await _settled(service)
    assert len(cand.calls) == 1
    assert [e.user_id for e in (await store.exchanges.thread("t-bea", shadow=True))] == ["bea"]


async def test_the_share_is_a_stable_draw(settings: Settings, store: Store) -> None:
    ids = [f"ex-{i}" for i in range(4000)]
    picked = sum(chosen(i, "exp-1", 0.1) for i in ids)
    assert 320 <= picked <= 480  # 10 % +- 4.5 sd of a binomial(4000, 0.1)
    assert [chosen(i, "exp-1", 0.1) for i in ids] == [chosen(i, "exp-1", 0.1) for i in ids]
    assert not any(chosen(i, "exp-1", 0.0) for i in ids)
    assert all(chosen(i, "exp-1", 1.0) for i in ids)


async def test_a_local_candidate_waits_for_idle_and_makes_way_for_travellers(
        settings: Settings, store: Store) -> None:
    live, cand = Gated(default=LIVE), Gated(default=LIVE)
    quick = settings.model_copy(update={"shadow_idle_wait_s": 0.2})
    service = await _setup(quick, store, live, cand)
    # As the local backend does (competes_for_cores); a real local model needs its weights.
    service.shadow.competes = lambda dep: dep.name == "cand"
    live.release.set()
    await _turn(service, 0)  # idle afterwards: the copy starts, and waits on its model
    await asyncio.sleep(0.05)
    assert cand.started == 1
    # A traveller's turn starts: the local copy is cancelled, nothing of it is stored.
    live.release.clear()
    turn = asyncio.create_task(_turn(service, 1))
    await asyncio.sleep(0.05)
    assert service.shadow.counts[PREEMPTED] == 1
    # While that turn is in flight, its own copy cannot start: busy past the wait, skipped.
    live.release.set()
    await turn
    other = asyncio.create_task(_turn(service, 0, user="cy"))
    live.release.clear()
    # cy's turn is held until ann's copy has given up waiting for idle: however long its own
    # database reads take first (a fixed 0.3 s once ran out on a loaded CI machine)
    deadline = asyncio.get_running_loop().time() + 10
    while (service.shadow.counts[SKIPPED_BUSY] == 0
           and asyncio.get_running_loop().time() < deadline):
        await asyncio.sleep(0.02)
    live.release.set()
    await other
    # Idle again: cy's copy runs to the end.
    cand.release.set()
    await _settled(service)
    assert service.shadow.counts[SKIPPED_BUSY] == 1 and service.shadow.counts["answered"] == 1
    # ann's first copy was cut short and her second never started: nothing of them is stored.
    assert [e.source for e in await store.exchanges.thread("t-ann", shadow=True)] == [
        Source.WEB, Source.WEB]
    assert [e.source for e in await store.exchanges.thread("t-cy", shadow=True)] == [
        Source.WEB, Source.SHADOW]


async def test_setting_shadow_traffic_is_checked_and_audited(settings: Settings,
                                                              store: Store) -> None:
    with pytest.raises(StoreError, match="no running experiment"):
        await store.experiments.set_shadow("cand", 0.1, "ops")
    await add_fake_deployments(store, {"base-1": None, "cand": None})
    exp = await run_experiment(store, "base-1")
    with pytest.raises(StoreError, match="no deployment 'nope'"):
        await store.experiments.set_shadow("nope", 0.1, "ops")
    with pytest.raises(StoreError, match="is the base deployment"):
        await store.experiments.set_shadow("base-1", 0.1, "ops")
    with pytest.raises(StoreError, match="above 0 and at most 1"):
        await store.experiments.set_shadow("cand", 1.5, "ops")
    on = await store.experiments.set_shadow("cand", 0.25, "ops")
    assert on.id == exp.id and on.shadow is not None
    assert (on.shadow["deployment"], on.shadow["share"], on.shadow["by"]) == ("cand", 0.25, "ops")
    off = await store.experiments.set_shadow(None, 0.0, "ops")
    assert off.shadow is None
    actions = [h["action"] for h in await store.experiments.history()]
    assert actions[:2] == ["shadow_stop", "shadow_start"]
    await store.experiments.set_shadow("cand", 0.25, "ops")
    assert (await run_experiment(store, "base-1")).shadow is None  # a new experiment: off


async def test_copies_are_exported_erased_and_purged_with_the_conversation(
        settings: Settings, store: Store) -> None:
    service = await _setup(settings, store, FakeChatModel(default=LIVE),
                           FakeChatModel(default=LIVE))
    await store.accounts.add("ann", "x", is_admin=False)
    live = await _turn(service, 0)
    await _settled(service)
    doc = await privacy.export_user(store, "ann")
    assert sorted(e["source"] for e in doc["exchanges"]) == ["shadow", "web"]
    assert len(doc["auto_scores"]) == 2
    await privacy.erase_user(store, "ann", actor="ops")
    assert await store.exchanges.thread("t-ann", shadow=True) == []
    # Retention: a conversation idle past the cutoff takes its copies with it.
    old = live.created_at - timedelta(days=40) if live.created_at else None
    for source, of in ((Source.WEB, None), (Source.SHADOW, "live-1")):
        ex = Exchange(thread_id="t-old", turn_index=0, user_id="dan", source=source,
                      experiment_id=live.experiment_id, arm_assigned=live.arm_assigned,
                      arm_served=live.arm_served, forced=False, deployment="base-1",
                      model="m", messages=[{"role": "user", "content": "Lisbon?"}],
                      reply="Lisbon!", finish_reason="stop", prompt_tokens=1,
                      completion_tokens=1, latency_ms=1.0, ttft_ms=1.0, outcome=Outcome.OK,
                      id="live-1" if of is None else "", created_at=old, shadow_of=of)
        await store.exchanges.add(ex)
    result = await privacy.purge(store, 30)
    assert result.counts["exchanges"] == 2
    assert await store.exchanges.thread("t-old", shadow=True) == []


def test_only_the_local_backend_competes_for_the_cores() -> None:
    assert [competes_for_cores(Deployment("d", "c", p, "m")) for p in Provider] == [
        p == Provider.LOCAL for p in Provider]


def test_mcnemar_exact_is_the_two_sided_binomial_tail() -> None:
    # b = 10 candidate-only, c = 2 live-only: 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12.
    assert mcnemar_exact(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0


def test_ab_shadow_command(settings: Settings, cli_env: Any) -> None:
    async def prepare() -> None:
        s = await Store.open(settings.db_url)
        try:
            await add_fake_deployments(s, {"base-1": None, "cand": None})
            await run_experiment(s, "base-1")
        finally:
            await s.close()

    asyncio.run(prepare())
    res = runner.invoke(app, ["ab", "shadow", "--deployment", "cand", "--share", "0.5"])
    assert res.exit_code == 0, res.output
    assert "50% of live turns are copied to cand" in res.output
    res = runner.invoke(app, ["ab", "shadow", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["shadow"]["deployment"] == "cand" and doc["copies"] == 0
    assert doc["verdict"] == "no shadow replies yet"
    assert "shadow: 50% of live turns copied to cand" in runner.invoke(
        app, ["ab", "status"]).output
    res = runner.invoke(app, ["ab", "shadow", "--deployment", "nope"])
    assert res.exit_code == 1 and "no deployment 'nope'" in res.output
    res = runner.invoke(app, ["ab", "shadow", "--deployment", "cand", "--off"])
    assert res.exit_code == 1 and "pass one of them" in res.output
    res = runner.invoke(app, ["ab", "shadow", "--off"])
    assert res.exit_code == 0 and "shadow traffic is off" in res.output


def test_shadow_replies_are_reviewed_and_built_only_when_asked(settings: Settings,
                                                                cli_env: Any) -> None:
    async def prepare() -> str:
        s = await Store.open(settings.db_url)
        try:
            service = await _setup(settings, s, FakeChatModel(default=LIVE),
                                   FakeChatModel(default=CANDIDATE_BAD))
            await _turn(service, 0)
            await _settled(service)
            [copy] = [e for e in await s.exchanges.thread("t-ann", shadow=True)
                      if e.source == Source.SHADOW]
            return copy.id
        finally:
            await s.close()

    copy_id = asyncio.run(prepare())
    web = json.loads(runner.invoke(app, ["review", "list", "--all", "--json"]).output)
    shadow = json.loads(runner.invoke(app, ["review", "list", "--all", "--source", "shadow",
                                            "--json"]).output)
    assert copy_id not in json.dumps(web) and copy_id in json.dumps(shadow)
    res = runner.invoke(app, ["dataset", "build", "--source", "web", "--source", "shadow"])
    assert res.exit_code == 2 and "build them apart" in res.output


def test_the_live_side_names_every_deployment_that_served_it() -> None:
    from chatapp.experiments.shadow import compare

    rows = [{"user_id": "u", "shadow_deployment": "cand", "shadow_outcome": "ok",
             "shadow_completion_tokens": 5, "shadow_latency_ms": 10.0, "live_deployment": dep,
             "live_outcome": "ok", "live_completion_tokens": 5, "live_latency_ms": 10.0,
             "shadow_compliant": True, "shadow_failed": [], "live_compliant": ok,
             "live_failed": [] if ok else ["ends_with_question"]}
            for dep, ok in (("base-1", True), ("ft-1", False), ("base-1", False))]
    c = compare("exp-1", rows)
    assert c.live is not None and c.live.deployment == "base-1, ft-1"
    assert c.live.failed_checks == {"ends_with_question": 2}
    assert (c.pairs, c.candidate_only, c.both) == (3, 2, 1)
