"""``rlhf-loop adapters``: the adapter registry through the API, with an approver key."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from rlhf_loop.cli.options import ApiKeyOpt, ApiUrl, Reason, load_settings

app = typer.Typer(
    help="The adapter registry through the API (approver key): list, show, approve, reject, promote, roll back.",
    no_args_is_help=True,
)


def _api(url: str | None, key: str, method: str, path: str, body: dict | None = None, params: dict | None = None):  # noqa: ANN202
    """Call the API and return its JSON; a refusal becomes a one-line error and exit code 1."""
    from rlhf_loop.cli.api_client import ApiClient, ApiError

    cfg = load_settings().api
    try:
        client = ApiClient(url or f"http://{cfg.host}:{cfg.port}", key)
        try:
            return client.call(method, path, body, params)
        finally:
            client.close()
    except ApiError as e:
        raise click.ClickException(str(e)) from e


@app.command("list")
def adapters_list(
    key: ApiKeyOpt = "",
    api: ApiUrl = None,
    state: Annotated[str | None, typer.Option(help="Only adapters in this state.")] = None,
) -> None:
    """Adapters, newest first, with their state and gate result; then what is deployed."""
    rows = _api(api, key, "GET", "/v1/adapters", params={"state": state} if state else None)
    gate = {None: "-", True: "passed", False: "failed"}
    for a in rows:
        typer.echo(f"{a['id']:<22} {a['state']:<18} gate {gate[a['gate_passed']]:<7} {a['created_at'][:19]}")
    d = _api(api, key, "GET", "/v1/deployment")
    canary = f", canary {d['canary']} for {d['canary_share']:.0%} of users" if d["canary"] else ""
    typer.echo(f"serving: {d['active'] or 'base model'}{canary}")


@app.command("show")
def adapters_show(
    adapter_id: str,
    key: ApiKeyOpt = "",
    api: ApiUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Only the JSON (metrics, gate, lineage, audit).")] = False,
) -> None:
    """One adapter: the gate report (every check, its value, interval and threshold, and the golden
    regressions), then the whole record as JSON: metrics, gate verdict, lineage, audit log."""
    import json

    detail = _api(api, key, "GET", f"/v1/adapters/{adapter_id}")
    if not as_json:
        for line in gate_report(detail.get("metrics", {}).get("gate")):
            typer.echo(line)
    typer.echo(json.dumps(detail, indent=2))


def gate_report(gate: dict | None) -> list[str]:
    """The gate's verdict as text lines: one per check, then each golden regression."""
    if not gate:
        return ["gate: not run yet"]
    lines = [f"gate: {'passed' if gate['passed'] else 'failed'}"]
    for c in gate["checks"]:
        interval = c.get("interval")
        span = f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""
        result = ("pass" if c["passed"] else "FAIL") if c.get("measured", True) else "not measured"
        value = "-" if c["value"] is None else f"{c['value']:g}"
        lines.append(
            f"  {c['name']:<26} {value:>10}{span:<17} {c['op']} {c['threshold']:<8g} {result:<12} {c['detail']}"
        )
    for f in gate.get("golden_failures") or []:
        for r in f.get("regressions") or []:
            lines.append(f"  golden regression: {f.get('name') or f['prompt']}: {r}")
    return lines


def _deployed(result: dict) -> str:
    d = result["deployment"]
    canary = f", canary {d['canary']} ({d['canary_share']:.0%})" if d["canary"] else ""
    return f"serving {d['active'] or 'base model'}{canary}"


@app.command("approve")
def adapters_approve(adapter_id: str, reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Approve an adapter awaiting approval (it deploys once enough approvers agree)."""
    r = _api(api, key, "POST", f"/v1/promotions/{adapter_id}/approve", {"reason": reason})
    typer.echo(f"{adapter_id}: {r['state']}; {_deployed(r)}")


@app.command("reject")
def adapters_reject(adapter_id: str, reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Reject a gated or awaiting adapter for good."""
    r = _api(api, key, "POST", f"/v1/promotions/{adapter_id}/reject", {"reason": reason})
    typer.echo(f"{adapter_id}: {r['state']}")


@app.command("promote")
def adapters_promote(reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Make the running canary active for every user now."""
    r = _api(api, key, "POST", "/v1/promotions/promote", {"reason": reason})
    typer.echo(f"{r['adapter_id']}: active; {_deployed(r)}")


@app.command("rollback")
def adapters_rollback(reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Undo the newest deployment: withdraw the canary, or restore the adapter the active one replaced."""
    r = _api(api, key, "POST", "/v1/promotions/rollback", {"reason": reason})
    typer.echo(f"rolled back {r['rolled_back']} ({r['role']}); {_deployed(r)}")
