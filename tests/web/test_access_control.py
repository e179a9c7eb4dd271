"""Access control through the HTTP and socket.io APIs of the real running app (no browser).

`travel-chat` runs as a subprocess on SQLite with two travellers and an admin; the base
deployment is the fake OpenAI-compatible service, the fine-tuned one an upstream that echoes the
request's key in its 401 (harness/fakes/echo_upstream.py). Checked:
- without login nobody reaches a thread: 401 on the thread, threads, delete and feedback
  endpoints; the socket connection is refused;
- bob cannot open, list, resume (socket connect with alice's thread id, or with her session
  id), rate (PUT /feedback on her run step, or re-using her feedback id), un-rate
  (DELETE /feedback) or delete alice's thread; nothing of hers is written or removed;
- only admins get the arm override (chat settings) and the routing footer; a traveller who sends
  the settings event with an arm anyway is served by the normal routing;
- a traveller's settings panel holds her training choice, and switching it is kept on her
  account (and on nobody else's);
- the app's log holds no piece of the keys, though the upstream echoed them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa

from chatapp import policy
from chatapp.chat.preferences import TRAINING_SWITCH
from chatapp.domain import Deployment
from chatapp.store import Store
from harness.browser_support import (
    ADMIN,
    TRAVELLER,
    Account,
    ChatApp,
    add_accounts,
    poll,
    running_app,
    sqlite_url,
)
from harness.chainlit_client import ChainlitClient, ConnectRefused, Reply
from harness.fakes.echo_upstream import EchoUpstream
from harness.fakes.openai_server import FakeOpenAIServer
from tests.conftest import ratings_of

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

BOB = Account("bob", "bob-roams-42", is_admin=False)
MODEL = "travel-base-model"
BASE_KEY = "sk-test-SECRET-base-0123456789abcdef"
FT_KEY = "sk-test-SECRET-ft-fedcba9876543210"
ALICE_REPLY = "Alice, Kyoto in autumn is all maple leaves. Which week suits you?"
FRAGMENTS = tuple({k[i:i + 12] for k in (BASE_KEY, FT_KEY) for i in range(len(k) - 11)})
FOOTER = "`arm "


@dataclass
class World:
    app: ChatApp
    store: Store
    upstream: FakeOpenAIServer
    alice: ChainlitClient
    bob: ChainlitClient
    alice_reply: Reply
    alice_feedback: str


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[FakeOpenAIServer, EchoUpstream]]:
    with FakeOpenAIServer(api_key=BASE_KEY, deployments={MODEL: MODEL}) as fake, \
            EchoUpstream() as echo:
        yield fake, echo


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory,
                upstreams: tuple[FakeOpenAIServer, EchoUpstream]) -> AsyncIterator[World]:
    fake, echo = upstreams
    tmp = tmp_path_factory.mktemp("access")
    data_dir = tmp / "data"
    data_dir.mkdir()
    store = await Store.open(sqlite_url(data_dir))
    await add_accounts(store, TRAVELLER, ADMIN, BOB)
    await store.deployments.add(Deployment("fake-base", "fake", "openai_compat", MODEL))
    await store.deployments.add(Deployment("leaky-ft", "echo", "openai_compat", "echo-401"))
    # The fine-tuned arm gets no traffic: only a forced arm reaches it.
    await store.experiments.start(name="acl", base="fake-base", fine_tuned="leaky-ft",
                                 fine_tuned_weight=0.0, actor="test")
    env = {"TRAVEL_CONNECTIONS__FAKE__PROVIDER": "openai_compat",
           "TRAVEL_CONNECTIONS__FAKE__ENDPOINT": fake.openai_base_url,
           "TRAVEL_CONNECTIONS__FAKE__API_KEY": BASE_KEY,
           "TRAVEL_CONNECTIONS__ECHO__PROVIDER": "openai_compat",
           "TRAVEL_CONNECTIONS__ECHO__ENDPOINT": f"{echo.url}/v1",
           "TRAVEL_CONNECTIONS__ECHO__API_KEY": FT_KEY,
           "TRAVEL_ROUTING_POLL_S": "0.5"}
    fake.queue_reply(ALICE_REPLY)
    try:
        async with running_app(data_dir, tmp / "travel-chat.log", env) as app, \
                ChainlitClient(app.url) as alice, ChainlitClient(app.url) as bob:
            await alice.login(TRAVELLER.username, TRAVELLER.password)
            await alice.connect()
            reply = await alice.send("Kyoto in autumn?")
            assert reply.run_id and reply.thread_id, reply
            # Chainlit writes the thread row in a background task; until then any GET of it is
            # a 500 (its data layer raises "Author not found"), not a refusal. Listing is safe.
            assert await poll(lambda: _lists(alice, str(reply.thread_id))), "thread not saved"
            feedback = await alice.feedback(reply.run_id, 1, "Lovely")
            await bob.login(BOB.username, BOB.password)
            await bob.connect()
            yield World(app, store, fake, alice, bob, reply, feedback)
        # After the app stopped: its whole log, the echoed 401 included, holds no key.
        log = (tmp / "travel-chat.log").read_text(errors="replace")
        assert "falling back to base" in log  # the admin's forced turn did reach the echo
        for fragment in FRAGMENTS:
            assert fragment not in log, f"the app log leaks {fragment!r}"
    finally:
        await store.close()


async def _lists(client: ChainlitClient, thread_id: str) -> bool:
    return thread_id in [t["id"] for t in (await client.threads())["data"]]


async def feedback_rows(store: Store) -> list[dict[str, Any]]:
    async with store.db.engine.connect() as conn:
        rows = await conn.execute(sa.text(
            'SELECT "id", "forId", "threadId", "value", "comment" FROM feedbacks'))
        return [dict(r._mapping) for r in rows]


# -- no login -------------------------------------------------------------------------------------


async def test_without_login_nothing_is_reachable(world: World) -> None:
    thread = world.alice_reply.thread_id
    async with ChainlitClient(world.app.url) as anon:
        calls = [("GET", f"/project/thread/{thread}", None),
                 ("POST", "/project/threads", {"pagination": {"first": 20}, "filter": {}}),
                 ("DELETE", "/project/thread", {"threadId": thread}),
                 ("PUT", "/feedback", {"feedback": {"forId": world.alice_reply.run_id,
                                                    "value": 0}, "sessionId": "x"}),
                 ("DELETE", "/feedback", {"feedbackId": world.alice_feedback})]
        for method, path, body in calls:
            resp = await anon.request(method, path, json_body=body)
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert "Kyoto" not in resp.text
        with pytest.raises(ConnectRefused):
            await anon.connect()
        with pytest.raises(ConnectRefused):
            await anon.connect(thread)
    # A forged token is no login either.
    async with ChainlitClient(world.app.url) as forged:
        forged.http.cookies.set("access_token", "eyJhbGciOiJIUzI1NiJ9.e30.forged")
        resp = await forged.request("GET", f"/project/thread/{thread}")
        assert resp.status_code == 401
        # (A forged token on the socket is refused too, but Chainlit logs a traceback for it,
        # which running_app would count as an app error.)


# -- another traveller ----------------------------------------------------------------------------


async def test_bob_cannot_open_list_resume_or_delete_alices_thread(world: World) -> None:
    thread = world.alice_reply.thread_id
    assert thread is not None
    resp = await world.bob.request("GET", f"/project/thread/{thread}")
    assert resp.status_code in (401, 403), resp.text
    assert "Kyoto" not in resp.text and "maple" not in resp.text
    resp = await world.bob.request("GET", f"/project/share/{thread}")  # not shared: hidden
    assert resp.status_code == 404 and "Kyoto" not in resp.text, resp.text
    listed = await world.bob.threads()
    assert thread not in [t["id"] for t in listed["data"]]
    with pytest.raises(ConnectRefused):
        await world.bob.connect(thread, new_session=True)
    # Nor by taking over alice's live session id (the socket `sessionId`).
    async with ChainlitClient(world.app.url) as thief:
        await thief.login(BOB.username, BOB.password)
        thief.session_id = world.alice.session_id
        with pytest.raises(ConnectRefused):
            await thief.connect()
    # socket.io passes no reason to the client; the app says why.
    assert "Authorization for the thread failed." in world.app.log_text()
    assert "Authorization for the session failed." in world.app.log_text()
    resp = await world.bob.request("DELETE", "/project/thread", json_body={"threadId": thread})
    assert resp.status_code in (401, 403), resp.text
    assert (await world.alice.thread(thread))["id"] == thread  # still there, still hers
    # Unknown and malformed ids: a plain 404 (Chainlit's own data layer made that a 500).
    for unknown in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        resp = await world.bob.request("GET", f"/project/thread/{unknown}")
        assert resp.status_code == 404, resp.text
    # Alice herself can open it (the refusals above are about bob, not a broken endpoint).
    steps = (await world.alice.thread(thread))["steps"]
    assert any(ALICE_REPLY in str(s.get("output")) for s in steps)
    await world.bob.connect(new_session=True)


async def test_bob_cannot_rate_or_unrate_alices_reply(world: World) -> None:
    before = await feedback_rows(world.store)
    assert [(r["forId"], r["value"], r["comment"]) for r in before] == [
        (world.alice_reply.run_id, 1, "Lovely")]
    run_id = world.alice_reply.run_id
    assert run_id is not None
    body = {"feedback": {"forId": run_id, "value": 0, "comment": "bob was here"},
            "sessionId": world.bob.session_id}
    resp = await world.bob.request("PUT", "/feedback", json_body=body)
    assert resp.status_code == 403, resp.text
    # Re-using alice's feedback id on a step of his own would move her rating.
    own = await world.bob.send("Porto?")
    assert own.run_id is not None
    body = {"feedback": {"forId": own.run_id, "value": 0, "id": world.alice_feedback,
                         "comment": "bob was here"}, "sessionId": world.bob.session_id}
    resp = await world.bob.request("PUT", "/feedback", json_body=body)
    assert resp.status_code in (400, 403), resp.text
    resp = await world.bob.request("DELETE", "/feedback",
                                   json_body={"feedbackId": world.alice_feedback})
    assert resp.status_code == 403, resp.text
    # Unknown or malformed ids: a clear 404, not a server error.
    for step in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
        body = {"feedback": {"forId": step, "value": 1}, "sessionId": world.bob.session_id}
        resp = await world.bob.request("PUT", "/feedback", json_body=body)
        assert resp.status_code == 404 and step in resp.text, resp.text
    assert await feedback_rows(world.store) == before
    exchange = await world.store.exchanges.by_step(run_id)
    assert exchange is not None
    ratings = await ratings_of(world.store, exchange)
    assert [(r["value"], r["user_id"]) for r in ratings] == [(1, TRAVELLER.username)]


async def test_a_rating_lands_in_the_steps_own_thread(world: World) -> None:
    """Bob rates his own reply but names alice's thread: stored under his thread, not hers."""
    own = await world.bob.send("Seville?")
    assert own.run_id is not None and own.thread_id is not None
    resp = await world.bob.request("PUT", "/feedback", json_body={
        "feedback": {"forId": own.run_id, "value": 1, "threadId": world.alice_reply.thread_id},
        "sessionId": world.bob.session_id})
    assert resp.status_code == 200, resp.text
    rows = [r for r in await feedback_rows(world.store) if r["forId"] == own.run_id]
    assert [str(r["threadId"]) for r in rows] == [own.thread_id]
    exchange = await world.store.exchanges.by_step(own.run_id)
    assert exchange is not None
    ratings = await poll(lambda: ratings_of(world.store, exchange))
    assert [(r["value"], r["user_id"]) for r in ratings] == [(1, BOB.username)]


# -- admin-only routing ---------------------------------------------------------------------------


def _event_text(reply: Reply) -> str:
    return json.dumps([e.data for e in reply.events], default=str)


async def test_a_traveller_cannot_force_an_arm_or_see_routing(world: World) -> None:
    panels = [e.data for e in world.alice.events if e.name == "chat_settings"]
    # Her settings panel holds her own training choice only: no arm override.
    assert [[w["id"] for w in panel] for panel in panels] == [[TRAINING_SWITCH]]
    # Nor does anything she can fetch name the deployments, models or upstreams.
    for path in ("/project/settings", "/user", "/auth/config"):
        resp = await world.alice.request("GET", path)
        assert resp.status_code == 200, (path, resp.text)
        for hidden in ("fake-base", "leaky-ft", MODEL, "echo-401", "127.0.0.1:", "SECRET"):
            assert hidden not in resp.text, (path, hidden)
    sio = world.alice._sio  # the client has no settings call: the frontend's event, by hand
    assert sio is not None
    await sio.emit("chat_settings_change", {"arm": "fine_tuned"})
    await asyncio.sleep(0.3)
    reply = await world.alice.send("And Osaka?")
    text = _event_text(reply)
    assert FOOTER not in text and "fake-base" not in text and MODEL not in text, text
    assert "leaky-ft" not in text and "echo-401" not in text
    exchange = await world.store.exchanges.by_step(str(reply.run_id))
    assert exchange is not None
    assert (exchange.forced, exchange.arm_served, exchange.outcome) == (False, "base", "ok")


async def test_a_traveller_switches_training_off_and_on_for_her_account_only(
        world: World) -> None:
    [panel] = [e.data for e in world.alice.events if e.name == "chat_settings"]
    assert [(w["type"], w["initial"]) for w in panel] == [("switch", True)]
    sio = world.alice._sio
    assert sio is not None
    store, name = world.store, TRAVELLER.username
    await sio.emit("chat_settings_change", {TRAINING_SWITCH: False})
    assert await poll(lambda: _opted_out(store, name, True)), "the opt-out was not kept"
    assert await store.accounts.opted_out() == {name}
    await sio.emit("chat_settings_change", {TRAINING_SWITCH: True})
    assert await poll(lambda: _opted_out(store, name, False)), "the opt-in was not kept"


async def _opted_out(store: Store, name: str, expected: bool) -> bool:
    return await store.accounts.training_opt_out(name) is expected


async def test_an_admin_forces_an_arm_and_sees_the_routing_footer(world: World) -> None:
    async with ChainlitClient(world.app.url) as boss:
        await boss.login(ADMIN.username, ADMIN.password)
        await boss.connect()
        settings = await boss.wait_for(("chat_settings",))
        assert [w["id"] for w in settings.data] == ["arm", TRAINING_SWITCH]
        assert boss._sio is not None
        await boss._sio.emit("chat_settings_change", {"arm": "fine_tuned"})
        await asyncio.sleep(0.3)
        reply = await boss.send("Forced to the fine-tuned arm?")
        # The echo upstream refused with the key in its body: a fallback, shown to the admin.
        assert "`arm base` · `fake-base`" in reply.text and "fallback (auth)" in reply.text
        assert "SECRET" not in _event_text(reply)
        exchange = await world.store.exchanges.by_step(str(reply.run_id))
        assert exchange is not None
        # Assigned base by the split, forced to fine_tuned, which failed: served by base.
        assert (exchange.forced, exchange.arm_assigned, exchange.arm_served, exchange.outcome,
                exchange.error_kind) == (True, "base", "base", "fallback", "auth")


async def test_an_upstream_error_reaches_the_traveller_as_the_apology_only(
        world: World) -> None:
    # Everyone on the leaky deployment for a moment: the turn fails with the echoed key.
    await world.store.experiments.start(name="leaky", base="leaky-ft", fine_tuned=None,
                                       fine_tuned_weight=0.0, actor="test")
    try:
        await asyncio.sleep(1.2)  # the app polls every 0.5 s
        reply = await world.alice.send("Nara?")
        assert reply.text.strip() == policy.UNAVAILABLE_REPLY
        text = _event_text(reply)
        for fragment in FRAGMENTS:
            assert fragment not in text
    finally:
        await world.store.experiments.start(name="acl-2", base="fake-base",
                                           fine_tuned="leaky-ft", fine_tuned_weight=0.0,
                                           actor="test")

