"""The one command line, ``rlhf-loop``. Each subcommand imports its implementation inside the handler,
so ``rlhf-loop --help`` and the light commands never import torch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer

app = typer.Typer(
    help="rlhf-loop: serve a LoRA-adapted LM, turn thumbs-up/down into preference pairs, retrain, gate, deploy.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="The base model: build the demo model kit, sample from a model.", no_args_is_help=True)
spool_app = typer.Typer(help="The durable event spool: inspect it, drain it to the broker.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for apps, approvers and admins.", no_args_is_help=True)
users_app = typer.Typer(help="End users' data.", no_args_is_help=True)
adapters_app = typer.Typer(
    help="The adapter registry through the API (approver key): list, show, approve, reject, promote, roll back.",
    no_args_is_help=True,
)
app.add_typer(adapters_app, name="adapters")
app.add_typer(users_app, name="users")
app.add_typer(model_app, name="model")
app.add_typer(spool_app, name="spool")
app.add_typer(keys_app, name="keys")


def _settings():  # noqa: ANN202 - keeps pydantic-settings out of import time
    from rlhf_loop.settings import get_settings

    return get_settings()


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Seed for sampling, the simulated users and training.")] = 7,
    rounds: Annotated[int, typer.Option(min=2, help="Rounds of traffic; a retrain follows each but the last.")] = 4,
    users: Annotated[
        int, typer.Option(min=50, help="Simulated users (one prompt and one rating each) per round.")
    ] = 400,
) -> None:
    """Run the whole closed loop on embedded defaults: broker, API, aggregator and a Celery worker as child
    processes; simulated users ask and rate through the API; retrain, gate, auto-approve (demo setting),
    hot-swap; repeat. Prints a table per round and writes a report and a plot to var/reports/."""
    from rlhf_loop.demo import DemoConfig, DemoError, run_demo

    try:
        run_demo(_settings(), DemoConfig(seed=seed, rounds=rounds, users=users))
    except DemoError as e:
        raise click.ClickException(str(e)) from e
    except KeyboardInterrupt:
        typer.echo("interrupted: every child process was stopped", err=True)
        raise typer.Exit(130) from None


@app.command()
def train(
    inline: Annotated[bool, typer.Option(help="Run here with progress bars, not on a worker.")] = False,
    pairs: Annotated[Path | None, typer.Option(help="Train on this pairs JSONL file instead of the database.")] = None,
    prompts: Annotated[Path | None, typer.Option(help="PPO prompts JSONL (default: the pairs' prompts).")] = None,
    out: Annotated[Path | None, typer.Option(help="Work/output dir (with --pairs); a rerun resumes.")] = None,
    base_model: Annotated[str | None, typer.Option(help="Hugging Face causal-LM path.")] = None,
    episodes: Annotated[int | None, typer.Option(help="PPO rollouts (overrides the hyperparameters).")] = None,
    config: Annotated[str | None, typer.Option(help='Overrides as JSON: {"ppo": {"lr": 5e-4}}.')] = None,
) -> None:
    """Retrain the reward model and the policy adapter (PPO): enqueue a run on the gpu queue, run it --inline,
    or train on files (--pairs, --out) outside the service."""
    import json

    from workers.training.errors import TrainingError
    from workers.training.pipeline import run_config

    settings = _settings()
    try:
        overrides = json.loads(config) if config else {}
    except json.JSONDecodeError as e:
        raise click.BadParameter(f"not JSON: {e}", param_hint="--config") from e
    if episodes is not None:
        overrides = {**overrides, "ppo": {**overrides.get("ppo", {}), "episodes": episodes}}
    try:
        cfg = run_config(settings, **overrides)
        if pairs is not None:
            if not inline or out is None:
                raise click.UsageError("--pairs trains on files: give --inline and --out too")
            from rlhf_loop.models.loading import resolve_base_model
            from workers.training.progress import StageBars
            from workers.training.trainer import train_files

            base = base_model or resolve_base_model(settings.model)
            with StageBars.make_progress() as bars:
                result = train_files(base, pairs, prompts, out, cfg, settings.model.device, StageBars(bars))
            ev = result.metrics["evaluation"]
            typer.echo(f"adapter: {result.adapter_dir} (sha256 {result.adapter_sha256[:12]})\n"
                       f"reward-model held-out accuracy {ev['heldout_pair_accuracy']:.3f}; mean reward "
                       f"{ev['base_mean_reward']:+.3f} (base) -> {ev['mean_reward']:+.3f}; KL vs base "
                       f"{ev['kl_vs_base']:.2f} nats; details in {out / 'evaluation.json'}")  # fmt: skip
            return
        from workers.training.service import start_run

        run_id, adapter_id = start_run(settings, cfg, inline=inline, base_model=base_model)
    except TrainingError as e:
        raise click.ClickException(str(e)) from e
    if not inline:
        typer.echo(f"queued {run_id} on the gpu queue")
    elif adapter_id is None:
        raise click.ClickException(f"run {run_id} failed; see `rlhf-loop runs {run_id}`")
    else:
        typer.echo(f"run {run_id} registered candidate adapter {adapter_id}")


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume (a GPU node: gpu).")] = "gpu,default",
    concurrency: Annotated[int, typer.Option(help="Worker processes (one per GPU).")] = 1,
    beat: Annotated[bool, typer.Option(help="Also run the beat scheduler (one per deployment).")] = False,
) -> None:
    """Run a Celery training worker with a /metrics endpoint on training.metrics_port (until Ctrl-C)."""
    from workers.training.service import run_worker

    run_worker(_settings(), queues.split(","), concurrency, beat)


@app.command("runs")
def runs_show(
    run_id: Annotated[str | None, typer.Argument(help="A run id; omitted: the latest runs.")] = None,
) -> None:
    """Show training runs: status, stage, error, metrics."""
    import json

    from workers.training.service import describe_runs

    for row in describe_runs(_settings(), run_id):
        typer.echo(json.dumps(row, indent=2 if run_id else None, default=str))


@model_app.command("build-demo")
def build_demo(
    out: Annotated[Path | None, typer.Option(help="Output directory (default: model.demo_dir).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a model is already there.")] = False,
) -> None:
    """Build the small GPT-2-style demo model and tokenizer deterministically (Hugging Face format)."""
    from rlhf_loop.models.demo_kit import build_demo_model

    path = build_demo_model(out or _settings().model.demo_dir, force=force)
    typer.echo(f"demo model ready at {path}")


@model_app.command("sample")
def sample(
    prompt: Annotated[list[str], typer.Argument(help="Prompt(s) to complete.")],
    model: Annotated[str | None, typer.Option(help="Model path (default: the configured base model).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Generate a response for each prompt and print it."""
    from rlhf_loop.models.loading import generate, load_base, resolve_base_model

    cfg = _settings().model
    lm, tok = load_base(model or resolve_base_model(cfg), device="cpu")
    for p, r in zip(prompt, generate(lm, tok, prompt, seed=seed), strict=True):
        typer.echo(f"> {p}\n{r}\n")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to bind (default: api.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default: api.port).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: api.workers).")] = None,
) -> None:
    """Run the inference API (uvicorn) until Ctrl-C."""
    import uvicorn

    cfg = _settings().api
    uvicorn.run(
        "services.inference.app:app_from_env", factory=True, host=host or cfg.host, port=port or cfg.port,
        workers=workers or cfg.workers, log_level="info", access_log=cfg.access_log, timeout_graceful_shutdown=30,
    )  # fmt: skip


@app.command()
def aggregate() -> None:
    """Run one aggregator: Kafka responses and ratings -> SQL -> preference pairs (until Ctrl-C)."""
    import logging

    from workers.aggregator.main import run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        run(_settings())
    except ValueError as e:
        raise click.ClickException(str(e)) from e


@users_app.command("forget")
def users_forget(user_ref: Annotated[str, typer.Argument(help="The pseudonymous user reference.")]) -> None:
    """Delete a user's ratings and responses and re-derive the preference pairs they contributed to."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from workers.aggregator.forget import forget_user
    from workers.aggregator.main import rules

    settings = _settings()
    engine = make_engine(settings.database)
    groups = forget_user(make_sessionmaker(engine), user_ref, rules(settings))
    engine.dispose()
    typer.echo(f"forgot {user_ref}; re-derived the pairs of {groups} prompt group(s)")


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Argument(help="Who the key is for (an app id, a person).")],
    role: Annotated[str, typer.Option(help="app | approver | admin")] = "app",
) -> None:
    """Create an API key and print it once; only its hash is stored."""
    from rlhf_loop.db import make_engine, make_sessionmaker
    from services.inference.auth import create_key

    if role not in ("app", "approver", "admin"):
        raise click.BadParameter("role must be app, approver or admin", param_hint="--role")
    engine = make_engine(_settings().database)
    with make_sessionmaker(engine).begin() as session:
        key = create_key(session, name, role)  # type: ignore[arg-type]
    engine.dispose()
    typer.echo(key)


ApiUrl = Annotated[str | None, typer.Option("--api", help="API base URL (default: http://api.host:api.port).")]
ApiKeyOpt = Annotated[str, typer.Option("--key", envvar="RLHF_API_KEY", help="An approver key.", show_default=False)]
Reason = Annotated[str, typer.Option(help="Why (kept in the audit log).")]


def _api(url: str | None, key: str, method: str, path: str, body: dict | None = None, params: dict | None = None):  # noqa: ANN202
    """Call the API and return its JSON; a refusal becomes a one-line error and exit code 1."""
    from rlhf_loop.api_client import ApiClient, ApiError

    cfg = _settings().api
    try:
        client = ApiClient(url or f"http://{cfg.host}:{cfg.port}", key)
        try:
            return client.call(method, path, body, params)
        finally:
            client.close()
    except ApiError as e:
        raise click.ClickException(str(e)) from e


@adapters_app.command("list")
def adapters_list(
    key: ApiKeyOpt = "", api: ApiUrl = None,
    state: Annotated[str | None, typer.Option(help="Only adapters in this state.")] = None,
) -> None:  # fmt: skip
    """Adapters, newest first, with their state and gate result; then what is deployed."""
    rows = _api(api, key, "GET", "/v1/adapters", params={"state": state} if state else None)
    gate = {None: "-", True: "passed", False: "failed"}
    for a in rows:
        typer.echo(f"{a['id']:<22} {a['state']:<18} gate {gate[a['gate_passed']]:<7} {a['created_at'][:19]}")
    d = _api(api, key, "GET", "/v1/deployment")
    canary = f", canary {d['canary']} for {d['canary_share']:.0%} of users" if d["canary"] else ""
    typer.echo(f"serving: {d['active'] or 'base model'}{canary}")


@adapters_app.command("show")
def adapters_show(adapter_id: str, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """One adapter as JSON: metrics, gate verdict, lineage, audit log."""
    import json

    typer.echo(json.dumps(_api(api, key, "GET", f"/v1/adapters/{adapter_id}"), indent=2))


def _deployed(result: dict) -> str:
    d = result["deployment"]
    canary = f", canary {d['canary']} ({d['canary_share']:.0%})" if d["canary"] else ""
    return f"serving {d['active'] or 'base model'}{canary}"


@adapters_app.command("approve")
def adapters_approve(adapter_id: str, reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Approve an adapter awaiting approval (it deploys once enough approvers agree)."""
    r = _api(api, key, "POST", f"/v1/promotions/{adapter_id}/approve", {"reason": reason})
    typer.echo(f"{adapter_id}: {r['state']}; {_deployed(r)}")


@adapters_app.command("reject")
def adapters_reject(adapter_id: str, reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Reject a gated or awaiting adapter for good."""
    r = _api(api, key, "POST", f"/v1/promotions/{adapter_id}/reject", {"reason": reason})
    typer.echo(f"{adapter_id}: {r['state']}")


@adapters_app.command("promote")
def adapters_promote(reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Make the running canary active for every user now."""
    r = _api(api, key, "POST", "/v1/promotions/promote", {"reason": reason})
    typer.echo(f"{r['adapter_id']}: active; {_deployed(r)}")


@adapters_app.command("rollback")
def adapters_rollback(reason: Reason, key: ApiKeyOpt = "", api: ApiUrl = None) -> None:
    """Undo the newest deployment: withdraw the canary, or restore the adapter the active one replaced."""
    r = _api(api, key, "POST", "/v1/promotions/rollback", {"reason": reason})
    typer.echo(f"rolled back {r['rolled_back']} ({r['role']}); {_deployed(r)}")


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Loopback port to listen on (0 picks a free one).")] = 9092,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu, memory storage) in the foreground until Ctrl-C."""
    from rlhf_loop.bus.broker import run_foreground

    raise typer.Exit(run_foreground(port))


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision; 'head' for the newest.")] = "head",
    down: Annotated[bool, typer.Option(help="Downgrade to REVISION instead ('base' drops everything).")] = False,
) -> None:
    """Apply the Alembic migrations to the configured database."""
    from rlhf_loop.db import downgrade, upgrade

    url = _settings().database.url
    (downgrade if down else upgrade)(url, revision)
    typer.echo(f"database {'downgraded' if down else 'upgraded'} to {revision}")


@app.command("export-schemas")
def export_schemas(
    check: Annotated[bool, typer.Option(help="Only check that the checked-in files are current.")] = False,
) -> None:
    """Write the JSON Schema files of the event models to schemas/jsonschema/."""
    from rlhf_loop.schema_export import stale_files, write_all

    if check:
        stale = stale_files()
        if stale:
            raise click.ClickException(f"stale JSON Schema files: {', '.join(stale)}; run rlhf-loop export-schemas")
        typer.echo("JSON Schema files are current")
        return
    for path in write_all():
        typer.echo(f"wrote {path}")


@spool_app.command("status")
def spool_status() -> None:
    """Print how many events wait in the spool, per topic."""
    from rlhf_loop.bus.spool import Spool

    with Spool(_settings().spool.path) as spool:
        counts = spool.depth_by_topic()
    for topic, n in sorted(counts.items()):
        typer.echo(f"{topic}\t{n}")
    typer.echo(f"total\t{sum(counts.values())}")


@spool_app.command("drain")
def spool_drain(
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 60.0,
) -> None:
    """Produce every spooled event to the broker, oldest first, then exit."""
    from rlhf_loop.bus.drain import drain_spool

    try:
        left = drain_spool(_settings(), timeout_s=timeout)
    except ValueError as e:
        raise click.ClickException(str(e)) from e
    if left:
        raise click.ClickException(f"{left} event(s) still spooled after {timeout:.0f} s")
    typer.echo("spool is empty")


@app.command()
def config(
    markdown: Annotated[bool, typer.Option(help="Print the configuration table as Markdown.")] = False,
) -> None:
    """Show every setting with its environment variable, default and meaning."""
    from rlhf_loop.settings_doc import rows, to_markdown

    if markdown:
        typer.echo(to_markdown())
        return
    for env, default, doc in rows():
        typer.echo(f"{env}={default}\t# {doc}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    try:
        result = app(args=argv, standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        return 130
    return result if isinstance(result, int) else 0
