"""Human review of replies (chatapp/review.py, `travel-admin review`): the queue and its filters,
one reply in full, corrections (policy-checked, scrubbed, audited by hash), accept and skip, what
they change in a built dataset (and what they do not: the A/B figures), the travellers' opt-out
of training, and corrections through export, erasure and retention. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from admin.cli.common import actor
from admin.datasets.build import BuildOptions, Selection, build_dataset
from chatapp import privacy, review
from chatapp.auth import hash_password
from chatapp.chat.preferences import TRAINING_SWITCH, apply_settings, training_allowed
from chatapp.domain import Decision, Exchange
from chatapp.settings import Settings
from chatapp.store import ExchangeScope, QueueFilter, Store, StoreError
from chatapp.store.reviews import text_digest
from tests.admin.datasets.test_dataset_build import T0, converse, read
from tests.cli_support import invoke, ok, ok_json, with_db
from tests.store.test_privacy import seed

GOOD = "Lisbon's miradouros at sunset are unforgettable. Which neighbourhood will you start in?"
BAD = "Lisbon is lovely."  # ends without a question


@dataclass
class Queue:
    """A few conversations covering every filter of the queue (see `_fill`)."""

    ann: Exchange  # web, base, down with a comment, T0
    bob: Exchange  # web, fine_tuned, down without comment, T0 + 1 h
    cat: Exchange  # web, base, up, T0 + 2 h
    dan: Exchange  # web, base, unrated, T0 + 3 h
    sim: Exchange  # simulated, base, down, T0 + 4 h


async def _fill(store: Store) -> Queue:
    [ann] = await converse(store, [("What should I see in Lisbon?", BAD, 0)], user="ann")
    await store.exchanges.rate(ann.id, 0, user_id="ann", comment="no question at the end")
    [bob] = await converse(store, [("Porto in winter?", "Porto is rainy.", 0)], user="bob",
                           arm="fine_tuned", at=T0 + timedelta(hours=1))
    [cat] = await converse(store, [("Sintra?", GOOD, 1)], user="cat",
                           at=T0 + timedelta(hours=2))
    [dan] = await converse(store, [("Madeira?", "Levadas.", None)], user="dan",
                           at=T0 + timedelta(hours=3))
    [sim] = await converse(store, [("Oslo?", "Fjords.", 0)], user="sim-1", source="simulated",
                           at=T0 + timedelta(hours=4))
    # Never in the queue: an eval reply, a failed turn, an unfinished one.
    await converse(store, [("Eval?", "Eval.", 0)], user="eval", source="eval")
    await converse(store, [("Error?", "Sorry.", 0)], user="eve", outcome="error")
    await converse(store, [("Pending?", "", None)], user="eve", outcome="pending")
    return Queue(ann, bob, cat, dan, sim)


async def _ids(store: Store, **kw: Any) -> list[str]:
    limit, offset = kw.pop("limit", 50), kw.pop("offset", 0)
    page = await review.list_queue(store, QueueFilter(**kw), limit, offset)
    return [i.exchange_id for i in page.items]


async def test_the_queue_filters_and_pages_rated_down_replies_newest_first(
        store: Store) -> None:
    q = await _fill(store)
    assert await _ids(store) == [q.bob.id, q.ann.id]
    assert await _ids(store, ratings=()) == [q.dan.id, q.cat.id, q.bob.id, q.ann.id]
    assert await _ids(store, ratings=(1,)) == [q.cat.id]
    assert await _ids(store, ratings=(None,)) == [q.dan.id]
    assert await _ids(store, scope=ExchangeScope(arms=("fine_tuned",))) == [q.bob.id]
    assert await _ids(store, scope=ExchangeScope(deployments=("dep-base",))) == [q.ann.id]
    assert await _ids(store, scope=ExchangeScope(sources=("simulated",))) == [q.sim.id]
    assert await _ids(store, scope=ExchangeScope(since=T0 + timedelta(minutes=30))) == [q.bob.id]
    assert await _ids(store, has_comment=True) == [q.ann.id]
    assert await _ids(store, has_comment=False) == [q.bob.id]
    page = await review.list_queue(store, QueueFilter(ratings=()), limit=2, offset=2)
    assert ([i.exchange_id for i in page.items], page.total) == ([q.bob.id, q.ann.id], 4)
    [first] = (await review.list_queue(store, limit=1)).items
    assert (first.question, first.reply, first.rating, first.comment, first.review) == (
        "Porto in winter?", "Porto is rainy.", 0, None, None)
    # Reviewed replies stay in the queue with their decision, and leave the unreviewed view.
    await review.skip(store, q.bob.id, "rita")
    assert await _ids(store, unreviewed=True) == [q.ann.id]
    assert [i.review for i in (await review.list_queue(store)).items] == ["skipped", None]
    with pytest.raises(review.ReviewError, match="source eval: evaluation replies"):
        await review.list_queue(store, QueueFilter(scope=ExchangeScope(sources=("eval",))))
    with pytest.raises(review.ReviewError, match="limit: must be at least 1, got 0"):
        await review.list_queue(store, limit=0)


async def test_show_has_the_conversation_reply_rating_comment_and_failed_checks(
        store: Store) -> None:
    [first, second] = await converse(store, [
        ("What should I see in Lisbon?", GOOD, 1),
        ("Where should I stay?", "Stay at the Ritz-Carlton, it is the best.", 0)], user="ann")
    await store.exchanges.rate(second.id, 0, user_id="ann", comment="named a hotel")
    shown = await review.show(store, second.id)
    assert [m["role"] for m in shown.conversation] == ["system", "user", "assistant", "user"]
    assert shown.conversation[2]["content"] == GOOD
    assert shown.question == "Where should I stay?"
    assert shown.reply == "Stay at the Ritz-Carlton, it is the best."
    assert (shown.rating, shown.comment, shown.reviews, shown.opted_out) == (
        0, "named a hotel", [], False)
    assert shown.checks.failed == ["no_business", "ends_with_question"]
    assert "Ritz-Carlton" in shown.checks.checks["no_business"].reason
    assert (await review.show(store, first.id)).checks.compliant


async def test_correct_accept_and_skip_are_appended_and_the_latest_counts(
        store: Store) -> None:
    [ex] = await converse(store, [("What should I see in Lisbon?", BAD, 0)])
    saved = await review.correct(store, ex.id, "rita", f"  {GOOD}\n")
    assert (saved.review.decision, saved.review.text, saved.review.reviewer) == (
        Decision.CORRECTED, GOOD, "rita")
    await review.skip(store, ex.id, "sam")
    await review.accept(store, ex.id, "tom")
    shown = await review.show(store, ex.id)
    assert [(r.reviewer, r.decision, r.text) for r in shown.reviews] == [
        ("rita", "corrected", GOOD), ("sam", "skipped", None), ("tom", "accepted", None)]
    assert shown.latest is not None and shown.latest.decision == Decision.ACCEPTED
    assert await store.reviews.latest_corrections([ex.id]) == {}  # no longer the latest
    again = await review.correct(store, ex.id, "rita", GOOD.replace("sunset", "dusk"))
    [correction] = (await store.reviews.latest_corrections([ex.id])).values()
    assert (correction.text, correction.original_reply, correction.review_id) == (
        GOOD.replace("sunset", "dusk"), BAD, again.review.id)
    assert correction.messages[-1] == {"role": "user", "content": "What should I see in Lisbon?"}
    # The audit trail names reviewer and exchange, and holds the text's hash, never the text.
    lines = [h for h in await store.experiments.history() if h["action"] == "review"]
    assert [(h["actor"], h["details"]["decision"]) for h in reversed(lines)] == [
        ("rita", "corrected"), ("sam", "skipped"), ("tom", "accepted"), ("rita", "corrected")]
    assert lines[-1]["details"] == {"exchange_id": ex.id, "decision": "corrected",
                                    "text_sha256": text_digest(GOOD)}
    assert "miradouros" not in json.dumps([h["details"] for h in lines])


async def test_a_correction_that_fails_a_policy_check_is_refused_and_nothing_is_saved(
        store: Store) -> None:
    [ex] = await converse(store, [("What should I see in Lisbon?", BAD, 0)])
    with pytest.raises(review.ReviewError, match=rf"exchange {ex.id}: the correction fails"
                       r" the policy checks: failed: no_business \(names a business"):
        await review.correct(store, ex.id, "rita",
                             "Book a room at Hotel Artemide. Which area do you like?")
    with pytest.raises(review.ReviewError, match="ends_with_question"):
        await review.correct(store, ex.id, "rita", "Alfama is charming and central.")
    with pytest.raises(review.ReviewError, match="no_over_refusal"):
        await review.correct(store, ex.id, "rita", "I can't help with that. Anything about"
                             " food you would like to know?")
    assert await store.reviews.history(ex.id) == []
    assert not [h for h in await store.experiments.history() if h["action"] == "review"]


async def test_every_bad_request_names_the_exchange_and_the_problem(store: Store) -> None:
    [ex] = await converse(store, [("Lisbon?", BAD, 0)], user="ann")
    [pending] = await converse(store, [("Porto?", "", None)], outcome="pending")
    [ev] = await converse(store, [("Eval?", "Eval.", 0)], source="eval", user="eval")
    cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: review.show(store, "no-such-id"), "exchange 'no-such-id': no such exchange"),
        (lambda: review.accept(store, "  ", "rita"), "exchange id: empty"),
        (lambda: review.skip(store, pending.id, "rita"),
         f"exchange {pending.id}: has no reply to review \\(outcome pending\\)"),
        (lambda: review.correct(store, ex.id, "rita", " \n\t"),
         f"exchange {ex.id}: the corrected reply is empty"),
        (lambda: review.correct(store, ex.id, "rita", f"{BAD}  "),
         f"exchange {ex.id}: the correction is the reply as it stands; use `accept`"),
        (lambda: review.accept(store, ev.id, "rita"), f"exchange {ev.id}: an eval reply"),
    ]
    for call, message in cases:
        with pytest.raises(review.ReviewError, match=message):
            await call()
    await store.accounts.add("ann", hash_password("pw"), is_admin=False)
    await store.accounts.set_training_opt_out("ann", True)
    with pytest.raises(review.ReviewError, match=f"exchange {ex.id}: its traveller opted out"):
        await review.correct(store, ex.id, "rita", GOOD)
    assert await store.reviews.history(ex.id) == []


async def test_a_correction_is_scrubbed_of_personal_data(store: Store) -> None:
    [ex] = await converse(store, [("Lisbon?", BAD, 0)])
    saved = await review.correct(store, ex.id, "rita", "Write to jane@example.com for tips"
                                 " on the trams. Which hill will you climb first?")
    assert saved.scrubbed == {"email": 1}
    [stored] = await store.reviews.history(ex.id)
    assert stored.text is not None and "[EMAIL]" in stored.text and "jane@" not in stored.text


async def _build(store: Store, settings: Settings, out: Path, name: str,
                 **selection: Any) -> list[dict[str, Any]]:
    result = await build_dataset(store, BuildOptions(
        out_dir=out, name=name, validation_ratio=0.0, selection=Selection(**selection)),
        settings=settings, actor="tester")
    return [e for f in result.files for e in read(f.path)]


def _assistant(example: dict[str, Any]) -> list[tuple[str, int | None]]:
    return [(m["content"], m.get("weight")) for m in example["messages"]
            if m["role"] == "assistant"]


async def test_a_corrected_reply_replaces_the_one_it_corrects_in_a_built_dataset(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    [_, down] = await converse(store, [("Lisbon?", GOOD, 1), ("And Porto?", BAD, 0)])
    [fine] = await converse(store, [("Madeira?", "Levadas. Walk or swim?", 0)])
    [skipped] = await converse(store, [("Oslo?", "Fjords.", 0)])
    better = "Porto's riverside and port lodges are a treat. Will you cross the bridge on foot?"
    await review.correct(store, down.id, "rita", better)
    await review.accept(store, fine.id, "rita")
    await review.skip(store, skipped.id, "rita")

    examples = await _build(store, settings, tmp_path, "prefix")
    replies = sorted(_assistant(e)[-1] for e in examples)
    assert replies == sorted([(GOOD, None), (better, None), ("Levadas. Walk or swim?", None)])
    porto = next(e for e in examples if _assistant(e)[-1][0] == better)
    assert _assistant(porto) == [(GOOD, 0), (better, None)]
    assert BAD not in json.dumps(examples) and "Fjords" not in json.dumps(examples)

    # Whole conversations: the correction takes the reply's place, trained on.
    [_, mid, _] = await converse(store, [("Rome?", GOOD, 1), ("Naples?", BAD, 0),
                                         ("Pompeii?", "Ruins! Morning or afternoon?", 1)],
                                 user="zoe")
    await review.correct(store, mid.id, "rita", better.replace("Porto", "Naples"))
    whole = await _build(store, settings, tmp_path, "whole", multi_turn="whole",
                         users=("zoe",))
    [example] = whole
    assert _assistant(example) == [(GOOD, None), (better.replace("Porto", "Naples"), None),
                                   ("Ruins! Morning or afternoon?", None)]
    assert BAD not in json.dumps(whole)


async def test_a_correction_makes_a_preference_pair_over_the_reply_it_corrects(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    cities = ["Lisbon", "Porto", "Seville", "Kyoto", "Hanoi", "Quito", "Oslo", "Tbilisi",
              "Fes", "Cusco"]
    corrected = {}
    for i, city in enumerate(cities):
        [ex] = await converse(store, [(f"What is {city} like in spring?", f"{city} is fine.", 0)],
                              user=f"u{i}")
        corrected[city] = (f"{city} in spring is mild and lively, with markets and long evening"
                           " walks. Which part of the city will you explore first?")
        await review.correct(store, ex.id, "rita", corrected[city])
    result = await build_dataset(store, BuildOptions(
        out_dir=tmp_path, name="prefs", validation_ratio=0.0, format="preference",
        selection=Selection(sources=("web",))), settings=settings, actor="tester")
    assert result.ok, [str(p) for f in result.files for p in f.report.problems]
    assert dict(result.counts.pairs_kept) == {"correction": 10}
    rows = [r for f in result.files for r in read(f.path)]
    by_city = {r["input"]["messages"][-1]["content"].split()[2]: r for r in rows}
    assert set(by_city) == set(cities)
    for city, row in by_city.items():
        assert row["preferred_output"] == [{"role": "assistant", "content": corrected[city]}]
        assert row["non_preferred_output"] == [{"role": "assistant",
                                                "content": f"{city} is fine."}]


async def test_reviews_leave_ratings_and_the_ab_figures_as_they_were(store: Store) -> None:
    [a, b] = await converse(store, [("Lisbon?", BAD, 0), ("Porto?", "Porto.", 0)])
    before = await store.exchanges.experiment_rows("exp-1", ["web"])
    await review.correct(store, a.id, "rita", GOOD)
    await review.accept(store, b.id, "rita")
    assert await store.exchanges.experiment_rows("exp-1", ["web"]) == before
    assert {r["rating"] for r in before} == {0}


async def test_an_opted_out_traveller_is_left_out_of_datasets_and_the_queue_past_and_future(
        store: Store, settings: Settings, tmp_path: Path) -> None:
    for name in ("ann", "bob"):
        await store.accounts.add(name, hash_password("pw"), is_admin=False)
    [ann_up] = await converse(store, [("Lisbon?", GOOD, 1)], user="ann")
    [ann_down] = await converse(store, [("Porto?", BAD, 0)], user="ann",
                                at=T0 + timedelta(hours=1))
    await review.correct(store, ann_down.id, "rita", GOOD.replace("Lisbon", "Porto"))
    [bob_down] = await converse(store, [("Oslo?", BAD, 0)], user="bob",
                                at=T0 + timedelta(hours=2))
    assert await training_allowed(store, "ann") is True

    assert await apply_settings(store, "ann", {TRAINING_SWITCH: False}) is False
    assert await store.accounts.training_opt_out("ann") is True
    assert await store.accounts.opted_out() == {"ann"}
    assert await store.accounts.opted_out(["bob", "zed"]) == set()
    [later] = await converse(store, [("Faro?", GOOD, 1)], user="ann",  # after opting out
                             at=T0 + timedelta(hours=3))
    assert await _ids(store, ratings=()) == [bob_down.id]
    assert await store.reviews.latest_corrections() == {}
    assert set(await store.reviews.latest_corrections(include_opted_out=True)) == {ann_down.id}
    [only_bob] = await _build(store, settings, tmp_path, "out", ratings="up+down")
    assert "Oslo?" in json.dumps(only_bob)
    assert not any(q in json.dumps(only_bob) for q in ("Lisbon?", "Porto?", "Faro?"))
    assert await store.exchanges.count_rated(Selection().filter()) == 0

    # Opting back in brings all of ann's conversations back, old and new.
    assert await apply_settings(store, "ann", {TRAINING_SWITCH: True, "arm": "auto"}) is True
    assert await training_allowed(store, "ann") is True
    assert await _ids(store, ratings=()) == [later.id, bob_down.id, ann_down.id, ann_up.id]
    examples = await _build(store, settings, tmp_path, "in")
    assert len(examples) == 3 and BAD not in json.dumps(examples)


async def test_the_settings_switch_is_kept_only_for_accounts_and_only_when_sent(
        store: Store) -> None:
    await store.accounts.add("ann", hash_password("pw"), is_admin=False)
    assert await apply_settings(store, "ann", {"arm": "fine_tuned"}) is None
    assert await store.accounts.training_opt_out("ann") is False
    assert await apply_settings(store, "ann", {TRAINING_SWITCH: False}) is False
    assert await apply_settings(store, "ann", {TRAINING_SWITCH: False}) is False  # unchanged
    assert await store.accounts.training_opt_out("ann") is True
    # Header sign-in without an account: no switch to show, nothing to keep.
    assert await training_allowed(store, "proxy-user") is None
    assert await apply_settings(store, "proxy-user", {TRAINING_SWITCH: False}) is None
    assert await store.accounts.training_opt_out("proxy-user") is None


async def test_corrections_are_exported_erased_and_purged_with_their_conversation(
        store: Store) -> None:
    alice = await seed(store, "alice", days_ago=40)
    bob = await seed(store, "bob", days_ago=1)
    text = GOOD.replace("Lisbon", "Alfama")
    for who in (alice, bob):
        await review.correct(store, who["exchanges"][0], "rita", text)
        await review.accept(store, who["exchanges"][1], "rita")
    doc = await privacy.export_user(store, "alice")
    assert [(r["exchange_id"], r["decision"], r["text"]) for r in doc["reviews"]] == [
        (alice["exchanges"][0], "corrected", text), (alice["exchanges"][1], "accepted", None)]
    assert doc["account"]["training_opt_out"] is False

    purged = await privacy.purge(store, 30)
    assert (purged.threads, purged.counts["reviews"]) == (1, 2)
    assert await store.reviews.history(alice["exchanges"][0]) == []
    assert len(await store.reviews.history(bob["exchanges"][0])) == 1
    erased = await privacy.erase_user(store, "bob", actor="ops")
    assert erased["reviews"] == 2
    assert await store.reviews.latest(bob["exchanges"]) == {}
    assert await store.reviews.latest_corrections(include_opted_out=True) == {}


# -- the commands ------------------------------------------------------------------------------


@pytest.fixture
def queue_db(cli_env: Path) -> Iterator[tuple[Path, Queue]]:
    yield cli_env, with_db(cli_env, _fill)


def test_review_list_show_and_decisions_through_the_cli(
        queue_db: tuple[Path, Queue], tmp_path: Path) -> None:
    data_dir, q = queue_db
    doc = ok_json("review", "list")
    assert (doc["total"], [i["exchange_id"] for i in doc["items"]]) == (2, [q.bob.id, q.ann.id])
    doc = ok_json("review", "list", "--all", "--limit", "1", "--page", "2")
    assert (doc["total"], doc["pages"], [i["exchange_id"] for i in doc["items"]]) == (
        4, 4, [q.cat.id])
    doc = ok_json("review", "list", "--has-comment", "--arm", "base", "--since", "2026-10-01")
    assert [i["exchange_id"] for i in doc["items"]] == [q.ann.id]
    assert ok_json("review", "list", "--source", "simulated")["items"][0]["exchange_id"] == \
        q.sim.id
    out = ok("review", "list")
    assert "Review queue" in out and "page 1 of 1 (2 replies)" in out

    shown = ok_json("review", "show", q.ann.id)
    assert (shown["reply"], shown["rating"], shown["comment"]) == (
        BAD, 0, "no question at the end")
    assert shown["failed_checks"] == ["ends_with_question"]
    assert shown["conversation"][-1]["content"] == "What should I see in Lisbon?"
    assert "ends_with_question" in ok("review", "show", q.ann.id)

    assert f"corrected {q.ann.id}" in ok("review", "correct", q.ann.id, "--text", GOOD)
    path = tmp_path / "better.md"
    path.write_text(GOOD.replace("Lisbon", "Porto"), encoding="utf-8")
    ok("review", "correct", q.bob.id, "--file", str(path))
    ok("review", "accept", q.cat.id)
    ok("review", "skip", q.dan.id)
    assert ok_json("review", "list", "--all", "--unreviewed")["items"] == []
    decisions = {i["exchange_id"]: i["review"]
                 for i in ok_json("review", "list", "--all")["items"]}
    assert decisions == {q.ann.id: "corrected", q.bob.id: "corrected", q.cat.id: "accepted",
                         q.dan.id: "skipped"}
    history = ok_json("review", "show", q.bob.id)["reviews"]
    assert [(r["decision"], r["text"]) for r in history] == [
        ("corrected", GOOD.replace("Lisbon", "Porto"))]
    corrections = with_db(data_dir, lambda s: s.reviews.latest_corrections())
    assert {k: (c.original_reply, c.reviewer) for k, c in corrections.items()} == {
        q.ann.id: (BAD, actor()), q.bob.id: ("Porto is rainy.", actor())}


def test_review_correct_opens_the_editor_and_keeps_the_text_above_the_scissors(
        queue_db: tuple[Path, Queue], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, q = queue_db
    # An "editor" that replaces the reply above the scissors line and keeps the context below.
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import sys\n"
        "path = sys.argv[1]\n"
        "text = open(path, encoding='utf-8').read()\n"
        "head, sep, tail = text.partition('# ----')\n"
        f"open(path, 'w', encoding='utf-8').write({GOOD!r} + '\\n' + sep + tail)\n",
        encoding="utf-8")
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    ok("review", "correct", q.ann.id)
    [stored] = ok_json("review", "show", q.ann.id)["reviews"]
    assert stored["text"] == GOOD
    # Closed without saving: nothing saved, and it says so.
    monkeypatch.setenv("EDITOR", "true")
    result = invoke("review", "correct", q.bob.id)
    assert result.exit_code == 1
    assert "closed without saving; nothing saved" in " ".join(result.output.split())
    assert ok_json("review", "show", q.bob.id)["reviews"] == []


def test_review_commands_refuse_bad_input_with_what_and_where(
        queue_db: tuple[Path, Queue], tmp_path: Path) -> None:
    _, q = queue_db
    cases = [
        (["review", "show", "nope"], 1, "exchange 'nope': no such exchange"),
        (["review", "accept", "nope"], 1, "exchange 'nope': no such exchange"),
        (["review", "correct", q.ann.id, "--text", "  "], 1, "the corrected reply is empty"),
        (["review", "correct", q.ann.id, "--file", str(tmp_path / "missing.md")], 2,
         f"--file {tmp_path / 'missing.md'}: no such file"),
        (["review", "correct", q.ann.id, "--text", "x", "--file", "y"], 2,
         "--text and --file: give one of them"),
        (["review", "correct", q.ann.id, "--text", "Stay at the Hilton. Which floor?"], 1,
         "fails the policy checks: failed: no_business"),
        (["review", "list", "--rating", "sideways"], 2, "--rating: 'sideways' is not one of"),
        (["review", "list", "--source", "eval"], 2, "--source: 'eval' is not one of"),
        (["review", "list", "--all", "--rating", "up"], 2, "--all and --rating"),
    ]
    for args, code, message in cases:
        result = invoke(*args)
        flat = " ".join(result.output.split())
        assert (result.exit_code, message in flat) == (code, True), (args, result.output)
    assert ok_json("review", "show", q.ann.id)["reviews"] == []


async def test_a_review_whose_audit_line_fails_is_not_saved_either(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    [ex] = await converse(store, [("Lisbon?", BAD, 0)])

    async def broken(*args: Any) -> None:
        raise RuntimeError("audit trail unavailable")

    monkeypatch.setattr("chatapp.store.reviews.audit", broken)
    with pytest.raises(RuntimeError, match="audit trail unavailable"):
        await review.correct(store, ex.id, "rita", GOOD)
    assert await store.reviews.history(ex.id) == []  # one transaction: no review without audit


async def test_a_review_on_an_exchange_id_that_is_not_one_is_refused_by_the_store(
        store: Store) -> None:
    with pytest.raises(StoreError, match="no exchange 'ghost'"):
        await store.reviews.add("ghost", reviewer="rita", decision=Decision.ACCEPTED)
    [ex] = await converse(store, [("Lisbon?", BAD, 0)])
    with pytest.raises(StoreError, match="a correction needs a non-empty text"):
        await store.reviews.add(ex.id, reviewer="rita", decision=Decision.CORRECTED, text=" ")
    with pytest.raises(StoreError, match="only a correction has a text"):
        await store.reviews.add(ex.id, reviewer="rita", decision=Decision.SKIPPED, text="x")
    assert await store.reviews.history(ex.id) == []
