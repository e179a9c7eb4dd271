"""The live policy scores as a filter: the review queue and `dataset build` can take only the
replies the checks passed (`--auto-compliant`) or failed (`--auto-failed`); unscored replies
match neither."""

from __future__ import annotations

from pathlib import Path

from chatapp import review
from chatapp.chat.scoring import score
from chatapp.domain import Exchange
from chatapp.settings import Settings
from chatapp.store import ExchangeScope, QueueFilter, Store
from tests.admin.datasets.test_dataset_build import converse
from tests.admin.test_review import GOOD, Queue, _build, _fill
from tests.cli_support import ok, ok_json, with_db


async def _scored(store: Store, *exchanges: Exchange) -> None:
    for ex in exchanges:
        assert await store.scores.add(score(ex))  # as the chat's live scorer does


async def _queue(store: Store, auto: str | None) -> list[str]:
    page = await review.list_queue(store, QueueFilter(scope=ExchangeScope(auto=auto),
                                                      ratings=()))
    return [i.exchange_id for i in page.items]


async def _fill_scored(store: Store) -> Queue:
    q = await _fill(store)
    await _scored(store, q.ann, q.bob, q.cat)  # dan's reply is not scored (yet)
    return q


async def test_the_queue_filters_on_the_live_score(store: Store) -> None:
    q = await _fill_scored(store)
    assert await _queue(store, None) == [q.dan.id, q.cat.id, q.bob.id, q.ann.id]
    assert await _queue(store, "compliant") == [q.cat.id]
    assert await _queue(store, "failed") == [q.bob.id, q.ann.id]


async def test_dataset_build_filters_on_the_live_score(store: Store, settings: Settings,
                                                      tmp_path: Path) -> None:
    [good] = await converse(store, [("Lisbon?", GOOD, 1)], user="ann")
    [poor] = await converse(store, [("Madeira?", "Levadas.", 1)], user="bob")
    await _scored(store, good, poor)
    passed = await _build(store, settings, tmp_path, "passed", auto="compliant")
    assert [e["messages"][-1]["content"] for e in passed] == [GOOD]
    failed = await _build(store, settings, tmp_path, "failed", auto="failed")
    assert [e["messages"][-1]["content"] for e in failed] == ["Levadas."]
    # The dataset's recorded query names the filter.
    queries = {Path(path).name: doc["query"] for path, doc in await store.datasets.manifests()}
    assert queries["passed.train.jsonl"]["auto"] == "compliant"
    assert queries["failed.train.jsonl"]["auto"] == "failed"


def test_the_cli_flags(cli_env: Path) -> None:
    q = with_db(cli_env, _fill_scored)
    doc = ok_json("review", "list", "--all", "--auto-failed")
    assert [i["exchange_id"] for i in doc["items"]] == [q.bob.id, q.ann.id]
    doc = ok_json("review", "list", "--all", "--auto-compliant")
    assert [i["exchange_id"] for i in doc["items"]] == [q.cat.id]
    assert "--auto-compliant" in ok("dataset", "build", "--help")
