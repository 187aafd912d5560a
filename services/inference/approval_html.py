"""The approval page's HTML: the page frame with its one inline style (allowed by hash in ``CSP``), and the
tables of an adapter (metrics against the active adapter, the gate, the golden failures, samples, audit).
Pure functions of the registry views; every value is escaped."""

from __future__ import annotations

import base64
import hashlib
import html

from fastapi.responses import HTMLResponse

from schemas.http import MAX_REASON_CHARS, AdapterDetail, AdapterSummary, Deployment

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


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>",
        status_code=status,
    )


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value))


def csrf_field(token: str) -> str:
    return f"<input type='hidden' name='csrf' value='{esc(token)}'>"


def gate_word(passed: bool | None) -> str:
    if passed is None:
        return "—"
    return "<span class='pass'>passed</span>" if passed else "<span class='fail'>failed</span>"


def _metric(detail: AdapterDetail | None, path: tuple[str, str]) -> str:
    value = ((detail.metrics if detail else {}).get(path[0]) or {}).get(path[1])
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def metrics_table(this: AdapterDetail, active: AdapterDetail | None) -> str:
    rows = "".join(
        f"<tr><td>{esc(label)}</td><td>{_metric(this, path)}</td><td>{_metric(active, path)}</td></tr>"
        for label, path in METRICS
    )
    name = active.adapter.id if active else "base model"
    return f"<h2>Metrics</h2><table><tr><th></th><th>this adapter</th><th>active ({esc(name)})</th></tr>{rows}</table>"


def gate_table(this: AdapterDetail) -> str:
    gate = this.metrics.get("gate")
    if not gate:
        return "<h2>Gate</h2><p>not run yet</p>"
    rows = "".join(
        f"<tr><td>{esc(c['name'])}</td><td>{esc(c['value'])}</td><td>{_interval(c.get('interval'))}</td>"
        f"<td>{esc(c['op'])} {esc(c['threshold'])}</td>"
        f"<td>{gate_word(c['passed']) if c.get('measured', True) else 'not measured'}</td>"
        f"<td>{esc(c.get('detail'))}</td></tr>"
        for c in gate["checks"]
    )
    return (
        f"<h2>Gate: {gate_word(gate['passed'])}</h2><table id='gate'><tr><th>check</th><th>value</th>"
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
        f"<tr><td>{esc(f.get('name') or f['prompt'])}</td><td>{esc(f['answer'])}</td>"
        f"<td>{esc('; '.join(f.get('regressions') or []))}</td><td>{esc('; '.join(f['failures']))}</td></tr>"
        for f in failures
    )
    return (
        "<h3>Golden cases the candidate breaks</h3><table id='golden'><tr><th>case</th><th>answer</th>"
        f"<th>regressions</th><th>all failures</th></tr>{rows}</table>"
    )


def samples(this: AdapterDetail) -> str:
    samples = (this.metrics.get("gate") or {}).get("samples") or []
    if not samples:
        return ""
    rows = "".join(
        f"<tr><td>{esc(s['prompt'])}</td><td>{esc(s['candidate'])}</td><td>{esc(s['active'])}</td></tr>"
        for s in samples
    )
    return (
        "<h2>Sample responses (same prompts, same seeds)</h2><table id='samples'><tr><th>prompt</th>"
        f"<th>this adapter</th><th>active</th></tr>{rows}</table>"
    )


def decision_form(adapter_id: str, csrf: str) -> str:
    return f"""<h2>Decision</h2><form method='post' action='/ui/adapters/{esc(adapter_id)}/decision'>{csrf_field(csrf)}
<label>Reason (kept in the audit log)<textarea name='reason' id='reason' maxlength='{MAX_REASON_CHARS}'
required></textarea></label><button type='submit' name='action' value='approve' id='approve'>Approve</button>
<button type='submit' name='action' value='reject' id='reject'>Reject</button></form>"""


def audit(this: AdapterDetail) -> str:
    rows = "".join(
        f"<tr><td>{esc(a.at[:19])}</td><td>{esc(a.from_state)} → {esc(a.to_state)}</td><td>{esc(a.actor)}</td>"
        f"<td>{esc(a.reason)}</td></tr>"
        for a in this.audit
    )
    head = "<tr><th>when</th><th>change</th><th>who</th><th>why</th></tr>"
    return f"<h2>Audit log</h2><table id='audit'>{head}{rows}</table>"


def adapter_list(adapters: list[AdapterSummary], deployed: Deployment, csrf: str) -> str:
    rows = "".join(
        f"<tr><td><a href='/ui/adapters/{esc(a.id)}'>{esc(a.id)}</a></td><td class='state'>{esc(a.state)}</td>"
        f"<td>{gate_word(a.gate_passed)}</td><td>{esc(a.created_at[:19])}</td><td>{esc(a.parent_id)}</td></tr>"
        for a in adapters
    )
    canary = f"{esc(deployed.canary)} for {deployed.canary_share:.0%} of users" if deployed.canary else "none"
    return f"""<p>Active: <b id='active'>{esc(deployed.active or "base model")}</b>;
canary: {canary}.</p><table><tr><th>adapter</th><th>state</th><th>gate</th><th>created</th><th>parent</th></tr>{rows}
</table><form method='post' action='/ui/logout'>{csrf_field(csrf)}<button id='sign-out'>Sign out</button></form>"""


def adapter_detail(this: AdapterDetail, active: AdapterDetail | None, csrf: str, done: str, error: str) -> str:
    """One adapter's page body: notes, state, the tables, the decision form while it awaits approval, the audit."""
    body = (f"<p class='note' id='done'>{esc(done)}</p>" if done else "") + (
        f"<p class='error' id='error'>{esc(error)}</p>" if error else ""
    )
    a = this.adapter
    body += f"<p>State: <b id='state'>{esc(a.state)}</b> · parent {esc(a.parent_id)} · run {esc(a.run_id)}</p>"
    body += metrics_table(this, active) + gate_table(this) + samples(this)
    if a.state == "awaiting_approval":
        body += decision_form(a.id, csrf)
    return body + audit(this) + "<p><a href='/ui/adapters'>all adapters</a></p>"
