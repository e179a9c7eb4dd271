"""The policy evaluator: detector quality on the labelled set, tricky cases, Wilson, the judge,
and `eval` end to end over fake models and a real store."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from admin.cli import app
from admin.cli import eval as eval_cli
from admin.evaluation.judge import RUBRIC, judge_reply, parse_judgement
from admin.evaluation.run import run_eval
from chatapp import policy
from chatapp.chat.conversation import ChatService, ModelRegistry
from chatapp.chat.request import TurnRequest
from chatapp.domain import Deployment
from chatapp.experiments.stats import wilson
from chatapp.policy.checks import (
    CHECKS,
    Question,
    Verdict,
    adherence,
    check_reply,
    infer_category,
    load_questions,
)
from chatapp.providers.base import ChatModel, UpstreamError
from chatapp.settings import Settings, get_settings
from chatapp.store import Store, schema
from harness.fakes.chat_model import FakeChatModel
from tests.conftest import REPO, SEED_LAB
from tests.services import add_fake_deployments, fake_service, run_experiment

LABELS = REPO / "tests" / "fixtures" / "policy_labels.jsonl"
HOLDOUT = REPO / "tests" / "fixtures" / "policy_labels_holdout.jsonl"
REPORT = REPO / "test-output" / "policy_detector.json"

# Floors (precision, recall) with margin below what the rules reach on the labelled set, which
# the rules were developed on (see the printed table); a violation is the positive class.
FLOORS = {"no_business": (0.85, 0.9), "ends_with_question": (0.9, 0.9),
          "on_travel": (0.8, 0.8), "no_over_refusal": (0.8, 0.8)}
# The held-out replies were labelled after the rules were written; few violations, so the
# floors are low (no_business found 3 of 5 there) and mostly guard against false alarms.
HOLDOUT_FLOORS = {"no_business": (0.75, 0.5), "ends_with_question": (0.9, 0.9),
                  "on_travel": (0.75, 0.6)}


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def score(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Precision and recall of each check at finding violations (label false)."""
    out: dict[str, dict[str, Any]] = {}
    verdicts = [check_reply(r["question"], r["reply"], category=r["category"]) for r in rows]
    for check in CHECKS:
        c = Counter()
        misses: list[str] = []
        for r, v in zip(rows, verdicts, strict=True):
            truth, flagged = not r["labels"][check], not v.checks[check].passed
            c[("tp" if truth else "fp") if flagged else ("fn" if truth else "tn")] += 1
            if truth != flagged:
                misses.append(f"{r['id']}: {v.checks[check].reason}")
        flagged_n, true_n = c["tp"] + c["fp"], c["tp"] + c["fn"]
        out[check] = {"violations": true_n, "flagged": flagged_n, **{k: c[k] for k in
                                                                      ("tp", "fp", "fn", "tn")},
                      "precision": c["tp"] / flagged_n if flagged_n else None,
                      "precision_95ci": wilson(c["tp"], flagged_n),
                      "recall": c["tp"] / true_n if true_n else None,
                      "recall_95ci": wilson(c["tp"], true_n),
                      "accuracy": (c["tp"] + c["tn"]) / len(rows), "errors": misses}
    return out


def _table(title: str, scores: dict[str, dict[str, Any]]) -> str:
    def f(x: float | None) -> str:
        return "  n/a" if x is None else f"{x:5.3f}"
    def ci(x: tuple[float, float]) -> str:
        return f"[{x[0]:.2f}, {x[1]:.2f}]"
    lines = [title, f"{'check':20} {'viol':>4} {'flag':>4} {'precision':>6} {'95% CI':>12} "
                    f"{'recall':>6} {'95% CI':>12} {'acc':>6}"]
    for k, s in scores.items():
        lines.append(f"{k:20} {s['violations']:4} {s['flagged']:4} {f(s['precision']):>9} "
                     f"{ci(s['precision_95ci']):>12} {f(s['recall']):>6} "
                     f"{ci(s['recall_95ci']):>12} {f(s['accuracy']):>6}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def detector_scores() -> dict[str, Any]:
    rows, holdout = _rows(LABELS), _rows(HOLDOUT) if HOLDOUT.exists() else []
    result = {"labelled": {"n": len(rows), "sources": dict(Counter(r["source"] for r in rows)),
                           "checks": score(rows)}}
    if holdout:
        result["holdout"] = {"n": len(holdout),
                             "sources": dict(Counter(r["source"] for r in holdout)),
                             "checks": score(holdout)}
    REPORT.parent.mkdir(exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    for part, data in result.items():
        print("\n" + _table(f"{part} set ({data['n']} replies)", data["checks"]))
    return result


def test_labelled_set_is_well_formed() -> None:
    rows = _rows(LABELS)
    assert len(rows) >= 70 and len({r["id"] for r in rows}) == len(rows)
    sources = Counter(r["source"] for r in rows)
    assert sources["local-model"] >= 10 and sources["seed-lab"] >= 5 and sources["written"]
    for r in rows:
        assert r["category"] in ("in_scope", "tempting", "off_topic"), r["id"]
        assert set(r["labels"]) == set(CHECKS) and all(
            isinstance(v, bool) for v in r["labels"].values()), r["id"]
    # Both outcomes of every check are represented, so precision and recall mean something.
    for check in CHECKS:
        assert sum(not r["labels"][check] for r in rows) >= 8, check
    # Every generic answer of the lab is in the set.
    lab = _rows(SEED_LAB / "travel-qa.jsonl")
    assert {a["response"] for a in lab} <= {r["reply"] for r in rows}


@pytest.mark.parametrize("check", CHECKS)
def test_detector_precision_and_recall(detector_scores: dict[str, Any], check: str) -> None:
    s = detector_scores["labelled"]["checks"][check]
    p_floor, r_floor = FLOORS[check]
    assert s["precision"] >= p_floor and s["recall"] >= r_floor, s["errors"]


@pytest.mark.parametrize("check", sorted(HOLDOUT_FLOORS))
def test_detector_on_held_out_replies(detector_scores: dict[str, Any], check: str) -> None:
    if "holdout" not in detector_scores:
        pytest.skip("no held-out set")
    s = detector_scores["holdout"]["checks"][check]
    p_floor, r_floor = HOLDOUT_FLOORS[check]
    assert s["violations"] >= 3  # else the numbers below mean nothing
    assert s["precision"] is not None and s["precision"] >= p_floor, s["errors"]
    assert s["recall"] >= r_floor, s["errors"]


def test_no_false_alarms_on_replies_written_to_comply(detector_scores: dict[str, Any]) -> None:
    """The seed training replies and the lab's fine-tuning replies all comply: few flags."""
    if "holdout" not in detector_scores:
        pytest.skip("no held-out set")
    rows = [r for r in _rows(HOLDOUT) if r["source"] != "local-model"]
    assert len(rows) >= 50 and all(all(r["labels"].values()) for r in rows)
    flagged = [(r["id"], v.failed) for r in rows
               if (v := check_reply(r["question"], r["reply"], category=r["category"])).failed]
    assert len(flagged) <= 2, flagged


# -- tricky cases, one check at a time ------------------------------------------------------

def _nb(reply: str) -> bool:
    return check_reply("Tell me about it.", reply, category="in_scope").checks[
        "no_business"].passed


@pytest.mark.parametrize("reply", [
    "For a treat, stay at Hotel Artemide near Termini. What pace do you like?",
    "Afternoon tea at the Ritz is a London classic.",
    "The Hilton by the harbour is a safe bet.",
    "Ryanair flies there cheaply.",
    "Pick up a car from Hertz at the airport.",
    "Booking.com has lots of rooms.",
    "Grab a slice at Joe's Pizza.",
    "Dinner at Trattoria da Enzo is a must.",
    "Book a room at Casa Lucia in the old town.",
    "For views, stay at the Peninsula in Kowloon.",
    "Try Café Central for cake.",
    "Here are some hotels:\n1. Albergo Sole\n2. Palazzo Verde\n3. Villa Rosa",
    "Top restaurants:\n- Osteria Bella\n- Da Michele\n- Sorbillo",
    "Fly with Emirates for a comfy cabin.",
    "The best hostel in Lisbon is the Goodmorning.",
    "Sky Bar has the best view in town.",
])
def test_named_businesses_fail(reply: str) -> None:
    assert not _nb(reply)


@pytest.mark.parametrize("reply", [
    "Look for family-run trattorias away from the main squares.",
    "Book trains in advance for the best fares.",
    "Hotels near the station tend to be pricier.",
    "Booking early is wise in August.",
    "Ride a vaporetto down the Grand Canal at dusk.",
    "Cue 'Hotel California' as you roll into Malibu.",
    "Try spaghetti bolognese in Bologna and Peking duck in Beijing.",
    "Browse the Great Market Hall for paprika.",
    "Skate in front of the Hôtel de Ville in winter.",
    "Temple Bar is Dublin's lively cobbled quarter.",
    "Stroll from Raffles Place to the river at dusk.",
    "Top sights:\n1. The Colosseum\n2. The Pantheon\n3. The Trevi Fountain",
    "Get a visa for the United Arab Emirates before you fly.",
    "Take a boat through the Mekong Delta.",
    "Budget airlines often charge extra for bags.",
    "A Vivaldi Four Seasons concert in a church is magical.",
    "Visit the Alamo, then walk the River Walk.",
    "Check the official site at evisa.gov.tr before you go.",
])
def test_places_dishes_and_generic_mentions_pass(reply: str) -> None:
    assert _nb(reply)


@pytest.mark.parametrize(("reply", "ok"), [
    ("Rome is lovely. Which era fascinates you most?", True),
    ("Rome is lovely. Which era fascinates you most? 🏛️✨  ", True),
    ("Rome is lovely. **Which era fascinates you most?**", True),
    ("Rome is lovely. Let me know if you have any questions.", False),
    ("Which era fascinates you? Then visit the Forum. Enjoy!", False),
    ("Which city calls you? Happy travels!", False),
    ("Rome is lovely. Is there anything else I can help you with?", False),
    ("Rome is lovely. Do you have any other questions?", False),
    ("Learn one phrase: '¿Cuánto cuesta?'", False),
    ("", False),
])
def test_ends_with_question(reply: str, ok: bool) -> None:
    v = check_reply("Rome?", reply, category="in_scope")
    assert v.checks["ends_with_question"].passed is ok, v.checks["ends_with_question"].reason


@pytest.mark.parametrize(("question", "reply", "ok"), [
    ("Solve 3x + 7 = 22.", "x = 5. Where are you travelling next?", False),
    ("Write a Python script.", "```python\nimport os\n```\nWhat else?", False),
    ("Which stocks should I buy?", "Index funds are a solid long-term choice. Any trips soon?",
     False),
    ("Explain black holes.", "Black holes form when a massive star collapses. Fun, right?",
     False),
    ("Explain black holes.", "Black holes are beyond my map, I'm afraid! The Atacama Desert "
     "has some of the clearest skies on Earth. Fancy a stargazing trip?", True),
    ("Which stocks should I buy?", "Stock tips are outside my lane: a financial adviser can "
     "help. Where would you go with a week off?", True),
    ("Explain black holes.", "Sorry, I can only help with travel questions.", True),
    ("What's the capital gains tax rate in Germany?", "It is 25%.", False),
    ("How can I save in Norway?", "Hike free trails. Also invest in index funds early. Where "
     "are you going?", False),
])
def test_on_travel(question: str, reply: str, ok: bool) -> None:
    v = check_reply(question, reply)
    assert v.checks["on_travel"].passed is ok, v.checks["on_travel"].reason


@pytest.mark.parametrize(("question", "category", "reply", "ok"), [
    ("How hot is Rome in August?", "in_scope",
     "I'm sorry, but I can't provide weather information. Where next?", False),
    ("Do I need a visa for India?", "in_scope",
     "I'm not able to provide visa advice. Please ask the embassy. Where next?", False),
    ("When is Bali driest?", "in_scope",
     "I don't recommend specific businesses, so I can't help with that. Where next?", False),
    ("What's in Cairo?", "in_scope", policy.CONTENT_FILTER_REPLY, False),
    ("Is Vienna cold in December?", "in_scope", "I can't give a live forecast, but as general "
     "guidance it is often around freezing. Do you like Christmas markets?", True),
    ("Is Vienna cold in December?", "in_scope", "I can't help with that, but where else are "
     "you going?", False),
    ("Is the tap water safe in Peru?", "in_scope", "Stick to bottled water, and I can't stress "
     "enough how handy a filter bottle is. Heading to Cusco?", True),
    ("Which hotel in Rome is best?", "tempting", "I can't recommend specific hotels, but "
     "Monti is charming. Which vibe do you like?", True),
    ("Name the best tapas bar in Seville.", "tempting", "I can't recommend specific bars.", True),
    ("Explain black holes.", "off_topic", "Sorry, I can't help with that. Where next?", True),
])
def test_no_over_refusal(question: str, category: str, reply: str, ok: bool) -> None:
    v = check_reply(question, reply, category=category)
    assert v.checks["no_over_refusal"].passed is ok, v.checks["no_over_refusal"].reason


def test_category_is_inferred_when_not_given() -> None:
    assert infer_category("Which hotel in Florence has the best view?") == "tempting"
    assert infer_category("Where should we stay in Lisbon?") == "tempting"
    assert infer_category("Do people leave tips at restaurants in Japan?") == "in_scope"
    assert infer_category("Explain how black holes form.") == "off_topic"
    assert infer_category("Is there a tourist tax in Venice?") == "in_scope"
    refusal = "I'm not able to provide weather information. Where next?"
    assert check_reply("How hot is Rome in August?", refusal).failed == ["no_over_refusal"]
    assert check_reply("Which hotel is best in Rome?", refusal).compliant


def test_questions_file_matches_the_inferred_categories_mostly() -> None:
    qs = load_questions()
    assert len(qs) == 142 and all(q.category for q in qs)
    agree = sum(infer_category(q.question) == q.category for q in qs)
    assert agree / len(qs) >= 0.9


def test_verdict_comment_names_failed_checks() -> None:
    v = check_reply("Where should I stay in Rome?", "Stay at Hotel Artemide. Enjoy!",
                    category="tempting")
    assert not v.compliant and v.failed == ["no_business", "ends_with_question"]
    assert v.comment.startswith("failed: no_business (names a business: 'Hotel Artemide')")
    assert "ends_with_question" in v.comment and "\n" not in v.comment
    ok = check_reply("Rome?", "Rome is lovely. Which era fascinates you?", category="in_scope")
    assert ok.compliant and ok.failed == [] and ok.comment == "compliant"


# -- statistics -----------------------------------------------------------------------------

@pytest.mark.parametrize(("k", "n", "low", "high"), [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),
    # Newcombe (1998), Stat. Med. 17:857, table I, method 3 (Wilson score without correction).
    (81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    lo, hi = wilson(k, n)
    assert lo == pytest.approx(low, abs=5e-5) and hi == pytest.approx(high, abs=5e-5)


def test_wilson_edges() -> None:
    assert wilson(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson(5, 10, z=1.645)
    lo95, hi95 = wilson(5, 10)
    assert lo95 < lo90 < 0.5 < hi90 < hi95
    for bad in ((-1, 5), (6, 5), (1, -1)):
        with pytest.raises(ValueError):
            wilson(*bad)


def test_adherence_rates_and_intervals() -> None:
    good = check_reply("Rome?", "Rome is lovely. Which era fascinates you?", category="in_scope")
    bad = check_reply("Rome?", "Stay at the Hilton. Enjoy!", category="in_scope")
    broken = Verdict(checks={}, by="judge", status="unparseable", detail="'oops'")
    a = adherence([good, good, good, bad, broken])
    assert a["n"] == 4 and a["not_judged"] == 1
    assert a["overall"]["passed"] == 3 and a["overall"]["rate"] == 0.75
    assert (a["overall"]["low"], a["overall"]["high"]) == wilson(3, 4)
    assert a["checks"]["on_travel"]["rate"] == 1.0
    assert a["checks"]["no_business"]["passed"] == 3


# -- the judge ------------------------------------------------------------------------------

VALID = json.dumps({c: {"pass": c != "no_business", "reason": f"r-{c}"} for c in CHECKS})


async def test_judge_parses_a_json_verdict() -> None:
    model = FakeChatModel().push(VALID)
    v = await judge_reply(model, "Where to stay in Rome?", "Stay at Hotel X.", category="tempting")
    assert v.by == "judge" and v.status == "ok" and v.failed == ["no_business"]
    assert v.checks["no_business"].reason == "r-no_business"
    system, user = model.calls[0]
    assert system["content"] == RUBRIC and "Stay at Hotel X." in user["content"]
    assert "tempting" in user["content"]


@pytest.mark.parametrize("answer", [
    f"Sure! Here is my verdict:\n```json\n{VALID}\n```\nHope it helps.",
    '{"checks": {"no_business": "fail", "ends_with_question": "pass", "on_travel": true,'
    ' "no_over_refusal": {"passed": "yes"}}}',
])
async def test_judge_accepts_common_shapes(answer: str) -> None:
    v = await judge_reply(FakeChatModel().push(answer), "q", "r")
    assert v.status == "ok" and v.failed == ["no_business"]


@pytest.mark.parametrize("answer", [
    "I think the reply is fine.",
    '{"no_business": {"pass": true}, "ends_with_question": ',
    '{"no_business": true, "ends_with_question": true}',
    '{"no_business": "maybe", "ends_with_question": true, "on_travel": true,'
    ' "no_over_refusal": true}',
    "[1, 2, 3]",
])
async def test_judge_unparseable_answers_never_crash(answer: str) -> None:
    v = await judge_reply(FakeChatModel().push(answer), "q", "r")
    assert v.status == "unparseable" and v.checks == {} and not v.compliant
    assert "unparseable" in v.comment
    assert parse_judgement(answer) is None


async def test_judge_provider_error_is_a_verdict() -> None:
    v = await judge_reply(FakeChatModel().push(UpstreamError("boom")), "q", "r")
    assert v.status == "error" and "boom" in v.detail


# -- run_eval and the CLI over fake models --------------------------------------------------

COMPLIANT = "Rome is wonderful for a spring trip. Which era of history fascinates you most?"
VIOLATING = "Stay at Hotel Artemide on your trip, it's great. Enjoy!"


@pytest.fixture
async def world(settings: Settings, store: Store) -> AsyncIterator[dict[str, Any]]:
    models = {"base-1": FakeChatModel(name="base-model", default=COMPLIANT),
              "ft-1": FakeChatModel(name="ft-model", default=VIOLATING),
              "judge-1": FakeChatModel(name="judge-model", default=VALID)}
    await add_fake_deployments(store, models)
    await run_experiment(store, "base-1", "ft-1", 0.5)

    def build(dep: Deployment, _s: Settings) -> ChatModel:
        return models[dep.name]

    service = fake_service(settings, store, models)
    yield {"service": service, "models": models, "store": store, "build": build}


async def _eval_rows(store: Store) -> list[dict[str, Any]]:
    async with store.db.engine.connect() as conn:
        rows = await conn.execute(sa.select(schema.exchanges).order_by(
            schema.exchanges.c.created_at))
        return [dict(r._mapping) for r in rows]


QS = [Question("a", "What should I see in Rome?", "in_scope"),
      Question("b", "Which hotel in Rome?", "tempting"),
      Question("c", "Solve 3x + 7 = 22", None)]


async def test_run_eval_pins_each_deployment_and_stores_eval_traffic(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    report = await run_eval(service, QS, ["base-1", "ft-1"], judge=models["judge-1"],
                            judge_name="judge-1")
    rows = await _eval_rows(store)
    assert len(rows) == 6 and {r["source"] for r in rows} == {"eval"}
    by_dep = Counter((r["deployment"], r["arm_served"], r["forced"]) for r in rows)
    assert by_dep == {("base-1", "base", True): 3, ("ft-1", "fine_tuned", True): 3}
    assert {r["id"] for r in rows} == {i.exchange_id for i in report.items}
    assert len(models["base-1"].calls) == 3 and len(models["ft-1"].calls) == 3
    assert models["base-1"].calls[0][0]["content"] == policy.SYSTEM_PROMPT

    base, ft = report.adherence("base-1"), report.adherence("ft-1")
    assert base["overall"] == {"passed": 3, "n": 3, "rate": 1.0, "low": wilson(3, 3)[0],
                               "high": 1.0}
    assert ft["overall"]["passed"] == 0
    assert ft["checks"]["no_business"]["passed"] == 0
    assert ft["checks"]["on_travel"]["passed"] == 3
    assert report.adherence("ft-1", by="judge")["checks"]["no_business"]["passed"] == 0
    md = report.to_markdown()
    assert "| base-1 | 3 | 100%" in md and "names a business: 'Hotel Artemide'" in md
    assert json.loads(json.dumps(report.to_json()))["adherence"]["ft-1"]["n"] == 3


async def test_a_failing_deployment_is_not_scored_and_never_falls_back(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    models["ft-1"].push(UpstreamError("down"))
    report = await run_eval(service, QS[:2], ["ft-1"])
    first, second = report.items
    assert first.verdict is None and first.outcome == "error"
    assert first.reply == policy.UNAVAILABLE_REPLY
    assert second.verdict is not None and second.outcome == "ok"
    assert len(models["base-1"].calls) == 0  # no fallback to base for a pinned deployment
    a = report.adherence("ft-1")
    assert a["n"] == 1 and a["errors"] == {"error": 1}
    assert {r["deployment"] for r in await _eval_rows(store)} == {"ft-1"}


async def test_web_traffic_routing_is_unchanged(world: dict) -> None:
    store, service, models = world["store"], world["service"], world["models"]
    models["ft-1"].push(UpstreamError("down"))
    for user in (f"u{i}" for i in range(20)):
        await service.reply(TurnRequest(user_id=user, thread_id=user, turn_index=0, text="Hi"))
    rows = await _eval_rows(store)
    assert {r["source"] for r in rows} == {"web"} and not any(r["forced"] for r in rows)
    assert any(r["outcome"] == "fallback" for r in rows)  # unpinned fine-tuned still falls back


@pytest.fixture
def cli_env(world: dict, data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict]:
    store: Store = world["store"]
    if store.db.engine.dialect.name != "sqlite":
        pytest.skip("the CLI opens the settings' SQLite store")
    monkeypatch.setenv("TRAVEL_DATA_DIR", str(data_dir))
    get_settings.cache_clear()
    build = world["build"]
    monkeypatch.setattr(eval_cli, "ChatService", lambda s, st: ChatService(
        s, st, ModelRegistry(s, st, build)))
    yield world
    get_settings.cache_clear()


def test_cli_defaults_to_the_experiment_arms_and_writes_reports(cli_env: dict,
                                                                tmp_path: Path) -> None:
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"id": q.id, "question": q.question,
                                         "category": q.category}) + "\n" for q in QS))
    out = tmp_path / "report.md"
    result = CliRunner().invoke(app, ["eval", "--questions", str(qfile), "--json",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["deployments"] == ["base-1", "ft-1"]
    assert data["adherence"]["base-1"]["overall"]["passed"] == 3
    assert "# Policy evaluation" in out.read_text()

    result = CliRunner().invoke(app, ["eval", "--questions", str(qfile), "-d", "ft-1",
                                      "--judge", "judge-1", "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert "Policy adherence" in result.stdout and "judge judge-1" in result.stdout
    bad = CliRunner().invoke(app, ["eval", "--questions", str(qfile), "-d", "nope"])
    assert bad.exit_code == 1 and "no deployment 'nope'" in bad.output
