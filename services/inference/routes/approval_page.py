"""The approval page: server-rendered HTML for the ML team, under /ui.

Sign in with an approver key: the server keeps a session (in Redis; the cookie holds only its random id),
every form carries a CSRF token and must come from this origin, and every response carries CSP and
anti-framing headers (services.inference.ui_security). Then the adapter list, and per adapter: candidate vs
active metrics, the gate table, sample responses side by side for the same prompts, the audit log, and
approve / reject with a reason. Every action goes through the same registry functions as the JSON API.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from schemas.http import MAX_REASON_CHARS
from services.inference import adapter_views as views
from services.inference import approval_html as view
from services.inference.auth import APPROVER_ROLES, AuthError, Principal, hash_key
from services.inference.context import ApiContext
from services.inference.deps import CtxDep
from services.inference.forwarded import client_address
from services.inference.routes.promotions import actor, promotions
from services.inference.ui_security import (
    LOGIN_COOKIE,
    LOGIN_TTL_S,
    SESSION_COOKIE,
    UiSession,
    cookie_options,
    csrf_matches,
    new_login_token,
    refuse,
    same_origin,
)
from services.promotion.registry import PromotionError

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_FORM_BYTES = 16_384


async def _form(request: Request) -> dict[str, str]:
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return {}
    return {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


def _login_redirect() -> RedirectResponse:
    return _redirect("/ui/login")


def _address(request: Request, ctx: ApiContext) -> str:
    return client_address(request, ctx.settings.api.trusted_proxy)


async def _signed_in(request: Request, ctx: ApiContext) -> tuple[UiSession, Principal] | None:
    """The request's session and its approver, re-checked against the key cache (a revoked, expired or
    re-roled key ends the session); None when not signed in."""
    session = await ctx.ui_sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    try:
        principal = await ctx.keys.resolve(session.key_digest, _address(request, ctx))
    except AuthError:
        return None
    if principal is None or principal.role not in APPROVER_ROLES:
        await ctx.ui_sessions.delete(session.id)
        return None
    return session, principal


def _forged(request: Request, ctx: ApiContext, expected_csrf: str | None, form: dict[str, str]) -> Response | None:
    """A 403 page for a form post from another origin or without this session's CSRF token (nothing done)."""
    if not same_origin(request, ctx.settings.api.trusted_proxy):
        refuse("origin")
        return view.page("Refused", "<p class='error'>This form was not sent from this site.</p>", status=403)
    if not csrf_matches(expected_csrf, form.get("csrf")):
        refuse("csrf")
        return view.page("Refused", "<p class='error'>The form expired or was not ours: reload it.</p>", status=403)
    return None


@router.get("/login")
async def login_form(error: str = "") -> HTMLResponse:
    note = f"<p class='error'>{view.esc(error)}</p>" if error else ""
    token = new_login_token()
    response = view.page(
        "Sign in",
        f"""{note}<form method='post' action='/ui/login'>{view.csrf_field(token)}
<label>Approver API key <input type='password' name='key' id='key' autocomplete='off' required></label>
<button type='submit' id='sign-in'>Sign in</button></form>""",
    )
    response.set_cookie(LOGIN_COOKIE, token, **cookie_options(LOGIN_TTL_S))
    return response


@router.post("/login")
async def login(request: Request, ctx: CtxDep) -> Response:
    form = await _form(request)
    refused = _forged(request, ctx, request.cookies.get(LOGIN_COOKIE), form)
    if refused is not None:
        return refused
    key = form.get("key", "")
    try:
        await ctx.keys.require(key, APPROVER_ROLES, _address(request, ctx))
    except AuthError as e:
        why = "too many failed sign-ins, wait a minute" if e.status == 429 else "unknown key, or not an approver key"
        return _redirect("/ui/login?error=" + quote(why))
    session = await ctx.ui_sessions.create(hash_key(key))
    response = _redirect("/ui/adapters")
    response.set_cookie(SESSION_COOKIE, session.id, **cookie_options(ctx.ui_sessions.ttl_s))
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.post("/logout")
async def logout(request: Request, ctx: CtxDep) -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _login_redirect()
    refused = _forged(request, ctx, signed_in[0].csrf, await _form(request))
    if refused is not None:
        return refused
    await ctx.ui_sessions.delete(signed_in[0].id)
    response = _login_redirect()
    response.delete_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="strict")
    return response


@router.get("/adapters")
async def adapter_list(request: Request, ctx: CtxDep) -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _login_redirect()

    def read() -> tuple:
        with ctx.sessions() as session:
            return views.list_adapters(session), views.deployment(session)

    adapters, deployed = await anyio.to_thread.run_sync(read)
    return view.page("Adapters", view.adapter_list(adapters, deployed, signed_in[0].csrf))


@router.get("/adapters/{adapter_id}")
async def adapter_page(adapter_id: str, request: Request, ctx: CtxDep, done: str = "", error: str = "") -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _login_redirect()

    def read() -> tuple:
        with ctx.sessions() as session:
            this = views.detail(session, adapter_id)
            deployed = views.deployment(session)
            active = views.detail(session, deployed.active) if deployed.active else None
            return this, active

    try:
        this, active = await anyio.to_thread.run_sync(read)
    except PromotionError as e:
        return view.page("Not found", f"<p class='error'>{view.esc(e)}</p>", status=e.status)
    body = view.adapter_detail(this, active, signed_in[0].csrf, done, error)
    return view.page(f"Adapter {adapter_id}", body)


@router.post("/adapters/{adapter_id}/decision")
async def decide(adapter_id: str, request: Request, ctx: CtxDep) -> Response:
    signed_in = await _signed_in(request, ctx)
    if signed_in is None:
        return _login_redirect()
    session, principal = signed_in
    form = await _form(request)
    refused = _forged(request, ctx, session.csrf, form)
    if refused is not None:
        return refused
    action, reason = form.get("action"), form.get("reason", "").strip()[:MAX_REASON_CHARS]
    back = f"/ui/adapters/{quote(adapter_id)}"
    if action not in ("approve", "reject") or not reason:
        return _redirect(back + "?error=" + quote("choose approve or reject and give a reason"))
    service = promotions(ctx)
    act = service.approve if action == "approve" else service.reject
    try:
        state = await anyio.to_thread.run_sync(act, adapter_id, actor(principal), reason)
    except PromotionError as e:
        return _redirect(back + "?error=" + quote(str(e)))
    verb = "approved" if action == "approve" else "rejected"
    return _redirect(back + "?done=" + quote(f"{verb} by {principal.name}: now {state}"))
