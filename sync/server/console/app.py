"""The console's pages: a Starlette app of server-rendered HTML (Jinja2, autoescaped; no script),
every route declared with the permission it needs (``ROUTES``), checked before its handler runs:
a session, its role, the officer's checkpoints, and the CSRF token of every form
(docs/console.md).

Holder details are never opened here: a case's pages ask the opener process (``openerclient``),
which audits each opening. Nothing here logs a holder's detail.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import segno
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from scanner import __version__
from scanner.base import i18n
from scanner.base.errors import CheckpointError, TrustError, error_text
from scanner.base.timeutil import DAY_MS, now_ms
from scanner.cards.bundle import open_bundle
from sync.server import bundles, cardfind, enrollcodes, reports
from sync.server import trace as tracemod
from sync.server.app import make_server
from sync.server.console import accounts, audit, exports, roles, sessions
from sync.server.console.case import MAX_CASE_HOURS, check_case
from sync.server.console.openerclient import ApprovalPolicy, OpenerClient, OpenerUnavailable
from sync.server.console.store import Case, ConsoleStore
from sync.server.model import Storage

log = logging.getLogger(__name__)


class RuledRoute(Route):
    """A route with its permission, which the tests read to try every route as every role."""

    def __init__(self, path: str, endpoint: Callable[..., Any], rule: Rule, **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.rule = rule

MAX_BODY_BYTES = 40 * 1024 * 1024  # a trust bundle of a million revoked cards, or a photo, with room
MAX_FORM_FIELD = 64 * 1024
DEFAULT_DAYS, MAX_DAYS = 14, 60
DEFAULT_WINDOW = "1h"
DEFAULT_CASE_HOURS = 4
MAX_ENROLL_CODES = 50
STAGED_TTL_S = 600  # an uploaded bundle waits this long for its confirmation
LANG_COOKIE = "ck-lang"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY", "Cache-Control": "no-store", "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin", "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}
# the opener's refusals of an approval or of an opening without one (each has its text: console.refused_CODE)
APPROVAL_REFUSALS = frozenset({"same_officer", "approver_role", "approval_expired", "already_approved",
                               "approval_required", "approval_mismatch", "case_expired", "approval_not_needed"})
_CASE_ID = re.compile(r"[0-9a-f]{32}", re.ASCII)
_DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,100}", re.ASCII)
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


@dataclass
class ConsoleConfig:
    """How the console runs: its opener (None: holder details cannot be opened), the sessions'
    policy, the time zone it shows, the URL devices enroll at, when a device counts as stale."""

    opener: OpenerClient | None = None
    policy: sessions.Policy = field(default_factory=sessions.Policy)
    tz: dt.tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Ho_Chi_Minh"))
    server_url: str | None = None
    stale_after_s: float = 15 * 60
    login_limit: int = 20  # login attempts per client address per 5 minutes


class Denied(Exception):
    """A request the session may not make: ``status`` 403 (role), 404 (not yours / not there)."""

    def __init__(self, status: int = 403) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class Rule:
    """Who may call a route: ``permission`` (a roles.* name), "public", "pending" (the second login
    step) or "any" (any account logged in)."""

    permission: str


PUBLIC, PENDING, ANY = Rule("public"), Rule("pending"), Rule("any")


@dataclass
class Ctx:
    """One request as a handler sees it."""

    request: Request
    lang: str
    form: FormData | None
    session: Any = None  # store.SessionRow
    account: Any = None  # store.Account
    set_cookies: list = field(default_factory=list)

    def t(self, key: str, **params: object) -> str:
        return i18n.t(f"console.{key}", self.lang, **params)

    def get(self, name: str, default: str = "") -> str:
        value = self.form.get(name) if self.form is not None else None
        return value[:MAX_FORM_FIELD] if isinstance(value, str) else default

    def upload(self, name: str) -> bytes:
        value = self.form.get(name) if self.form is not None else None
        if isinstance(value, UploadFile):
            return value.file.read(MAX_BODY_BYTES + 1)
        return b""

    @property
    def actor(self) -> str:
        return self.account.username if self.account is not None else "?"


class BodyLimit:
    """Requests declaring more than ``limit`` bytes are answered 413 before any is read, and a
    body that grows past it while being read is cut."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            await send({"type": "http.response.start", "status": 413,
                        "headers": [(b"content-type", b"text/plain"), (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": b"request too large"})
            return
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise CheckpointError("request body too large", code="too_large")
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    """The same headers on every answer (pages, errors, files): no framing, no sniffing, no
    referrer to other sites (same-origin: forms keep their Origin), no caching, no script at all; HSTS under
    TLS. No CORS header is ever sent."""

    def __init__(self, app, secure: bool) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
        if secure:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *[(k, v) for k, v in self.headers if k not in names]]}
            await send(message)

        await self.app(scope, receive, with_headers)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("sync.server.console", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env


def _css() -> bytes:
    return resources.files("sync.server.console").joinpath("static/console.css").read_bytes()


class Staged:
    """Uploaded trust bundles waiting for their confirmation, per session (in memory, a few minutes)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[float, str, bytes]] = {}
        self._lock = threading.Lock()

    def put(self, session_key: str, data: bytes) -> str:
        stage_id = secrets.token_hex(16)
        now = time.monotonic()
        with self._lock:
            self._items = {k: v for k, v in self._items.items() if now - v[0] < STAGED_TTL_S and v[1] != session_key}
            self._items[stage_id] = (now, session_key, data)
        return stage_id

    def take(self, session_key: str, stage_id: str) -> bytes | None:
        with self._lock:
            item = self._items.pop(stage_id, None)
        if item is None or item[1] != session_key or time.monotonic() - item[0] > STAGED_TTL_S:
            return None
        return item[2]


def create_console(storage: Storage, config: ConsoleConfig | None = None) -> Starlette:
    """The console app on the server's ``storage`` (its tables are made if absent)."""
    config = config or ConsoleConfig()
    store = ConsoleStore(storage)
    env = _templates()
    css = _css()
    limiter = sessions.AttemptLimiter(config.login_limit)
    staged = Staged()
    policy = config.policy
    tz = config.tz

    # ------------------------------------------------------------ plumbing

    def fmt_time(at_ms: int | None) -> str:
        if at_ms is None:
            return "—"
        return dt.datetime.fromtimestamp(at_ms / 1000, tz).strftime("%Y-%m-%d %H:%M:%S")

    def render(ctx: Ctx, name: str, status: int = 200, **values: object) -> Response:
        account = ctx.account
        nav = []
        if account is not None and ctx.session is not None and ctx.session.stage == sessions.FULL_STAGE:
            for path, key, permission in NAV:
                if roles.allowed(account.role, permission):
                    nav.append((path, ctx.t(key)))
        body = env.get_template(name).render(
            t=ctx.t, lang=ctx.lang, account=account, nav=nav, csrf=ctx.session.csrf if ctx.session else "",
            path=ctx.request.url.path, fmt_time=fmt_time, version=__version__,
            role_name=lambda r: ctx.t(f"role_{r}"), **values)
        response = HTMLResponse(body, status_code=status)
        for args in ctx.set_cookies:
            response.set_cookie(**args)
        return response

    def redirect(ctx: Ctx, to: str) -> Response:
        response = RedirectResponse(to, status_code=303)
        for args in ctx.set_cookies:
            response.set_cookie(**args)
        return response

    def fail(ctx: Ctx, message: str, status: int = 400) -> Response:
        return render(ctx, "message.html", status, title=ctx.t("error"), message=message)

    def session_cookie(ctx: Ctx, token: str) -> None:
        ctx.set_cookies.append({"key": policy.cookie, "value": token, "httponly": True, "secure": policy.secure,
                                "samesite": "strict", "path": "/"})

    def clear_cookie(ctx: Ctx, name: str) -> None:
        ctx.set_cookies.append({"key": name, "value": "", "max_age": 0, "httponly": True, "secure": policy.secure,
                                "samesite": "strict", "path": "/"})

    def same_origin(request: Request) -> bool:
        """A form must come from a page of this console: the browser's Origin (when it sends one)
        and Sec-Fetch-Site say so (SameSite=Strict cookies and the CSRF token are checked too)."""
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin")
        return origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"

    def lang_of(request: Request) -> str:
        lang = request.query_params.get("lang") or request.cookies.get(LANG_COOKIE) or i18n.DEFAULT_LANG
        return lang if lang in i18n.LANGS else i18n.DEFAULT_LANG

    def dispatch(rule: Rule, handler: Callable[[Ctx], Response], request: Request, form: FormData | None) -> Response:
        ctx = Ctx(request, lang_of(request), form)
        if request.query_params.get("lang") in i18n.LANGS:
            ctx.set_cookies.append({"key": LANG_COOKIE, "value": ctx.lang, "httponly": True, "secure": policy.secure,
                                    "samesite": "strict", "path": "/", "max_age": 365 * 86400})
        now = now_ms()
        token = request.cookies.get(policy.cookie)
        row = sessions.current(store, token, policy, now) if token else None
        if row is not None:
            ctx.session = row
            ctx.account = store.account(row.username)
            if ctx.account is None or ctx.account.disabled:
                store.drop_session(row.token_hash)
                ctx.session = ctx.account = None
        if request.method == "POST" and not same_origin(request):
            return fail(ctx, ctx.t("csrf_failed"), 403)
        if rule is PUBLIC:
            return handler(ctx)
        if rule is PENDING:
            if ctx.session is None or ctx.session.stage != sessions.TOTP_STAGE:
                return redirect(ctx, "/login")
        else:
            if ctx.session is None or ctx.session.stage != sessions.FULL_STAGE:
                if request.method == "GET":
                    return redirect(ctx, "/login")
                return fail(ctx, ctx.t("login_needed"), 401)
            if rule is not ANY and not roles.allowed(ctx.account.role, rule.permission):
                return fail(ctx, ctx.t("forbidden"), 403)
        if request.method == "POST" and not sessions.csrf_ok(ctx.session, ctx.get("csrf")):
            return fail(ctx, ctx.t("csrf_failed"), 403)
        try:
            return handler(ctx)
        except Denied as exc:
            if exc.status == 404:
                return fail(ctx, ctx.t("not_found"), 404)
            return fail(ctx, ctx.t("forbidden"), exc.status)
        except OpenerUnavailable as exc:
            log.warning("opener: %s (%s)", exc.code, ctx.actor)
            if exc.code in APPROVAL_REFUSALS:
                return fail(ctx, ctx.t(f"refused_{exc.code}"), 403)
            return fail(ctx, ctx.t("opener_refused", code=exc.code), 503 if exc.code == "opener_unavailable" else 429)
        except CheckpointError as exc:
            if exc.text is not None:
                return fail(ctx, f"{ctx.t('refused')}: {error_text(exc, ctx.lang)}", 400)
            return fail(ctx, f"{ctx.t('refused')} ({exc.code}): {exc}", 400)

    def route(path: str, rule: Rule, methods: tuple[str, ...] = ("GET",)):
        def wrap(handler: Callable[[Ctx], Response]) -> Route:
            async def endpoint(request: Request) -> Response:
                form = None
                if request.method == "POST":
                    try:
                        form = await request.form(max_files=2, max_fields=50, max_part_size=MAX_FORM_FIELD)
                    except (HTTPException, CheckpointError) as exc:  # a malformed or oversized form
                        log.info("unreadable form on %s: %s", request.url.path, type(exc).__name__)
                        return Response("unreadable form", status_code=400, media_type="text/plain")
                try:
                    return await run_in_threadpool(dispatch, rule, handler, request, form)
                finally:
                    if form is not None:
                        await form.close()

            return RuledRoute(path, endpoint, rule, methods=list(methods), name=handler.__name__)
        return wrap

    def audit_event(ctx: Ctx, action: str, **kw) -> audit.Record:
        return store.append(audit.Event(ctx.actor, action, **kw), now_ms())

    # ------------------------------------------------------------ logging in

    @route("/login", PUBLIC, ("GET", "POST"))
    def login(ctx: Ctx) -> Response:
        request = ctx.request
        pre = request.cookies.get(policy.pre_cookie)
        if request.method == "GET":
            if ctx.session is not None and ctx.session.stage == sessions.FULL_STAGE:
                return redirect(ctx, "/")
            pre = secrets.token_urlsafe(24)
            ctx.set_cookies.append({"key": policy.pre_cookie, "value": pre, "httponly": True, "secure": policy.secure,
                                    "samesite": "strict", "path": "/", "max_age": 1800})
            return render(ctx, "login.html", login_token=pre, error=None)
        given = ctx.get("login_token")
        if not pre or not given or not secrets.compare_digest(pre.encode(), given.encode()):
            return fail(ctx, ctx.t("csrf_failed"), 403)
        if not limiter.allow(request.client.host if request.client else "-"):
            return render(ctx, "login.html", 429, login_token=pre, error=ctx.t("too_many_attempts"))
        now = now_ms()
        step = accounts.check_password_step(store, ctx.get("username").strip().lower(), ctx.get("password"),
                                            now_ms=now)
        if not step.ok or step.account is None:
            return render(ctx, "login.html", 401 if step.code != "locked" else 423, login_token=pre,
                          error=ctx.t("login_locked" if step.code == "locked" else "login_failed"))
        if ctx.session is not None:
            store.drop_session(ctx.session.token_hash)
        token, _ = sessions.start(store, step.account.username, sessions.TOTP_STAGE, now)
        session_cookie(ctx, token)
        return redirect(ctx, "/login/code")

    @route("/login/code", PENDING, ("GET", "POST"))
    def login_code(ctx: Ctx) -> Response:
        if ctx.request.method == "GET":
            return render(ctx, "code.html", error=None)
        if not limiter.allow(ctx.request.client.host if ctx.request.client else "-"):
            return render(ctx, "code.html", 429, error=ctx.t("too_many_attempts"))
        now = now_ms()
        username = ctx.session.username
        step = accounts.check_code_step(store, username, ctx.get("code"), now_ms=now)
        if not step.ok or step.account is None:
            tries = store.count_try(ctx.session.token_hash)
            if step.code == "locked" or tries >= sessions.MAX_CODE_TRIES:
                store.drop_session(ctx.session.token_hash)
                clear_cookie(ctx, policy.cookie)
                ctx.session = None
                return render(ctx, "message.html", 401, title=ctx.t("login"),
                              message=ctx.t("login_locked" if step.code == "locked" else "login_failed"))
            return render(ctx, "code.html", 401, error=ctx.t("code_failed"))
        store.drop_session(ctx.session.token_hash)  # a new token for the logged-in session (no fixation)
        store.drop_sessions_before(now - policy.idle_ms, now - policy.max_age_ms)
        token, _ = sessions.start(store, username, sessions.FULL_STAGE, now)
        session_cookie(ctx, token)
        clear_cookie(ctx, policy.pre_cookie)
        store.append(audit.Event(username, audit.LOGIN_OK, detail=f"role={step.account.role}"), now)
        return redirect(ctx, "/")

    @route("/logout", ANY, ("POST",))
    def logout(ctx: Ctx) -> Response:
        store.drop_session(ctx.session.token_hash)
        audit_event(ctx, audit.LOGOUT)
        clear_cookie(ctx, policy.cookie)
        ctx.session = ctx.account = None
        return redirect(ctx, "/login")

    @route("/", ANY)
    def home(ctx: Ctx) -> Response:
        cases = store.cases_of(ctx.actor, 10) if roles.allowed(ctx.account.role, roles.HOLDERS) else []
        return render(ctx, "home.html", cases=cases, now=now_ms())

    # ------------------------------------------------------------ fleet

    def visible_devices(ctx: Ctx) -> list[dict]:
        rows = reports.device_rows(storage, config.stale_after_s, now_ms())
        account = ctx.account
        return [d for d in rows if roles.sees_checkpoint(account.role, account.scope, d["checkpoint_id"])]

    @route("/fleet", Rule(roles.FLEET))
    def fleet(ctx: Ctx) -> Response:
        devices = visible_devices(ctx)
        return render(ctx, "fleet.html", devices=devices, stale=sum(1 for d in devices if d["stale"]),
                      manage=roles.allowed(ctx.account.role, roles.FLEET_MANAGE))

    @route("/fleet/device/{device_id}", Rule(roles.FLEET))
    def device(ctx: Ctx) -> Response:
        device_id = ctx.request.path_params["device_id"]
        found = [d for d in visible_devices(ctx) if d["device_id"] == device_id]
        if not found:
            raise Denied(404)
        return render(ctx, "device.html", d=found[0], manage=roles.allowed(ctx.account.role, roles.FLEET_MANAGE))

    @route("/fleet/revoke", Rule(roles.FLEET_MANAGE), ("POST",))
    def revoke(ctx: Ctx) -> Response:
        device_id = ctx.get("device_id")
        dev = storage.device(device_id) if _DEVICE_ID.fullmatch(device_id) else None
        if dev is None:
            raise Denied(404)
        if ctx.get("confirm") != "yes":
            return render(ctx, "confirm.html", title=ctx.t("revoke_device"), action="/fleet/revoke",
                          fields={"device_id": device_id, "confirm": "yes"},
                          question=ctx.t("revoke_question", device=device_id, checkpoint=dev.checkpoint_id))
        changed = storage.revoke_device(device_id, now_ms())
        audit_event(ctx, audit.DEVICE_REVOKE, target=device_id, detail=f"checkpoint={dev.checkpoint_id} "
                                                                        f"changed={int(changed)}")
        return redirect(ctx, f"/fleet/device/{device_id}")

    @route("/enroll", Rule(roles.FLEET_MANAGE), ("GET", "POST"))
    def enroll(ctx: Ctx) -> Response:
        if ctx.request.method == "GET":
            return render(ctx, "enroll.html", server_url=config.server_url or "")
        checkpoint_id = ctx.get("checkpoint").strip()
        server_url = ctx.get("server_url").strip() or (config.server_url or "")
        try:
            count = int(ctx.get("count", "1"))
            ttl = float(ctx.get("ttl_hours", "72"))
        except ValueError:
            return fail(ctx, ctx.t("bad_number"))
        if not checkpoint_id or len(checkpoint_id) > 100 or not 1 <= count <= MAX_ENROLL_CODES or not 0.1 <= ttl <= 720:
            return fail(ctx, ctx.t("enroll_bad", max=MAX_ENROLL_CODES))
        root = bundles.root_of(storage)
        now = now_ms()
        codes = []
        for _ in range(count):
            code = enrollcodes.create(storage, server_url, checkpoint_id, now_ms=now, ttl_hours=ttl,
                                      root_public_key=root)
            qr = segno.make(code.text(), error="m")
            codes.append(qr.svg_data_uri(scale=4, border=2))
        audit_event(ctx, audit.ENROLL_CODES, target=checkpoint_id, detail=f"count={count} ttl_hours={ttl:g}")
        return render(ctx, "enroll_print.html", codes=codes, checkpoint=checkpoint_id,
                      expires=fmt_time(now + int(ttl * 3_600_000)), server_url=server_url)

    # ------------------------------------------------------------ trust

    @route("/trust", Rule(roles.TRUST))
    def trust(ctx: Ctx) -> Response:
        return render(ctx, "trust.html", versions=list(reversed(storage.bundle_versions()))[:20],
                      root=bundles.root_of(storage) is not None)

    @route("/trust/publish", Rule(roles.TRUST), ("POST",))
    def trust_publish(ctx: Ctx) -> Response:
        stage_id = ctx.get("stage")
        if stage_id:  # the confirmation
            data = staged.take(ctx.session.token_hash, stage_id)
            if data is None:
                return fail(ctx, ctx.t("stage_expired"))
            meta, _ = bundles.publish(storage, data, now_ms=now_ms())
            audit_event(ctx, audit.BUNDLE_PUBLISH, target=str(meta.version),
                        detail=f"digest={meta.digest[:16]} size={meta.size}")
            return redirect(ctx, "/trust")
        data = ctx.upload("bundle")
        if not data:
            return fail(ctx, ctx.t("bundle_missing"))
        root = bundles.root_of(storage)
        if root is None:
            return fail(ctx, ctx.t("bundle_no_root"))
        latest = storage.latest_bundle()
        try:
            new = open_bundle(data, [root], min_version=latest.version if latest else None)
        except TrustError as exc:
            return fail(ctx, f"{ctx.t('bundle_refused')} ({exc.code}): {exc}")
        old_revoked = 0
        if latest is not None:
            old = open_bundle(storage.bundle_data(latest.version) or b"", [root])
            old_revoked = len(old.revoked_cards)
        return render(ctx, "trust_confirm.html", stage=staged.put(ctx.session.token_hash, data), bundle=new,
                      revoked=len(new.revoked_cards), revoked_added=len(new.revoked_cards) - old_revoked,
                      current=latest.version if latest else None)

    # ------------------------------------------------------------ accounts

    @route("/accounts", Rule(roles.ACCOUNTS))
    def accounts_page(ctx: Ctx) -> Response:
        return render(ctx, "accounts.html", accounts=store.accounts(), roles_list=roles.ROLES, shown=None,
                      now=now_ms())

    def shown_secrets(ctx: Ctx, new: accounts.NewSecrets) -> Response:
        qr = segno.make(new.totp_uri, error="m").svg_data_uri(scale=4, border=2)
        return render(ctx, "account_secrets.html", new=new, qr=qr)

    @route("/accounts/add", Rule(roles.ACCOUNTS), ("POST",))
    def account_add(ctx: Ctx) -> Response:
        scope = tuple(ctx.get("scope").replace(",", "\n").splitlines())
        new = accounts.add(store, ctx.get("username").strip().lower(), ctx.get("role"), scope, actor=ctx.actor,
                           now_ms=now_ms())
        return shown_secrets(ctx, new)

    def target_account(ctx: Ctx) -> str:
        name = ctx.request.path_params["username"]
        if store.account(name) is None:
            raise Denied(404)
        return name

    @route("/accounts/{username}/role", Rule(roles.ACCOUNTS), ("POST",))
    def account_role(ctx: Ctx) -> Response:
        name = target_account(ctx)
        scope = tuple(ctx.get("scope").replace(",", "\n").splitlines())
        accounts.set_role(store, name, ctx.get("role"), scope, actor=ctx.actor, now_ms=now_ms())
        return redirect(ctx, "/accounts")

    @route("/accounts/{username}/disable", Rule(roles.ACCOUNTS), ("POST",))
    def account_disable(ctx: Ctx) -> Response:
        name = target_account(ctx)
        if name == ctx.actor:
            return fail(ctx, ctx.t("not_yourself"))
        accounts.set_disabled(store, name, ctx.get("disabled") == "1", actor=ctx.actor, now_ms=now_ms())
        return redirect(ctx, "/accounts")

    @route("/accounts/{username}/reset", Rule(roles.ACCOUNTS), ("POST",))
    def account_reset(ctx: Ctx) -> Response:
        name = target_account(ctx)
        return shown_secrets(ctx, accounts.reset(store, name, actor=ctx.actor, now_ms=now_ms()))

    # ------------------------------------------------------------ counts

    @route("/counts", Rule(roles.COUNTS))
    def counts(ctx: Ctx) -> Response:
        day_text = ctx.request.query_params.get("day", "")
        today = dt.datetime.now(tz).date()
        try:
            day = dt.date.fromisoformat(day_text) if _DAY.fullmatch(day_text) else today
        except ValueError:
            day = today
        start = int(dt.datetime.combine(day, dt.time(), tz).timestamp() * 1000)
        account = ctx.account
        scope = account.scope if account.role in roles.SCOPED else None
        rows = store.checkpoint_counts(scope, start, start + DAY_MS)
        return render(ctx, "counts.html", rows=rows, day=day.isoformat(), scope=scope)

    # ------------------------------------------------------------ tracing

    def trace_params(ctx: Ctx) -> tuple[int, int]:
        q = ctx.request.query_params
        try:
            days = int(q.get("days", str(DEFAULT_DAYS)))
        except ValueError:
            days = DEFAULT_DAYS
        days = min(max(days, 1), MAX_DAYS)
        window_ms = tracemod.parse_window(q.get("window", DEFAULT_WINDOW))
        return days, window_ms

    @route("/trace", Rule(roles.TRACE))
    def trace_page(ctx: Ctx) -> Response:
        return render(ctx, "trace.html", error=None, days=DEFAULT_DAYS, window=DEFAULT_WINDOW)

    @route("/trace/find", Rule(roles.TRACE), ("POST",))
    def trace_find(ctx: Ctx) -> Response:
        try:
            days = min(max(int(ctx.get("days", str(DEFAULT_DAYS))), 1), MAX_DAYS)
        except ValueError:
            days = DEFAULT_DAYS
        window = ctx.get("window", DEFAULT_WINDOW).strip() or DEFAULT_WINDOW
        tracemod.parse_window(window)
        now = now_ms()
        since, _ = cardfind.period(now, days)
        photo, text, card = ctx.upload("photo"), ctx.get("text").strip(), ctx.get("card").strip()
        try:
            if photo:
                found = cardfind.from_photo(photo, cardfind.server_trust(storage), now, since_ms=since)
            elif text:
                found = cardfind.from_text(text, cardfind.server_trust(storage), now, since_ms=since)
            elif card:
                found = cardfind.from_id(card)
            else:
                return render(ctx, "trace.html", 400, error=ctx.t("find_nothing"), days=days, window=window)
        except CheckpointError as exc:
            return render(ctx, "trace.html", 400, error=ctx.t("find_failed", code=exc.code), days=days,
                          window=window)
        return redirect(ctx, f"/trace/card/{found.card_id}?days={days}&window={window}&how={found.how}")

    def card_param(ctx: Ctx) -> str:
        try:
            return tracemod.parse_card(ctx.request.path_params["card_id"])
        except tracemod.TraceError:
            raise Denied(404) from None

    @route("/trace/card/{card_id}", Rule(roles.TRACE))
    def trace_card(ctx: Ctx) -> Response:
        card_id = card_param(ctx)
        days, window_ms = trace_params(ctx)
        since, until = cardfind.period(now_ms(), days)
        t0 = time.perf_counter()
        report = tracemod.trace(storage, card_id, since_ms=since, until_ms=until, window_ms=window_ms)
        ms = (time.perf_counter() - t0) * 1000
        audit_event(ctx, audit.TRACE, target=card_id,
                    detail=f"days={days} window_s={window_ms // 1000} visits={len(report.visits)} "
                           f"contacts={len(report.contacts)} how={ctx.request.query_params.get('how', 'url')[:8]}")
        return render(ctx, "trace_card.html", report=report, days=days, window=window_ms // 60000, ms=ms,
                      visit_at={v.entry.entry_id: v.entry.at_ms for v in report.visits},
                      can_open=roles.allowed(ctx.account.role, roles.HOLDERS) and config.opener is not None,
                      hours=DEFAULT_CASE_HOURS, max_hours=MAX_CASE_HOURS, error=None)

    @route("/trace/card/{card_id}/open", Rule(roles.HOLDERS), ("POST",))
    def trace_open(ctx: Ctx) -> Response:
        card_id = card_param(ctx)
        try:
            days = min(max(int(ctx.get("days", str(DEFAULT_DAYS))), 1), MAX_DAYS)
            hours = min(max(int(ctx.get("hours", str(DEFAULT_CASE_HOURS))), 1), MAX_CASE_HOURS)
        except ValueError:
            return fail(ctx, ctx.t("bad_number"))
        window_ms = tracemod.parse_window(ctx.get("window_min", "60") + "m")
        try:
            case_number, reason = check_case(ctx.get("case_number"), ctx.get("reason"))
        except CheckpointError as exc:
            return fail(ctx, ctx.t(exc.code))
        if config.opener is None:
            raise OpenerUnavailable("no opener is configured for this console")
        now = now_ms()
        since, until = cardfind.period(now, days)
        case = Case(uuid.uuid4().hex, ctx.actor, case_number, reason, card_id, since, until, window_ms, now,
                    now + hours * 3_600_000)
        waits = config.opener.request(actor=ctx.actor, case_id=case.case_id, case_number=case_number, reason=reason,
                                      card_id=card_id, hours=hours)
        store.add_case(case)
        if not waits:
            store.approve_case(case.case_id, None, now)
        audit_event(ctx, audit.CASE_OPEN, case_number=case_number, reason=reason, target=card_id,
                    detail=f"case_id={case.case_id} days={days} hours={hours} approval={int(waits)}")
        return redirect(ctx, f"/cases/{case.case_id}")

    def own_case(ctx: Ctx) -> Case:
        """The case in the path if it is this tracer's own and still open (else: not found)."""
        case_id = ctx.request.path_params["case_id"]
        case = store.case(case_id) if _CASE_ID.fullmatch(case_id) else None
        if case is None or case.username != ctx.actor:
            raise Denied(404)
        if case.expires_ms <= now_ms():
            raise CheckpointError(ctx.t("case_expired"), code="case_expired")
        return case

    def case_report(ctx: Ctx, case: Case) -> tracemod.TraceReport:
        if config.opener is None:
            raise OpenerUnavailable("no opener is configured for this console")
        opener = config.opener

        def open_many(entries):
            return opener.open(entries, actor=ctx.actor, case_number=case.case_number, reason=case.reason,
                               case_id=case.case_id)

        return tracemod.trace(storage, case.card_id, since_ms=case.since_ms, until_ms=case.until_ms,
                              window_ms=case.window_ms, open_many=open_many)

    def approval_policy() -> ApprovalPolicy:
        if config.opener is None:
            raise OpenerUnavailable("no opener is configured for this console")
        return config.opener.policy()

    @route("/cases/{case_id}", Rule(roles.HOLDERS))
    def case_page(ctx: Ctx) -> Response:
        case = own_case(ctx)
        if case.approved_ms is None:
            policy = approval_policy()
            return render(ctx, "case_waiting.html", case=case, policy=policy,
                          approver_names=", ".join(ctx.t(f"role_{r}") for r in policy.approver_roles))
        t0 = time.perf_counter()
        report = case_report(ctx, case)
        ms = (time.perf_counter() - t0) * 1000
        return render(ctx, "case.html", case=case, report=report, ms=ms, printable=False)

    def exported(ctx: Ctx, kind: str) -> tuple[Case, tracemod.TraceReport]:
        case = own_case(ctx)
        if case.approved_ms is None:
            raise CheckpointError(ctx.t("case_not_approved"), code="approval_required")
        report = case_report(ctx, case)
        opened = sum(1 for c in report.contacts if c.holder.status == "ok") + \
            sum(1 for v in report.visits if v.holder.status == "ok")
        audit_event(ctx, audit.EXPORT, case_number=case.case_number, reason=case.reason, target=kind,
                    holders=opened, detail=f"case_id={case.case_id} rows={len(report.contacts)}")
        return case, report

    def download(data: bytes, media: str, name: str) -> Response:
        return Response(data, media_type=media, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @route("/cases/{case_id}/export.csv", Rule(roles.HOLDERS))
    def case_csv(ctx: Ctx) -> Response:
        case, report = exported(ctx, "csv")
        return download(exports.to_csv(report, tz), exports.CSV_TYPE, f"contacts-{case.case_id[:8]}.csv")

    @route("/cases/{case_id}/export.xlsx", Rule(roles.HOLDERS))
    def case_xlsx(ctx: Ctx) -> Response:
        case, report = exported(ctx, "xlsx")
        return download(exports.to_xlsx(report, tz, title="contacts"), exports.XLSX_TYPE,
                        f"contacts-{case.case_id[:8]}.xlsx")

    @route("/cases/{case_id}/print", Rule(roles.HOLDERS))
    def case_print(ctx: Ctx) -> Response:
        case, report = exported(ctx, "print")
        return render(ctx, "case.html", case=case, report=report, ms=None, printable=True)

    # ------------------------------------------------------------ approvals

    @route("/approvals", Rule(roles.APPROVE))
    def approvals(ctx: Ctx) -> Response:
        policy = approval_policy()
        waiting = store.waiting_cases(now_ms() - policy.approval_s * 1000) if policy.approver_roles else []
        return render(ctx, "approvals.html", policy=policy, may=ctx.account.role in policy.approver_roles,
                      approver_names=", ".join(ctx.t(f"role_{r}") for r in policy.approver_roles),
                      cases=[c for c in waiting if c.username != ctx.actor],
                      mine=[c for c in waiting if c.username == ctx.actor])

    @route("/approvals/{case_id}", Rule(roles.APPROVE), ("POST",))
    def approve(ctx: Ctx) -> Response:
        case_id = ctx.request.path_params["case_id"]
        case = store.case(case_id) if _CASE_ID.fullmatch(case_id) else None
        if case is None:
            raise Denied(404)
        if case.username == ctx.actor:
            return fail(ctx, ctx.t("approve_not_own"), 403)
        if case.approved_ms is not None:
            return fail(ctx, ctx.t("approve_done"), 409)
        if config.opener is None:
            raise OpenerUnavailable("no opener is configured for this console")
        approved_ms = config.opener.approve(actor=ctx.actor, case_id=case.case_id)  # the opener checks and audits
        store.approve_case(case.case_id, ctx.actor, approved_ms)
        return redirect(ctx, "/approvals")

    # ------------------------------------------------------------ audit

    @route("/audit", Rule(roles.AUDIT))
    def audit_page(ctx: Ctx) -> Response:
        q = ctx.request.query_params
        action = q.get("action") if q.get("action") in audit.ACTIONS else None
        before = int(q["before"]) if q.get("before", "").isdigit() else None
        anchors, anchor_note = [], None
        if config.opener is not None:
            try:
                anchors = config.opener.anchors()
            except OpenerUnavailable as exc:
                anchor_note = exc.code
        check = audit.verify(store.audit_all(), anchors)
        records = store.audit_tail(100, before, action)
        return render(ctx, "audit.html", check=check, records=records, anchors=len(anchors), anchor_note=anchor_note,
                      actions=audit.ACTIONS, action=action,
                      older=records[-1].seq if len(records) == 100 else None)

    # ------------------------------------------------------------ files and languages

    async def stylesheet(request: Request) -> Response:
        return Response(css, media_type="text/css; charset=utf-8", headers={"Cache-Control": "no-cache"})

    routes = [login, login_code, logout, home, fleet, device, revoke, enroll, trust, trust_publish, accounts_page,
              account_add, account_role, account_disable, account_reset, counts, trace_page, trace_find, trace_card,
              trace_open, case_page, case_csv, case_xlsx, case_print, approvals, approve, audit_page]
    routes.append(RuledRoute("/static/console.css", stylesheet, PUBLIC, methods=["GET"]))

    async def not_found(request: Request, exc) -> Response:
        return HTMLResponse("<!doctype html><title>404</title><p>404</p>", status_code=404)

    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("console: internal error on %s: %s", request.url.path.split("/")[1][:20], type(exc).__name__)
        return HTMLResponse("<!doctype html><title>500</title><p>500</p>", status_code=500)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: crashed})
    app.add_middleware(SecurityHeaders, secure=policy.secure)
    app.add_middleware(BodyLimit)
    app.state.store = store
    return app


NAV = (
    ("/fleet", "nav_fleet", roles.FLEET),
    ("/counts", "nav_counts", roles.COUNTS),
    ("/enroll", "nav_enroll", roles.FLEET_MANAGE),
    ("/trust", "nav_trust", roles.TRUST),
    ("/accounts", "nav_accounts", roles.ACCOUNTS),
    ("/trace", "nav_trace", roles.TRACE),
    ("/approvals", "nav_approvals", roles.APPROVE),
    ("/audit", "nav_audit", roles.AUDIT),
)


def routes_of(app: Starlette) -> list[tuple[str, tuple[str, ...], Rule]]:
    """(path, methods, rule) of every route (the tests try each as every role)."""
    return [(r.path, tuple(sorted((r.methods or set()) - {"HEAD"})), r.rule) for r in app.routes
            if isinstance(r, RuledRoute)]


def serve(app: Starlette, host: str, port: int, *, tls_cert: str | None, tls_key: str | None, ready=None,
          serving: Callable[[], None] | None = None) -> None:
    """Run the console on uvicorn until SIGINT/SIGTERM (no access log: paths carry card ids);
    ``serving``: called once it accepts connections and SIGINT/SIGTERM stop it."""
    server = make_server(app, host, port, tls_cert=tls_cert, tls_key=tls_key, access_log=False, serving=serving)
    if ready is not None:
        ready(server)
    server.run()
