"""The admin console (/admin) in-process, over httpx's ASGI transport and a real SQLite store.

Who gets in (a visitor is sent to login, a traveller gets 403, an admin sees every page), the
overview's JSON against `travel-admin ab report --json`, CSRF on every POST route found in the
router, the promotion gate's refusal shown with its reason, and an account added from the
browser landing in the store and the audit trail.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import chainlit as cl
import httpx
import pytest
from chainlit.auth import create_jwt
from fastapi import FastAPI
from starlette.routing import Route
from typer.testing import CliRunner

from admin.cli import app as admin_cli
from chatapp.domain import Decision, Deployment, Exchange, TrainingJob
from chatapp.settings import Settings, load_settings
from chatapp.store import AutoScore, Store
from chatapp.web.console import routes
from harness.browser_support import ADMIN, REPO, TRAVELLER, add_accounts

SECRET = "test-console-secret-" + "x" * 32
PAGES = ["/admin", "/admin/review", "/admin/training", "/admin/experiments",
         "/admin/travellers"]


@pytest.fixture(autouse=True)
def jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHAINLIT_AUTH_SECRET", SECRET)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Store]:
    store = await Store.open(settings.db_url)
    await add_accounts(store, ADMIN, TRAVELLER)
    for name in ("base", "ft"):
        await store.deployments.add(Deployment(name, "c", "openai_compat", "gpt-4o-mini"))
    await store.experiments.start(name="t", base="base", fine_tuned="ft", fine_tuned_weight=0.5,
                                 actor="test")
    yield store
    await store.close()


def console_app(store: Store, settings: Settings) -> FastAPI:
    app = FastAPI()

    async def get_store() -> Store:
        return store

    routes.install(app, routes.Console(get_store, settings, routes.auth_secret))
    return app


def client(app: FastAPI, user: str | None = None) -> httpx.AsyncClient:
    cookies = {}
    if user is not None:
        cookies["access_token"] = create_jwt(cl.User(identifier=user, metadata={"role": "user"}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console",
                             cookies=cookies)


def post_routes(app: FastAPI) -> list[str]:
    return [r.path for r in app.router.routes
            if isinstance(r, Route) and r.methods and "POST" in r.methods]


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def exchange(exp_id: str | None, user: str, arm: str, *, source: str = "web",
             deployment: str | None = None, day: int = 0) -> Exchange:
    return Exchange(
        thread_id=str(uuid.uuid4()), turn_index=0, user_id=user, source=source,  # type: ignore[arg-type]
        experiment_id=exp_id, arm_assigned=arm, arm_served=arm, forced=False,  # type: ignore[arg-type]
        deployment=deployment or ("base" if arm == "base" else "ft"), model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Kyoto in autumn?"}], reply="Maples. When?",
        finish_reason="stop", prompt_tokens=20, completion_tokens=8, latency_ms=40.0,
        ttft_ms=5.0, outcome="ok",  # type: ignore[arg-type]
        created_at=datetime(2026, 11, 1, 12, tzinfo=UTC) + timedelta(days=day))


async def test_visitor_is_sent_to_login_and_traveller_refused(db: Store,
                                                              settings: Settings) -> None:
    app = console_app(db, settings)
    async with client(app) as anon, client(app, TRAVELLER.username) as alice:
        for path in PAGES:
            r = await anon.get(path)
            assert r.status_code == 303 and r.headers["location"] == "/login", path
            assert (await alice.get(path)).status_code == 403, path
        assert (await anon.get("/admin/api/report")).status_code == 401
        for path in post_routes(app):
            assert (await alice.post(path, data={"csrf": "x"})).status_code == 403, path
        forged = {"access_token": create_jwt(cl.User(identifier=ADMIN.username)) + "x"}
        assert (await anon.get("/admin", cookies=forged)).status_code == 303


async def test_header_mode_without_header_is_401(db: Store, data_dir: Path) -> None:
    header = load_settings(data_dir=data_dir, _env_file=None, auth_mode="header")
    app = console_app(db, header)
    async with client(app) as anon:
        assert (await anon.get("/admin")).status_code == 401
        ok = await anon.get("/admin", headers={header.auth_header: ADMIN.username})
        assert ok.status_code == 200
        refused = await anon.get("/admin", headers={header.auth_header: TRAVELLER.username})
        assert refused.status_code == 403


async def test_admin_sees_every_page_with_strict_origin_policy(db: Store,
                                                                settings: Settings) -> None:
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        for path in PAGES:
            r = await boss.get(path)
            assert r.status_code == 200, (path, r.text[:500])
            assert "default-src 'self'" in r.headers["content-security-policy"]
            assert "https://" not in r.text and "http://" not in r.text, path
        assert "Review queue" in (await boss.get("/admin/review")).text
        js = await boss.get("/admin/static/console.js")
        assert js.status_code == 200 and "window.confirm" in js.text


async def test_overview_json_equals_ab_report_json(db: Store, settings: Settings,
                                                   cli_env: Path) -> None:
    exp = await db.experiments.active()
    assert exp is not None
    for i in range(12):
        arm = "base" if i % 2 else "fine_tuned"
        ex = await db.exchanges.add(exchange(exp.id, f"u{i}", arm, day=i % 3))
        await db.exchanges.rate(ex.id, int(i % 3 != 0), user_id=f"u{i}")
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        served = (await boss.get("/admin/api/report")).json()
        page = (await boss.get("/admin")).text
        named = (await boss.get(f"/admin/api/report?experiment={exp.id}")).json()
    # The command runs its own event loop: in a thread, as from a terminal beside the app.
    result = await asyncio.to_thread(CliRunner().invoke, admin_cli, ["ab", "report", "--json"])
    assert result.exit_code == 0, result.output
    assert served == json.loads(result.output) == named
    assert served["user_level"]["users"] == {"base": 6, "fine_tuned": 6}
    assert served["decision"] in page and "2026-11-02" in page  # the verdict, a day's activity


async def test_overview_shows_automatic_compliance_and_the_guardrail_stop(
        db: Store, settings: Settings) -> None:
    exp = await db.experiments.active()
    assert exp is not None
    for i in range(4):
        arm = "base" if i % 2 else "fine_tuned"
        ex = await db.exchanges.add(exchange(exp.id, f"u{i}", arm))
        await db.scores.add(AutoScore(ex.id, compliant=arm == "base"))
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        before = (await boss.get("/admin")).text
        assert "Automatic policy compliance per traveller" in before
        assert "Enforced by the app" in before and "data-guardrail-stop" not in before
        assert await db.experiments.guardrail_stop(exp.id, {"metric": "compliance",
                                                            "reason": "worse on the checks"})
        after = (await boss.get("/admin")).text
        served = (await boss.get("/admin/api/report")).json()
    assert "data-guardrail-stop" in after and "worse on the checks" in after
    assert served["automatic_compliance"]["scored"] == {"base": 2, "fine_tuned": 2}
    assert served["guardrail_stop"]["metric"] == "compliance"


async def test_overview_shows_the_shadow_comparison_of_ab_shadow(
        db: Store, settings: Settings, cli_env: Path) -> None:
    await db.deployments.add(Deployment("cand", "c", "openai_compat", "gpt-4o-mini"))
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        off = (await boss.get("/admin")).text
        assert "data-shadow" in off and "no shadow replies yet" in off
        exp = await db.experiments.set_shadow("cand", 0.5, "ops")
        for i in range(6):
            live = await db.exchanges.add(exchange(exp.id, f"u{i}", "base"))
            copy = replace(exchange(exp.id, f"u{i}", "fine_tuned", source="shadow",
                                    deployment="cand"), thread_id=live.thread_id,
                           shadow_of=live.id)
            copy = await db.exchanges.add(copy)
            await db.scores.add(AutoScore(live.id, compliant=i < 3))
            await db.scores.add(AutoScore(copy.id, compliant=True))
        page = (await boss.get("/admin")).text
    result = await asyncio.to_thread(CliRunner().invoke, admin_cli, ["ab", "shadow", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["pairs"], doc["candidate_only"], doc["live_only"]) == (6, 3, 0)
    assert "50 % of live turns are copied to <strong>cand</strong>" in page
    assert doc["verdict"] in page and "3/6" in page and "6/6" in page
    # Shadow replies are not web traffic: the A/B report does not count them.
    report = await asyncio.to_thread(CliRunner().invoke, admin_cli, ["ab", "report", "--json"])
    arms = json.loads(report.output)["arms"]
    assert {a: arms[a]["replies"] for a in arms} in ({"base": 6}, {"base": 6, "fine_tuned": 0})


async def test_every_post_route_refuses_a_missing_or_foreign_csrf_token(
        db: Store, settings: Settings) -> None:
    app = console_app(db, settings)
    posts = post_routes(app)
    assert len(posts) >= 10 and "/admin/experiments/promote" in posts
    audit_before = await db.experiments.audit_page(limit=1000)
    async with client(app, ADMIN.username) as boss, client(app, "admin") as other:
        foreign = csrf_of((await other.get("/admin/travellers")).text)
        for path in posts:
            form = {"username": TRAVELLER.username, "weight": "1", "name": "x", "job": "j",
                    "base": "base"}
            assert (await boss.post(path, data=form)).status_code == 403, path
            stolen = await boss.post(path, data={**form, "csrf": foreign})
            assert stolen.status_code == 403, path
    assert await db.experiments.audit_page(limit=1000) == audit_before
    assert await db.accounts.get(TRAVELLER.username) is not None


async def test_promote_refused_with_the_gates_reason(db: Store, settings: Settings) -> None:
    for dep, compliant in (("base", 1), ("ft", 0)):
        ex = await db.exchanges.add(exchange(None, "eval", "base", source="eval", deployment=dep))
        await db.exchanges.rate(ex.id, compliant, user_id="eval")
    before = await db.experiments.active()
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        page = (await boss.get("/admin/experiments")).text
        assert "eval adherence of ft (0/1) is below base&#39;s (1/1)" in page  # shown up front
        r = await boss.post("/admin/experiments/promote", data={"csrf": csrf_of(page)})
    assert r.status_code == 409
    assert 'role="alert">eval adherence of ft (0/1) is below base&#39;s (1/1)' in r.text
    assert await db.experiments.active() == before


async def test_user_added_in_console_is_stored_and_audited(db: Store, settings: Settings) -> None:
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        token = csrf_of((await boss.get("/admin/travellers")).text)
        r = await boss.post("/admin/travellers/add",
                            data={"csrf": token, "username": "carol", "is_admin": "on"})
        assert r.status_code == 200, r.text
        password = re.search(r'<code class="secret">([^<]+)</code>', r.text)
        assert password and "carol" in r.text
        dup = await boss.post("/admin/travellers/add", data={"csrf": token, "username": "carol"})
        assert dup.status_code == 409 and "already exists" in dup.text
    account = await db.accounts.get("carol")
    assert account is not None and account["is_admin"]
    from chatapp.auth import verify_password

    assert verify_password(password.group(1), account["password_hash"])
    lines = await db.experiments.audit_page(action="user_add")
    assert [(h["actor"], h["details"]) for h in lines] == [
        (ADMIN.username, {"username": "carol", "is_admin": True})]


async def test_training_page_metrics_json_and_deploy_refusal(db: Store,
                                                             settings: Settings) -> None:
    await db.jobs.add(TrainingJob(id="ftjob-local-1", backend="local", base_model="smol",
                                  status="running", progress={"step": 2, "total_steps": 4}))
    for step, loss in ((1, 2.5), (2, 2.1)):
        await db.jobs.add_event("ftjob-local-1", f"step {step}",
                                data={"kind": "step", "step": step, "train_loss": loss})
    await db.jobs.add_event("ftjob-local-1", "epoch 1 done",
                            data={"kind": "epoch", "step": 2, "epoch": 1, "valid_loss": 2.3})
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        page = (await boss.get("/admin/training")).text
        assert "ftjob-local-1" in page and "step 2/4" in page
        assert "Deploy" not in page.split("ftjob-local-1")[-1].split("</tr>")[0]  # running
        job = (await boss.get("/admin/training/jobs/ftjob-local-1")).text
        assert "data-loss-chart" in job
        metrics = (await boss.get("/admin/api/jobs/ftjob-local-1/metrics")).json()
        assert [(r["step"], r["train_loss"], r["valid_loss"]) for r in metrics["rows"]] == [
            (1, 2.5, None), (2, 2.1, 2.3)]
        assert metrics["finished"] is False
        assert [e["message"] for e in metrics["events"]] == ["epoch 1 done"]
        refused = await boss.post("/admin/training/deploy", data={
            # The token is the session's, whichever page carries it (no form here: no
            # succeeded job).
            "csrf": csrf_of((await boss.get("/admin/travellers")).text), "job": "ftjob-local-1",
            "name": "ft-new"})
        assert refused.status_code == 409
        assert "job ftjob-local-1 is running: only a succeeded job can be deployed" in refused.text
        assert (await boss.get("/admin/datasets/" + "0" * 64 + "/download")).status_code == 404
    assert await db.deployments.get("ft-new") is None


async def test_audit_trail_filters_and_pages(db: Store, settings: Settings) -> None:
    for i in range(60):
        await db.experiments.set_weights(0.5 if i % 2 else 0.25, "ops" if i % 3 else "lead")
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        first = (await boss.get("/admin/experiments?action=set_weights&actor=ops")).text
        rows = re.findall(r"<tr><td>(\d+)</td>", first)
        assert len(rows) == 40 and all(a == "ops" for a in re.findall(
            r"<td>(ops|lead)</td><td>set_weights", first))
        everything = (await boss.get("/admin/experiments")).text
        more = re.search(r'before=(\d+)">older', everything)
        assert more and len(re.findall(r"<tr><td>(\d+)</td>", everything)) == 50
        older = (await boss.get(f"/admin/experiments?before={more.group(1)}")).text
        ids = [int(x) for x in re.findall(r"<tr><td>(\d+)</td>", older)]
        assert ids and max(ids) < int(more.group(1)) and "older →" not in older


async def test_traveller_actions_are_audited_under_the_admin(db: Store,
                                                             settings: Settings) -> None:
    exp = await db.experiments.active()
    assert exp is not None
    ex = await db.exchanges.add(exchange(exp.id, TRAVELLER.username, "base"))
    await db.exchanges.rate(ex.id, 1, user_id=TRAVELLER.username)
    await db.accounts.set_training_opt_out(TRAVELLER.username, True)
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        listing = (await boss.get("/admin/travellers")).text
        assert "<td>alice</td><td>no</td><td>no (opted out)</td>" in listing
        token = csrf_of(listing)
        form = {"csrf": token, "username": TRAVELLER.username}
        reset = await boss.post("/admin/travellers/password", data=form)
        assert reset.status_code == 200 and 'class="secret"' in reset.text
        grant = await boss.post("/admin/travellers/admin", data={**form, "is_admin": "true"})
        assert grant.status_code == 200
        self_revoke = await boss.post("/admin/travellers/admin", data={
            **form, "username": ADMIN.username, "is_admin": "false"})
        assert self_revoke.status_code == 409
        export = await boss.post("/admin/travellers/export", data=form)
        assert export.status_code == 200
        assert "attachment" in export.headers["content-disposition"]
        doc = export.json()
        assert doc["user"] == TRAVELLER.username and len(doc["exchanges"]) == 1
        assert "password_hash" not in export.text
        erased = await boss.post("/admin/travellers/erase", data=form)
        assert erased.status_code == 200 and "erased alice" in erased.text
        again = await boss.post("/admin/travellers/erase", data=form)
        assert again.status_code == 409
        assert 'role="alert">nothing is held about user &#39;alice&#39;<' in again.text
    assert await db.accounts.get(TRAVELLER.username) is None
    trail = await db.experiments.audit_page(actor=ADMIN.username)
    assert [h["action"] for h in trail] == ["erase_user", "user_export", "user_update",
                                           "user_update"]
    assert TRAVELLER.username not in json.dumps(trail[0]["details"])  # erasure keeps a hash


def test_the_app_mounts_exactly_the_console_routes_under_test(data_dir: Path,
                                                               settings: Settings) -> None:
    """The CSRF test above enumerates the router of an app the console is installed into; the
    real chat app (imported in a child process: importing it registers Chainlit callbacks and
    builds the runtime) must mount the same POST routes, and no other POST under /admin."""
    script = ("import chatapp.app\n"
              "from chainlit.server import app\n"
              "print('\\n'.join(sorted(r.path for r in app.router.routes"
              " if getattr(r, 'path', '').startswith('/admin')"
              " and 'POST' in (getattr(r, 'methods', None)"
              " or ()))))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAVEL_", "CHAINLIT_"))}
    env.update(TRAVEL_DATA_DIR=str(data_dir), CHAINLIT_AUTH_SECRET=SECRET,
               CHAINLIT_APP_ROOT=str(REPO))
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=data_dir,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    mounted = done.stdout.split()

    async def get_store() -> Store:
        raise AssertionError("not called")

    app = FastAPI()
    routes.install(app, routes.Console(get_store, settings, routes.auth_secret))
    assert mounted == sorted(post_routes(app)) and len(mounted) >= 10


async def test_deploy_a_succeeded_local_job(db: Store, settings: Settings) -> None:
    adapter = settings.data_dir / "jobs" / "ftjob-done" / "adapter.gguf"
    adapter.parent.mkdir(parents=True)
    adapter.write_bytes(b"GGUF not really, but the bytes are what deploy checks")
    await db.jobs.add(TrainingJob(
        id="ftjob-done", backend="local", base_model="smol", status="succeeded",
        result={"adapter_path": "jobs/ftjob-done/adapter.gguf",
                "adapter_sha256": hashlib.sha256(adapter.read_bytes()).hexdigest(),
                "best_epoch": 2}))
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        page = (await boss.get("/admin/training")).text
        assert 'action="/admin/training/deploy"' in page
        r = await boss.post("/admin/training/deploy", data={
            "csrf": csrf_of(page), "job": "ftjob-done", "name": "ft-console", "weight": "0.2"})
    assert r.status_code == 200, r.text
    assert "deployed ft-console from job ftjob-done" in r.text
    dep = await db.deployments.get("ft-console")
    exp = await db.experiments.active()
    assert dep is not None and dep.source_job == "ftjob-done" and dep.created_by == ADMIN.username
    assert exp is not None and exp.fine_tuned_deployment == "ft-console"
    assert exp.weights["fine_tuned"] == 0.2
    [line] = await db.experiments.audit_page(action="deploy")
    assert line["actor"] == ADMIN.username and line["experiment_id"] == exp.id


async def test_routing_actions_and_every_post_form_confirms(db: Store, settings: Settings) -> None:
    built = settings.data_dir / "datasets" / "train.jsonl"
    built.parent.mkdir(parents=True)
    built.write_text('{"messages": []}\n')
    sha = hashlib.sha256(built.read_bytes()).hexdigest()
    await db.datasets.add(sha256=sha, path=str(built), kind="train", n_examples=1,
                          manifest={"counts": {"examples": 1}}, tokenizer=None, created_by="t")
    await db.jobs.add(TrainingJob(id="ftjob-ok", backend="local", base_model="smol",
                                  status="succeeded"))
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        pages = {path: (await boss.get(path)).text for path in PAGES}
        forms = [f for html in pages.values()
                 for f in re.findall(r"<form [^>]*method=\"post\"[^>]*>.*?</form>", html, re.S)]
        assert len(forms) >= 10
        for form in forms:
            assert "data-confirm=" in form and 'name="csrf"' in form, form[:200]
        download = await boss.get(f"/admin/datasets/{sha}/download")
        assert download.status_code == 200 and download.text == '{"messages": []}\n'
        assert "counts" in pages["/admin/training"] and sha[:16] in pages["/admin/training"]

        token = csrf_of(pages["/admin/experiments"])
        weights = await boss.post("/admin/experiments/weights", data={"csrf": token,
                                                                      "weight": "0.3"})
        assert weights.status_code == 200 and "fine_tuned&#39;: 0.3" in weights.text
        bad = await boss.post("/admin/experiments/weights", data={"csrf": token, "weight": "2"})
        assert bad.status_code == 409 and "between 0 and 1" in bad.text
        stop = await boss.post("/admin/experiments/stop", data={"csrf": token})
        assert stop.status_code == 200 and "everyone is served by base" in stop.text
        back = await boss.post("/admin/experiments/rollback", data={"csrf": token})
        assert back.status_code == 409 and "nothing to roll back" in back.text
        start = await boss.post("/admin/experiments/start", data={
            "csrf": token, "name": "spring", "base": "base", "fine_tuned": "ft",
            "weight": "0.1"})
        assert start.status_code == 200 and "started experiment" in start.text
    exp = await db.experiments.active()
    assert exp is not None and exp.name == "spring" and exp.weights["fine_tuned"] == 0.1
    trail = await db.experiments.audit_page(actor=ADMIN.username)
    assert [h["action"] for h in trail] == ["start", "stop", "set_weights"]


# -- the review queue (chatapp/review.py, the functions of `travel-admin review`) --------------

HOTEL = "Book the Hilton Kyoto, it is great. Which month will you go?"
BETTER = ("Kyoto in autumn is glorious: the maples of Tofuku-ji and Eikan-do turn red in"
          " mid-November. Which temples would you like to see first?")


async def queue_of(store: Store) -> dict[str, str]:
    """Replies for the queue's filters, by name: which arm, deployment, source, day, rating
    and comment each has is in its name's row below."""
    exp = await store.experiments.active()
    assert exp is not None
    made: dict[str, str] = {}
    rows = [  # name, arm, source, day, rating, comment
        ("old-base", "base", "web", 0, 0, "too short"),
        ("new-base", "base", "web", 5, 0, None),
        ("ft-down", "fine_tuned", "web", 3, 0, "names a hotel"),
        ("ft-up", "fine_tuned", "web", 4, 1, None),
        ("unrated", "base", "web", 6, None, None),
        ("sim-down", "base", "simulated", 2, 0, None),
    ]
    for name, arm, source, day, rating, comment in rows:
        ex = await store.exchanges.add(exchange(exp.id, f"u-{name}", arm, source=source,
                                                day=day))
        if rating is not None:
            await store.exchanges.rate(ex.id, rating, user_id=f"u-{name}", comment=comment)
        made[name] = ex.id
    return made


def listed(html: str) -> list[str]:
    """The exchange ids a queue page links to, in order."""
    return re.findall(r'href="/admin/review/([0-9a-f-]{36})[?"]', html)


async def test_review_queue_lists_rated_down_replies_with_the_clis_filters(
        db: Store, settings: Settings) -> None:
    ids = await queue_of(db)
    await db.reviews.add(ids["old-base"], reviewer="rita", decision=Decision.SKIPPED)
    app = console_app(db, settings)

    async def names(boss: httpx.AsyncClient, query: str) -> list[str]:
        r = await boss.get("/admin/review" + query)
        assert r.status_code == 200, r.text[:500]
        by_id = {v: k for k, v in ids.items()}
        return [by_id[i] for i in listed(r.text)]

    async with client(app, ADMIN.username) as boss:
        assert await names(boss, "") == ["new-base", "ft-down", "old-base"]  # newest first
        assert await names(boss, "?rating=up") == ["ft-up"]
        assert await names(boss, "?rating=unrated") == ["unrated"]
        assert await names(boss, "?rating=any") == ["unrated", "new-base", "ft-up", "ft-down",
                                                    "old-base"]
        assert await names(boss, "?arm=fine_tuned") == ["ft-down"]
        assert await names(boss, "?deployment=base") == ["new-base", "old-base"]
        gone = (await boss.get("/admin/review?deployment=retired")).text
        assert listed(gone) == [] and "<option selected>retired</option>" in gone
        assert await names(boss, "?source=simulated") == ["sim-down"]
        assert await names(boss, "?source=web,simulated&since=2026-11-03") == [
            "new-base", "ft-down", "sim-down"]
        assert await names(boss, "?source=web%2Csimulated&since=2026-11-04") == [
            "new-base", "ft-down"]
        assert await names(boss, "?comment=yes") == ["ft-down", "old-base"]
        assert await names(boss, "?comment=no") == ["new-base"]
        assert await names(boss, "?unreviewed=on") == ["new-base", "ft-down"]
        # Empty values are what a form sends for "any": the default queue.
        assert await names(boss, "?arm=&deployment=&comment=&since=") == [
            "new-base", "ft-down", "old-base"]

        first = (await boss.get("/admin/review?limit=2")).text
        assert "page 1 of 2 (3 replies)" in first and "?limit=2&amp;page=2" in first
        second = (await boss.get("/admin/review?limit=2&page=2")).text
        assert [i for i in listed(second)] == [ids["old-base"]] and "← newer" in second
        # A filtered queue's rows link to the reply with the filters, to come back to them.
        assert f'/admin/review/{ids["ft-down"]}?arm=fine_tuned"' in (
            await boss.get("/admin/review?arm=fine_tuned")).text

        for bad, reason in (("?rating=sideways", "rating: &#39;sideways&#39; is not one of"),
                            ("?source=eval", "source: &#39;eval&#39; is not one of"),
                            ("?since=yesterday", "since: &#39;yesterday&#39; is not a date"),
                            ("?page=0", "page: &#39;0&#39; must be a whole number")):
            r = await boss.get("/admin/review" + bad)
            assert r.status_code == 400 and reason in r.text, bad
            assert "Traceback" not in r.text and listed(r.text) == []


async def test_review_reply_page_shows_conversation_reply_rating_and_failed_checks(
        db: Store, settings: Settings) -> None:
    exp = await db.experiments.active()
    assert exp is not None
    ex = exchange(exp.id, TRAVELLER.username, "fine_tuned")
    ex = await db.exchanges.add(Exchange(**{**vars(ex), "messages": [
        {"role": "system", "content": "You are the agency's travel assistant."},
        {"role": "user", "content": "Hi! <b>Japan</b> in November?"},
        {"role": "assistant", "content": "Lovely then. Which city?"},
        {"role": "user", "content": "Kyoto in autumn?"}],
        "reply": "<script>alert(1)</script> Book the Hilton Kyoto, it is great."}))
    await db.exchanges.rate(ex.id, 0, user_id=TRAVELLER.username,
                            comment="Advertises a <hotel> & no question")
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        r = await boss.get(f"/admin/review/{ex.id}?arm=fine_tuned")
        assert r.status_code == 200, r.text[:500]
        page = r.text
        for shown in ("You are the agency&#39;s travel assistant.",
                      "Hi! &lt;b&gt;Japan&lt;/b&gt; in November?", "Lovely then. Which city?",
                      "Kyoto in autumn?",
                      "&lt;script&gt;alert(1)&lt;/script&gt; Book the Hilton Kyoto",
                      "Advertises a &lt;hotel&gt; &amp; no question",
                      "names a business: &#39;Hilton&#39;", "fails: no_business",
                      "not reviewed yet", 'href="/admin/review?arm=fine_tuned"'):
            assert shown in page, shown
        assert "<script>alert" not in page and "<b>Japan" not in page
        # The conversation comes in order, up to the reply under review.
        order = [page.index(s) for s in ("system prompt", "Hi! &lt;b&gt;", "Lovely then",
                                         "Kyoto in autumn?", "reply under review")]
        assert order == sorted(order)
        for action in ("correct", "accept", "skip"):
            assert f'action="/admin/review/{action}"' in page

        missing = await boss.get("/admin/review/no-such-exchange")
        assert missing.status_code == 404
        assert "exchange &#39;no-such-exchange&#39;: no such exchange" in missing.text

        # A traveller who opted out: shown, but no decision is offered (it would be refused).
        await db.accounts.set_training_opt_out(TRAVELLER.username, True)
        opted = (await boss.get(f"/admin/review/{ex.id}")).text
        assert "its traveller opted out of training" in opted
        assert 'action="/admin/review/correct"' not in opted


async def test_review_decisions_posted_from_the_console_are_stored_and_audited(
        db: Store, settings: Settings) -> None:
    ids = await queue_of(db)
    app = console_app(db, settings)
    async with client(app, ADMIN.username) as boss:
        page = (await boss.get(f"/admin/review/{ids['ft-down']}?unreviewed=on")).text
        token = csrf_of(page)

        # Refused by a policy check: the reason on the page, the text kept, nothing saved.
        refused = await boss.post("/admin/review/correct", data={
            "csrf": token, "exchange": ids["ft-down"], "text": HOTEL, "back": "unreviewed=on"})
        assert refused.status_code == 409
        assert ("the correction fails the policy checks: failed: no_business (names a"
                " business: &#39;Hilton&#39;); nothing saved") in refused.text
        assert f">{HOTEL}</textarea>" in refused.text
        assert await db.reviews.history(ids["ft-down"]) == []

        saved = await boss.post("/admin/review/correct", data={
            "csrf": token, "exchange": ids["ft-down"], "text": BETTER + "\n",
            "back": "unreviewed=on"})
        assert saved.status_code == 200, saved.text[:500]
        assert f'role="status">corrected {ids["ft-down"]} (review ' in saved.text
        assert 'href="/admin/review?unreviewed=on">← back to the queue' in saved.text
        accepted = await boss.post("/admin/review/accept", data={
            "csrf": token, "exchange": ids["new-base"]})
        assert accepted.status_code == 200 and f"accepted {ids['new-base']}" in accepted.text
        skipped = await boss.post("/admin/review/skip", data={
            "csrf": token, "exchange": ids["old-base"]})
        assert skipped.status_code == 200 and f"skipped {ids['old-base']}" in skipped.text
        # Out of the not-yet-reviewed queue now.
        assert listed((await boss.get("/admin/review?unreviewed=on")).text) == []

        unknown = await boss.post("/admin/review/accept", data={"csrf": token,
                                                                "exchange": "nope"})
        assert unknown.status_code == 404
        assert "exchange &#39;nope&#39;: no such exchange" in unknown.text
        # No token: refused before anything is read.
        forged = await boss.post("/admin/review/accept", data={"exchange": ids["unrated"]})
        assert forged.status_code == 403

    [correction] = await db.reviews.history(ids["ft-down"])
    assert (correction.decision, correction.reviewer, correction.text) == (
        Decision.CORRECTED, ADMIN.username, BETTER)
    assert [(r.decision, r.reviewer) for r in await db.reviews.history(ids["new-base"])] == [
        (Decision.ACCEPTED, ADMIN.username)]
    assert [r.decision for r in await db.reviews.history(ids["old-base"])] == [
        Decision.SKIPPED]
    assert await db.reviews.history(ids["unrated"]) == []
    trail = await db.experiments.audit_page(action="review")
    assert [(h["actor"], h["details"]) for h in trail] == [
        (ADMIN.username, {"exchange_id": ids["old-base"], "decision": "skipped",
                          "text_sha256": None}),
        (ADMIN.username, {"exchange_id": ids["new-base"], "decision": "accepted",
                          "text_sha256": None}),
        (ADMIN.username, {"exchange_id": ids["ft-down"], "decision": "corrected",
                          "text_sha256": hashlib.sha256(BETTER.encode()).hexdigest()})]
