"""The review queue page's data and actions: the CLI's filters read from a query string, one
page of the queue, one reply in full, and the reviewer's decisions.

Every read and write is a call to chatapp/review.py, the functions `travel-admin review` runs,
so the page and the command never disagree about what is in the queue or what a correction
may say; the reviewer is the admin's console name. The filters mirror `review list`'s options
(rating, arm, deployment, source, since, has comment, not yet reviewed) and are carried from
the queue to a reply and back as a canonical query string, so a decision returns the reviewer
to the page of the queue they came from.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from urllib.parse import parse_qsl, urlencode

from chatapp import review as reviewing
from chatapp.domain import Arm, Deployment, Source
from chatapp.store import ExchangeScope, QueueFilter, QueuePage, Store

PAGE = 20
MAX_PAGE = 200  # `review list --limit` allows 500; a page of 200 long replies is already slow
# `review list --rating`: the current ratings each choice shows.
RATINGS: dict[str, tuple[int | None, ...]] = {
    "down": (0,), "up": (1,), "unrated": (None,), "any": ()}
RATING_NAMES: dict[int | None, str] = {1: "up", 0: "down", None: "unrated"}
# Eval replies never enter a dataset, so the queue never offers them (list_queue refuses them).
SOURCES = (Source.WEB.value, Source.SIMULATED.value, Source.SHADOW.value)
ARMS = tuple(a.value for a in Arm)
COMMENTS = {"": None, "yes": True, "no": False}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class QueueForm:
    """The queue's filters and page as the page's form and links carry them."""

    rating: str = "down"
    arms: tuple[str, ...] = ()
    deployments: tuple[str, ...] = ()
    sources: tuple[str, ...] = (Source.WEB.value,)
    since: datetime | None = None
    comment: str = ""  # "" either way, "yes" with a comment, "no" without
    unreviewed: bool = False
    page: int = 1
    limit: int = PAGE

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit

    @property
    def since_text(self) -> str:
        if self.since is None:
            return ""
        return f"{self.since:%Y-%m-%d}" if self.since.time() == datetime.min.time() \
            else f"{self.since:%Y-%m-%dT%H:%M:%S}"

    def filter(self) -> QueueFilter:
        return QueueFilter(
            scope=ExchangeScope(sources=self.sources, arms=self.arms,
                                deployments=self.deployments, since=self.since),
            ratings=RATINGS[self.rating], has_comment=COMMENTS[self.comment],
            unreviewed=self.unreviewed)

    def query(self, page: int | None = None) -> str:
        """The canonical query string (defaults left out) of these filters at `page`."""
        pairs: list[tuple[str, str]] = []
        if self.rating != "down":
            pairs.append(("rating", self.rating))
        pairs += [("arm", a) for a in self.arms]
        pairs += [("deployment", d) for d in self.deployments]
        if self.sources != (Source.WEB.value,):
            pairs.append(("source", ",".join(self.sources)))
        if self.since is not None:
            pairs.append(("since", self.since_text))
        if self.comment:
            pairs.append(("comment", self.comment))
        if self.unreviewed:
            pairs.append(("unreviewed", "on"))
        if self.limit != PAGE:
            pairs.append(("limit", str(self.limit)))
        chosen = self.page if page is None else page
        if chosen != 1:
            pairs.append(("page", str(chosen)))
        return urlencode(pairs)


def parse(pairs: Iterable[tuple[str, str]]) -> QueueForm:
    """The filters of a query string (as `review list` takes its options); a ValueError names
    the first bad one. Empty values mean "any", as an HTML form sends an unset select."""
    got: dict[str, list[str]] = {}
    for key, value in pairs:
        if value.strip():
            got.setdefault(key, []).append(value.strip())

    def one(key: str, default: str) -> str:
        return got.get(key, [default])[-1]

    rating = one("rating", "down")
    if rating not in RATINGS:
        raise ValueError(f"rating: {rating!r} is not one of {', '.join(RATINGS)}")
    arms = tuple(dict.fromkeys(got.get("arm", [])))
    bad = [a for a in arms if a not in ARMS]
    if bad:
        raise ValueError(f"arm: {bad[0]!r} is not one of {', '.join(ARMS)}")
    # One select offers "web and simulated" as "web,simulated"; links may repeat the key too.
    sources = tuple(dict.fromkeys(s.strip() for v in got.get("source", []) for s in v.split(",")
                                  if s.strip())) or (Source.WEB.value,)
    bad = [s for s in sources if s not in SOURCES]
    if bad:
        raise ValueError(f"source: {bad[0]!r} is not one of {', '.join(SOURCES)} (eval replies"
                         " never enter a dataset, so there is nothing to review)")
    comment = one("comment", "")
    if comment not in COMMENTS:
        raise ValueError(f"comment: {comment!r} is not one of yes, no")
    return QueueForm(rating=rating, arms=arms,
                     deployments=tuple(dict.fromkeys(got.get("deployment", []))),
                     sources=sources, since=_since(got.get("since", [None])[-1]),
                     comment=comment, unreviewed=one("unreviewed", "") in ("on", "true", "1"),
                     page=_whole(one("page", "1"), "page", 1, None),
                     limit=_whole(one("limit", str(PAGE)), "limit", 1, MAX_PAGE))


def parse_query(query: str) -> QueueForm:
    """`parse` of a query string carried in a form field; a bad one falls back to the
    default queue, as it only decides where the "back to the queue" link goes."""
    try:
        return parse(parse_qsl(query))
    except ValueError:
        return QueueForm()


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    for fmt in _DATE_FORMATS:
        try:
            return datetime.strptime(text, fmt)  # naive: UTC, as `review list --since` reads it
        except ValueError:
            continue
    raise ValueError(f"since: {text!r} is not a date (YYYY-MM-DD)")


def _whole(text: str, what: str, low: int, high: int | None) -> int:
    if not text.isdigit() or int(text) < low or (high is not None and int(text) > high):
        upper = f" and at most {high}" if high is not None else ""
        raise ValueError(f"{what}: {text!r} must be a whole number, at least {low}{upper}")
    return int(text)


@dataclass(frozen=True)
class Queue:
    form: QueueForm
    result: QueuePage
    deployments: list[Deployment] = field(default_factory=list)  # for the filter's select

    @property
    def pages(self) -> int:
        return max(1, -(-self.result.total // self.form.limit))

    @property
    def deployment_names(self) -> list[str]:
        """The filter's choices: every deployment, and one a link names that no longer exists
        (so the select shows the filter in force rather than "any")."""
        known = [d.name for d in self.deployments]
        return known + [d for d in self.form.deployments if d not in known]


async def queue(store: Store, form: QueueForm) -> Queue:
    """One page of the queue, as `review list` with these options shows it."""
    result = await reviewing.list_queue(store, form.filter(), form.limit, form.offset)
    return Queue(form, result, await store.deployments.all())


def empty_queue(form: QueueForm) -> Queue:
    """What the page lists when its filters could not be read: nothing, with the form."""
    return Queue(form, QueuePage([], 0, form.limit, form.offset))


@dataclass(frozen=True)
class Detail:
    shown: reviewing.Shown

    @property
    def refusal(self) -> str | None:
        """Why no decision can be recorded for this reply (chatapp/review.py refuses it too),
        so the page says so instead of offering forms that can only fail."""
        if self.shown.exchange.source == Source.EVAL:
            return "an eval reply: evaluation replies never enter a dataset"
        if self.shown.opted_out:
            return "its traveller opted out of training"
        return None

    @property
    def rating(self) -> str:
        return RATING_NAMES.get(self.shown.rating, str(self.shown.rating))

    @property
    def draft(self) -> str:
        """What the correction box starts from: the latest correction, else the reply."""
        latest = self.shown.latest
        return latest.text if latest is not None and latest.text else self.shown.reply


async def detail(store: Store, exchange_id: str) -> Detail:
    """`review show`: a ReviewError when there is no such reply."""
    return Detail(await reviewing.show(store, exchange_id))


async def correct(store: Store, reviewer: str, exchange_id: str, text: str) -> str:
    saved = await reviewing.correct(store, exchange_id, reviewer, text)
    pii = ", ".join(f"{k} {n}" for k, n in sorted(saved.scrubbed.items()))
    return (f"corrected {saved.review.exchange_id} (review {saved.review.id})"
            + (f"; personal data replaced: {pii}" if pii else ""))


async def accept(store: Store, reviewer: str, exchange_id: str) -> str:
    saved = await reviewing.accept(store, exchange_id, reviewer)
    return f"accepted {saved.review.exchange_id} (review {saved.review.id})"


async def skip(store: Store, reviewer: str, exchange_id: str) -> str:
    saved = await reviewing.skip(store, exchange_id, reviewer)
    return f"skipped {saved.review.exchange_id} (review {saved.review.id})"
