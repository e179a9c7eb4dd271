"""The console's HTTP routes on Chainlit's FastAPI app: thin handlers over the page modules.

Every route checks the caller first (session.py): no session -> the login page (401 for the
JSON endpoints and in header mode, which has no login page), not an admin -> 403. Every POST
also checks the form's CSRF token (csrf.py) before it reads anything else, asks for
confirmation in the page (static/console.js), and is audited under the admin's name by the
store call it makes. Responses forbid framing and load nothing from another origin (CSP).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chainlit.auth.jwt import get_jwt_secret
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Route

from admin.training.base import TrainingError
from admin.training.metrics import progress_text
from chatapp.review import ReviewError
from chatapp.settings import Settings
from chatapp.store import Store, StoreError
from chatapp.web.console import csrf, experiments, overview, review, training, travellers
from chatapp.web.console.session import Caller, StoreFn, caller, is_admin

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_FILES = {"console.js": "text/javascript", "console.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self';"
                               " script-src 'self'; form-action 'self'; frame-ancestors 'none';"
                               " base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAV = [("overview", "", "Overview"), ("review", "/review", "Review queue"),
       ("training", "/training", "Training"), ("experiments", "/experiments", "Experiments"),
       ("travellers", "/travellers", "Travellers")]
# What an action may refuse with: shown on the page, never a traceback.
REFUSALS = (StoreError, TrainingError, ReviewError, LookupError, ValueError)


@dataclass
class Ctx:
    store: Store
    who: Caller
    token: str
    form: FormData | None = None
    notice: str | None = None
    error: str | None = None
    secret: str | None = field(default=None, repr=False)  # a password shown once

    def value(self, name: str) -> str:
        value = self.form.get(name) if self.form is not None else None
        return value.strip() if isinstance(value, str) else ""


Handler = Callable[[Request, Ctx], Awaitable[Response]]


def _message(err: Exception) -> str:
    # str() of a KeyError quotes its message; the first argument is the sentence itself.
    return str(err.args[0]) if err.args else type(err).__name__


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{what} must be between 0 and 1")
    return value


class Console:
    def __init__(self, store: StoreFn, settings: Settings, secret: Callable[[], str],
                 root: str = "", health: overview.HealthFn | None = None) -> None:
        self._store, self._settings, self._secret = store, settings, secret
        self.root, self.base = root, f"{root}/admin"
        self._health = health
        self._env = Environment(loader=FileSystemLoader(HERE / "templates"),
                                autoescape=select_autoescape(default=True))
        self._env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=str)
        self._env.filters["when"] = when
        self._env.filters["rating"] = lambda v: review.RATING_NAMES.get(v, str(v))

    # -- plumbing ------------------------------------------------------------------------------

    def _guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            response = await self._checked(request, handler)
            response.headers.update(SECURITY_HEADERS)
            return response

        return endpoint

    async def _checked(self, request: Request, handler: Handler) -> Response:
        who = caller(request, self._settings)
        if who is None:
            if self._settings.auth_mode == "header" or "/api/" in request.url.path:
                return PlainTextResponse("login required", status_code=401)
            return RedirectResponse(f"{self.root}/login", status_code=303)
        store = await self._store()
        if not await is_admin(store, self._settings, who.name):
            return PlainTextResponse("admins only", status_code=403)
        secret = self._secret()
        ctx = Ctx(store, who, csrf.token(secret, who.name, who.session))
        if request.method == "POST":
            ctx.form = await request.form()
            given = ctx.form.get(csrf.FIELD)
            if not csrf.valid(secret, who.name, who.session,
                              given if isinstance(given, str) else None):
                return PlainTextResponse("CSRF token missing or wrong: reload the page",
                                         status_code=403)
        return await handler(request, ctx)

    def render(self, name: str, ctx: Ctx, status: int = 200, **data: Any) -> HTMLResponse:
        html = self._env.get_template(f"{name}.html").render(
            base=self.base, root=self.root, nav=NAV, page=name, user=ctx.who.name,
            csrf_field=csrf.FIELD, csrf_token=ctx.token, notice=ctx.notice, error=ctx.error,
            secret=ctx.secret, brand=self._settings.brand_name, **data)
        return HTMLResponse(html, status_code=status)

    async def _act(self, ctx: Ctx, action: Callable[[], Awaitable[str | None]]) -> int:
        """Run an action; its refusal becomes the page's error (409), success its notice."""
        try:
            ctx.notice = await action()
        except REFUSALS as err:
            ctx.error = _message(err)
            return 409
        return 200

    # -- overview ------------------------------------------------------------------------------

    async def overview_page(self, request: Request, ctx: Ctx) -> Response:
        exp_id = request.query_params.get("experiment") or None
        try:
            data = await overview.overview(ctx.store, self._settings, exp_id, self._health)
        except LookupError as err:
            ctx.error = _message(err)
            return self.render("overview", ctx, 404, data=None)
        return self.render("overview", ctx, data=data)

    async def report_api(self, request: Request, ctx: Ctx) -> Response:
        try:
            doc = await overview.report_document(
                ctx.store, self._settings, request.query_params.get("experiment") or None)
        except LookupError as err:
            return JSONResponse({"error": _message(err)}, status_code=404)
        return JSONResponse(doc)

    # -- review queue --------------------------------------------------------------------------

    async def review_page(self, request: Request, ctx: Ctx) -> Response:
        try:
            form = review.parse(request.query_params.multi_items())
        except ValueError as err:
            # A hand-edited link: say which filter is wrong, keep the form usable.
            ctx.error = _message(err)
            return self.render("review", ctx, 400, queue=review.empty_queue(review.QueueForm()))
        try:
            found = await review.queue(ctx.store, form)
        except ReviewError as err:
            ctx.error = _message(err)
            return self.render("review", ctx, 400, queue=review.empty_queue(form))
        return self.render("review", ctx, queue=found)

    async def reply_page(self, request: Request, ctx: Ctx, status: int = 200,
                         exchange_id: str | None = None, back: review.QueueForm | None = None,
                         draft: str | None = None) -> Response:
        key = request.path_params["exchange_id"] if exchange_id is None else exchange_id
        if back is None:
            back = review.parse_query(request.url.query)
        try:
            found = await review.detail(ctx.store, key)
        except ReviewError as err:
            # An unknown id (or a reply-less turn): the queue, with the reason on top.
            ctx.error = _message(err) if ctx.error is None else ctx.error
            ctx.notice = None
            return self.render("review", ctx, 404, queue=review.empty_queue(back))
        return self.render("review_reply", ctx, status, reply=found, back=back,
                           draft=found.draft if draft is None else draft)

    def _review_action(self, act: Callable[[Store, str, str, Ctx], Awaitable[str]]) -> Handler:
        async def handler(request: Request, ctx: Ctx) -> Response:
            key = ctx.value("exchange")
            status = await self._act(ctx, lambda: act(ctx.store, ctx.who.name, key, ctx))
            # A refused correction keeps what the reviewer wrote, to fix rather than retype.
            text = ctx.form.get("text") if ctx.form is not None and status != 200 else None
            return await self.reply_page(request, ctx, status, exchange_id=key,
                                         back=review.parse_query(ctx.value("back")),
                                         draft=text if isinstance(text, str) else None)

        return handler

    @staticmethod
    async def _correct(store: Store, reviewer: str, key: str, ctx: Ctx) -> str:
        # Not ctx.value(): that strips, and the reviewer's line breaks are part of the reply.
        text = ctx.form.get("text") if ctx.form is not None else None
        return await review.correct(store, reviewer, key, text if isinstance(text, str) else "")

    @staticmethod
    async def _accept(store: Store, reviewer: str, key: str, ctx: Ctx) -> str:
        return await review.accept(store, reviewer, key)

    @staticmethod
    async def _skip(store: Store, reviewer: str, key: str, ctx: Ctx) -> str:
        return await review.skip(store, reviewer, key)

    # -- training ------------------------------------------------------------------------------

    async def training_page(self, request: Request, ctx: Ctx, status: int = 200) -> Response:
        q = request.query_params
        jobs = await training.jobs_page(ctx.store, _offset(q.get("jobs")))
        datasets = await training.datasets_page(ctx.store, _offset(q.get("datasets")))
        return self.render("training", ctx, status, jobs=jobs, datasets=datasets,
                           progress=progress_text)

    async def job_page(self, request: Request, ctx: Ctx) -> Response:
        job = await ctx.store.jobs.get(request.path_params["job_id"])
        if job is None:
            return PlainTextResponse("no such job", status_code=404)
        return self.render("job", ctx, job=job, progress=progress_text(job))

    async def job_metrics_api(self, request: Request, ctx: Ctx) -> Response:
        data = await training.job_metrics(ctx.store, request.path_params["job_id"])
        if data is None:
            return JSONResponse({"error": "no such job"}, status_code=404)
        return JSONResponse(data)

    async def dataset_download(self, request: Request, ctx: Ctx) -> Response:
        path = await training.dataset_file(ctx.store, request.path_params["sha256"])
        if path is None:
            return PlainTextResponse("no such dataset file", status_code=404)
        return FileResponse(path, media_type="application/jsonl", filename=path.name)

    async def deploy(self, request: Request, ctx: Ctx) -> Response:
        async def run() -> str:
            weight = ctx.value("weight")
            done = await training.deploy(
                ctx.store, self._settings, ctx.value("job"), name=ctx.value("name"),
                weight=_number(weight, "weight") if weight else None, actor=ctx.who.name)
            notes = " ".join(done.notes)
            return (f"deployed {done.deployment.name} from job {done.deployment.source_job};"
                    f" experiment {done.experiment.id} sends {done.weight:.0%} of users to it."
                    + (f" {notes}" if notes else ""))

        return await self.training_page(request, ctx, await self._act(ctx, run))

    # -- experiments ---------------------------------------------------------------------------

    async def experiments_page(self, request: Request, ctx: Ctx, status: int = 200) -> Response:
        q = request.query_params
        before = q.get("before")
        audit = await experiments.audit_page(
            ctx.store, action=q.get("action", "").strip(), actor=q.get("actor", "").strip(),
            before_id=int(before) if before and before.isdigit() else None)
        return self.render("experiments", ctx, status,
                           routing=await experiments.routing(ctx.store), audit=audit)

    def _routing_action(self, act: Callable[[Ctx], Awaitable[str]]) -> Handler:
        async def handler(request: Request, ctx: Ctx) -> Response:
            status = await self._act(ctx, lambda: act(ctx))
            return await self.experiments_page(request, ctx, status)

        return handler

    async def _start(self, ctx: Ctx) -> str:
        exp = await experiments.start(
            ctx.store, ctx.who.name, name=ctx.value("name"), base=ctx.value("base"),
            fine_tuned=ctx.value("fine_tuned") or None,
            weight=_number(ctx.value("weight") or "0", "fine-tuned weight"))
        return f"started experiment {exp.id}"

    async def _set_weights(self, ctx: Ctx) -> str:
        exp = await experiments.set_weights(
            ctx.store, ctx.who.name, _number(ctx.value("weight"), "fine-tuned weight"))
        return f"experiment {exp.id} now has weights {exp.weights}"

    async def _stop(self, ctx: Ctx) -> str:
        exp = await experiments.stop(ctx.store, ctx.who.name)
        return f"stopped: everyone is served by {exp.base_deployment} ({exp.id})"

    async def _promote(self, ctx: Ctx) -> str:
        exp = await experiments.promote(ctx.store, ctx.who.name)
        return f"promoted: everyone is now served by {exp.base_deployment}"

    async def _rollback(self, ctx: Ctx) -> str:
        exp = await experiments.rollback(ctx.store, ctx.who.name)
        return f"rolled back: everyone is now served by {exp.base_deployment}"

    # -- travellers ----------------------------------------------------------------------------

    async def travellers_page(self, request: Request, ctx: Ctx, status: int = 200) -> Response:
        page = await travellers.accounts_page(ctx.store, request.query_params.get("after"))
        return self.render("travellers", ctx, status, accounts=page)

    def _account_action(self, act: Callable[[Ctx], Awaitable[str]]) -> Handler:
        async def handler(request: Request, ctx: Ctx) -> Response:
            status = await self._act(ctx, lambda: act(ctx))
            return await self.travellers_page(request, ctx, status)

        return handler

    async def _add(self, ctx: Ctx) -> str:
        name = ctx.value("username")
        ctx.secret = await travellers.add(ctx.store, ctx.who.name, name,
                                          is_admin=ctx.value("is_admin") == "on")
        return f"created {name}: give them this password (shown once)"

    async def _password(self, ctx: Ctx) -> str:
        name = ctx.value("username")
        ctx.secret = await travellers.reset_password(ctx.store, ctx.who.name, name)
        return f"new password for {name} (shown once)"

    async def _admin_flag(self, ctx: Ctx) -> str:
        name, grant = ctx.value("username"), ctx.value("is_admin") == "true"
        await travellers.set_admin(ctx.store, ctx.who.name, name, grant)
        return f"{name}: admin={grant}"

    async def _erase(self, ctx: Ctx) -> str:
        name = ctx.value("username")
        done, rewritten = await travellers.erase(ctx.store, ctx.who.name, name)
        rows = ", ".join(f"{k} {v}" for k, v in sorted(done.items()) if v)
        return f"erased {name}: {rows or 'no rows left'}; manifest files rewritten {rewritten}"

    async def export(self, request: Request, ctx: Ctx) -> Response:
        name = ctx.value("username")
        try:
            doc = await travellers.export(ctx.store, ctx.who.name, name)
        except LookupError as err:
            ctx.error = _message(err)
            return await self.travellers_page(request, ctx, 404)
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60] or "user"
        body = json.dumps(doc, ensure_ascii=False, indent=2, default=str) + "\n"
        return Response(body, media_type="application/json", headers={
            "Content-Disposition": f'attachment; filename="export-{safe}.json"'})

    # -- static --------------------------------------------------------------------------------

    async def static(self, request: Request) -> Response:
        # Public like Chainlit's own assets: a chart script reveals nothing.
        name = request.path_params["name"]
        if name not in STATIC_FILES:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name],
                            headers={"Cache-Control": "no-cache"})

    def routes(self) -> list[Route]:
        b, g = self.base, self._guard
        get = [("", self.overview_page), ("/review", self.review_page),
               ("/review/{exchange_id}", self.reply_page),
               ("/api/report", self.report_api),
               ("/training", self.training_page), ("/training/jobs/{job_id}", self.job_page),
               ("/api/jobs/{job_id}/metrics", self.job_metrics_api),
               ("/datasets/{sha256}/download", self.dataset_download),
               ("/experiments", self.experiments_page), ("/travellers", self.travellers_page)]
        post: list[tuple[str, Handler]] = [
            ("/review/correct", self._review_action(self._correct)),
            ("/review/accept", self._review_action(self._accept)),
            ("/review/skip", self._review_action(self._skip)),
            ("/training/deploy", self.deploy),
            ("/experiments/start", self._routing_action(self._start)),
            ("/experiments/weights", self._routing_action(self._set_weights)),
            ("/experiments/stop", self._routing_action(self._stop)),
            ("/experiments/promote", self._routing_action(self._promote)),
            ("/experiments/rollback", self._routing_action(self._rollback)),
            ("/travellers/add", self._account_action(self._add)),
            ("/travellers/password", self._account_action(self._password)),
            ("/travellers/admin", self._account_action(self._admin_flag)),
            ("/travellers/export", self.export),
            ("/travellers/erase", self._account_action(self._erase)),
        ]
        return ([Route(f"{b}/static/{{name}}", self.static, methods=["GET"])]
                + [Route(b + path, g(h), methods=["GET"]) for path, h in get]
                + [Route(b + path, g(h), methods=["POST"]) for path, h in post])


def when(value: object) -> str:
    """A stored time as operators read it: to the second, in UTC (SQLite hands back naive
    datetimes that are UTC, PostgreSQL aware ones)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value.strftime("%Y-%m-%d %H:%M:%S UTC")
    return "–" if value is None else str(value)


def _offset(text: str | None) -> int:
    return int(text) if text and text.isdigit() else 0


def auth_secret() -> str:
    """Chainlit's JWT secret (set by `travel-chat` before Chainlit starts): the CSRF key's root."""
    secret = get_jwt_secret()
    if not secret:
        raise RuntimeError("CHAINLIT_AUTH_SECRET is not set: start the app with travel-chat")
    return secret


def install(app: Any, console: Console) -> None:
    """Put the console's routes ahead of Chainlit's catch-all (which would answer /admin with
    the chat's single-page app)."""
    if any(getattr(r, "path", None) == console.base for r in app.router.routes):
        return  # the module was imported twice (Chainlit reloads)
    app.router.routes[:0] = console.routes()
