"""The approval page: server-rendered HTML for the ML team, under /ui.

Sign in with an approver key: the server keeps a session (in Redis; the cookie holds only its random id),
every form carries a CSRF token and must come from this origin, and every response carries CSP and
anti-framing headers (services.inference.ui_security). Then the adapter list, and per adapter: candidate vs
active metrics, the gate table, sample responses side by side for the same prompts, the audit log, and
approve / reject with a reason. Every action goes through the same registry functions as the JSON API.
"""

from __future__ import annotations

import base64
import hashlib
import html
from urllib.parse import parse_qs, quote

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from schemas.http import MAX_REASON_CHARS, AdapterDetail
from services.inference import adapter_views as views
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
from services.promotion.states import State

router = APIRouter(prefix="/ui", include_in_schema=False)
MAX_FORM_BYTES = 16_384
METRICS = (  # (label, path in adapter.metrics)
    ("mean reward (own reward model)", ("evaluation", "mean_reward")),
    ("win rate vs base", ("evaluation", "win_rate")),
    ("KL vs base (nats)", ("evaluation", "kl_vs_base")),
    ("held-out pair accuracy", ("evaluation", "heldout_pair_accuracy")),
    ("PPO score (last steps)", ("ppo", "score_last")),
    ("PPO KL (last steps)", ("ppo", "kl_last")),
)
STYLE = """body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px}
table{border-collapse:collapse;margin:1rem 0}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}.pass{color:#070}.fail{color:#b00}
.note{background:#eef;padding:.5rem}.error{background:#fee;padding:.5rem}textarea{width:100%}"""
_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The page's only inline content is STYLE (allowed by its hash); no scripts at all."""


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value))


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
        return _page("Refused", "<p class='error'>This form was not sent from this site.</p>", status=403)
    if not csrf_matches(expected_csrf, form.get("csrf")):
        refuse("csrf")
        return _page("Refused", "<p class='error'>The form expired or was not ours: reload it.</p>", status=403)
    return None


def _csrf_field(token: str) -> str:
    return f"<input type='hidden' name='csrf' value='{_e(token)}'>"


@router.get("/login")
async def login_form(error: str = "") -> HTMLResponse:
    note = f"<p class='error'>{_e(error)}</p>" if error else ""
    token = new_login_token()
    response = _page(
        "Sign in",
        f"""{note}<form method='post' action='/ui/login'>{_csrf_field(token)}
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
    rows = "".join(
        f"<tr><td><a href='/ui/adapters/{_e(a.id)}'>{_e(a.id)}</a></td><td class='state'>{_e(a.state)}</td>"
        f"<td>{_gate_word(a.gate_passed)}</td><td>{_e(a.created_at[:19])}</td><td>{_e(a.parent_id)}</td></tr>"
        for a in adapters
    )
    canary = f"{_e(deployed.canary)} for {deployed.canary_share:.0%} of users" if deployed.canary else "none"
    return _page(
        "Adapters",
        f"""<p>Active: <b id='active'>{_e(deployed.active or "base model")}</b>;
canary: {canary}.</p><table><tr><th>adapter</th><th>state</th><th>gate</th><th>created</th><th>parent</th></tr>{rows}
</table><form method='post' action='/ui/logout'>{_csrf_field(signed_in[0].csrf)}<button id='sign-out'>Sign out</button>
</form>""",
    )


def _gate_word(passed: bool | None) -> str:
    if passed is None:
        return "—"
    return "<span class='pass'>passed</span>" if passed else "<span class='fail'>failed</span>"


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
        return _page("Not found", f"<p class='error'>{_e(e)}</p>", status=e.status)
    notes = (f"<p class='note' id='done'>{_e(done)}</p>" if done else "") + (
        f"<p class='error' id='error'>{_e(error)}</p>" if error else ""
    )
    body = notes + f"<p>State: <b id='state'>{_e(this.adapter.state)}</b> · parent {_e(this.adapter.parent_id)} · run "
    body += f"{_e(this.adapter.run_id)}</p>" + _metrics_table(this, active) + _gate_table(this) + _samples(this)
    if this.adapter.state == State.AWAITING_APPROVAL:
        body += _decision_form(adapter_id, signed_in[0].csrf)
    body += _audit(this) + "<p><a href='/ui/adapters'>all adapters</a></p>"
    return _page(f"Adapter {adapter_id}", body)


def _metric(detail: AdapterDetail | None, path: tuple[str, str]) -> str:
    value = ((detail.metrics if detail else {}).get(path[0]) or {}).get(path[1])
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def _metrics_table(this: AdapterDetail, active: AdapterDetail | None) -> str:
    rows = "".join(
        f"<tr><td>{_e(label)}</td><td>{_metric(this, path)}</td><td>{_metric(active, path)}</td></tr>"
        for label, path in METRICS
    )
    name = active.adapter.id if active else "base model"
    return f"<h2>Metrics</h2><table><tr><th></th><th>this adapter</th><th>active ({_e(name)})</th></tr>{rows}</table>"


def _gate_table(this: AdapterDetail) -> str:
    gate = this.metrics.get("gate")
    if not gate:
        return "<h2>Gate</h2><p>not run yet</p>"
    rows = "".join(
        f"<tr><td>{_e(c['name'])}</td><td>{_e(c['value'])}</td><td>{_interval(c.get('interval'))}</td>"
        f"<td>{_e(c['op'])} {_e(c['threshold'])}</td>"
        f"<td>{_gate_word(c['passed']) if c.get('measured', True) else 'not measured'}</td>"
        f"<td>{_e(c.get('detail'))}</td></tr>"
        for c in gate["checks"]
    )
    return (
        f"<h2>Gate: {_gate_word(gate['passed'])}</h2><table id='gate'><tr><th>check</th><th>value</th>"
        f"<th>interval</th><th>threshold</th><th>result</th><th></th></tr>{rows}</table>" + _golden(gate)
    )


def _interval(interval: list[float] | None) -> str:
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


def _golden(gate: dict) -> str:
    """The golden cases the candidate breaks, with the regressions (what the active adapter got right)."""
    failures = gate.get("golden_failures") or []
    if not failures:
        return ""
    rows = "".join(
        f"<tr><td>{_e(f.get('name') or f['prompt'])}</td><td>{_e(f['answer'])}</td>"
        f"<td>{_e('; '.join(f.get('regressions') or []))}</td><td>{_e('; '.join(f['failures']))}</td></tr>"
        for f in failures
    )
    return (
        "<h3>Golden cases the candidate breaks</h3><table id='golden'><tr><th>case</th><th>answer</th>"
        f"<th>regressions</th><th>all failures</th></tr>{rows}</table>"
    )


def _samples(this: AdapterDetail) -> str:
    samples = (this.metrics.get("gate") or {}).get("samples") or []
    if not samples:
        return ""
    rows = "".join(
        f"<tr><td>{_e(s['prompt'])}</td><td>{_e(s['candidate'])}</td><td>{_e(s['active'])}</td></tr>" for s in samples
    )
    return (
        "<h2>Sample responses (same prompts, same seeds)</h2><table id='samples'><tr><th>prompt</th>"
        f"<th>this adapter</th><th>active</th></tr>{rows}</table>"
    )


def _decision_form(adapter_id: str, csrf: str) -> str:
    return f"""<h2>Decision</h2><form method='post' action='/ui/adapters/{_e(adapter_id)}/decision'>{_csrf_field(csrf)}
<label>Reason (kept in the audit log)<textarea name='reason' id='reason' maxlength='{MAX_REASON_CHARS}'
required></textarea></label><button type='submit' name='action' value='approve' id='approve'>Approve</button>
<button type='submit' name='action' value='reject' id='reject'>Reject</button></form>"""


def _audit(this: AdapterDetail) -> str:
    rows = "".join(
        f"<tr><td>{_e(a.at[:19])}</td><td>{_e(a.from_state)} → {_e(a.to_state)}</td><td>{_e(a.actor)}</td>"
        f"<td>{_e(a.reason)}</td></tr>"
        for a in this.audit
    )
    head = "<tr><th>when</th><th>change</th><th>who</th><th>why</th></tr>"
    return f"<h2>Audit log</h2><table id='audit'>{head}{rows}</table>"


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
