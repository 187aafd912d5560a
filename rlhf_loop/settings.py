"""One Settings object for every process, read from ``RLHF_*`` environment variables.

Nested groups use ``__``: ``RLHF_KAFKA__BOOTSTRAP_SERVERS=kafka:9092``. The embedded defaults need no
environment at all: SQLite and artifacts under ``./var``, the embedded broker, the demo model.
Call :func:`get_settings` only in ``cli.py`` and in factories; everything else receives the
sub-settings group it uses.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEMO_TOKEN_SECRET = "demo-secret-change-me"


class _Group(BaseModel):
    """A settings group: field docstrings become descriptions (the README table is built from them)."""

    model_config = ConfigDict(use_attribute_docstrings=True, extra="forbid")


class KafkaSettings(_Group):
    """Kafka producer and consumer knobs."""

    bootstrap_servers: str = ""
    """Comma-separated host:port list; empty starts the embedded Kafka-protocol broker."""
    client_id: str = "rlhf-loop"
    """Client id sent to the broker (shows up in broker logs and quotas)."""
    linger_ms: int = Field(2, ge=0, le=1000)
    """How long the producer waits to fill a batch. A 202 waits for the broker's acknowledgement, so this
    is added to every rating's latency; batches still grow while a request is in flight (one at a time)."""
    batch_size: int = Field(262_144, ge=1024)
    """Producer batch size in bytes per partition."""
    send_timeout_s: float = Field(5.0, gt=0, le=120)
    """Bound on one produce (metadata wait + delivery); on expiry the event goes to the spool."""
    consumer_group: str = "rlhf-aggregator"
    """Consumer group of the aggregator instances."""
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    """Consumer max.poll.interval.ms; also the rebalance timeout (keep ~5 s against Tansu)."""
    session_timeout_ms: int = Field(10_000, ge=1000)
    """Consumer session timeout."""
    max_poll_records: int = Field(10_000, ge=1)
    """Most records one poll returns; one poll is one DB transaction in the consumers."""
    partitions: int = Field(6, ge=1)
    """Partitions per topic when this service creates its topics."""
    dead_letter_limit: int = Field(1000, ge=1)
    """Consecutive dead letters after which a consumer stops instead of dead-lettering everything."""
    topic_prefix: str = Field("", pattern=r"^[A-Za-z0-9._-]*$")
    """Prefix of every topic name, for environments sharing one cluster (tests use a fresh one each)."""
    create_topics: bool = True
    """The API creates missing topics (with the two settings below); off, topics are created by the operator
    and the replication checks below do not apply."""
    replication_factor: int = Field(1, ge=1)
    """Replicas of each topic this service creates; 1 is refused outside env demo (acks=all needs replicas)."""
    min_insync_replicas: int = Field(1, ge=1)
    """min.insync.replicas of the topics this service creates: replicas that must have an event before it is
    acknowledged; at most replication_factor, at least 2 outside env demo."""


class SpoolSettings(_Group):
    """Durable local spool for events the broker could not take."""

    path: Path = Path("var/spool.sqlite3")
    """SQLite (WAL) file holding spooled events until they are produced."""
    replay_interval_s: float = Field(1.0, gt=0)
    """How often the replayer retries the broker while the spool is not empty."""
    replay_batch: int = Field(500, ge=1)
    """Events the replayer produces per round, oldest first."""
    synchronous: Literal["NORMAL", "FULL"] = "FULL"
    """SQLite sync mode: NORMAL survives a process crash; FULL also a power loss (an fsync per append; one
    append holds every event of an event-loop turn, so concurrent requests share the fsync)."""


class DatabaseSettings(_Group):
    """SQL storage (SQLite embedded, PostgreSQL in production)."""

    url: str = "sqlite:///var/rlhf.sqlite3"
    """SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db."""
    echo: bool = False
    """Log every SQL statement."""
    pool_size: int = Field(5, ge=1)
    """Connection pool size (ignored for SQLite)."""


class RedisSettings(_Group):
    """Redis: rate limits, hot state, pub/sub, Celery broker."""

    url: str = "redis://127.0.0.1:6379/0"
    """Redis URL."""
    connect_timeout_s: float = Field(1.0, gt=0)
    """How long the aggregator waits to connect to Redis before it goes on without its hot state."""
    socket_timeout_s: float = Field(1.0, gt=0)
    """How long the aggregator waits for one Redis reply before it goes on without its hot state."""


class TokenSettings(_Group):
    """Signed feedback tokens (HMAC-SHA256 with a key id for rotation)."""

    secret: str = DEMO_TOKEN_SECRET
    """Current signing secret; the default is refused outside env=demo."""
    key_id: str = "k1"
    """Id of the current key, carried in every token."""
    previous: dict[str, str] = {}
    """Older key id -> secret, still accepted for verification during rotation."""
    ttl_s: int = Field(7 * 24 * 3600, ge=60)
    """How long a feedback token stays valid."""


class ModelSettings(_Group):
    """The served base model."""

    base_model: str = ""
    """Hugging Face causal-LM path; empty uses the demo model (built on first use)."""
    demo_dir: Path = Path("var/models/demo")
    """Where the demo model kit writes and caches the demo model."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device for generation and training; auto picks CUDA when present."""


class PairSettings(_Group):
    """How ratings become preference pairs (the aggregator)."""

    max_votes_per_rater: int = Field(5, ge=1)
    """Ratings of one user that count within one prompt group (abuse cap)."""
    max_pairs_per_group: int = Field(50, ge=1)
    """Pairs kept per prompt group, heaviest first."""
    margin_cap: int = Field(3, ge=1)
    """Vote margin at which a pair reaches full weight 1.0."""
    window_s: int = Field(900, ge=60)
    """Sliding window of the negative-feedback-rate gauge."""
    max_votes_per_group: int = Field(2000, ge=1)
    """Ratings of one prompt group that count: its earliest (bounds one group's re-derivation per batch)."""
    hot_state_retry_s: float = Field(5.0, gt=0)
    """After a Redis error the aggregator works on SQL alone this long before it tries Redis again."""


class ApiSettings(_Group):
    """The inference API server."""

    host: str = "127.0.0.1"
    """Interface `rlhf-loop serve` binds to."""
    port: int = Field(8000, ge=0, le=65535)
    """Port `rlhf-loop serve` listens on."""
    workers: int = Field(1, ge=1)
    """Uvicorn worker processes (each loads its own model copy)."""
    access_log: bool = False
    """Log every request line (it costs peak throughput; the metrics cover the same ground)."""
    max_body_bytes: int = Field(1_048_576, ge=1024)
    """Largest request body accepted; larger ones get 413."""
    rate_limit: int = Field(120, ge=1)
    """Requests per user per window, per route group (generate, feedback)."""
    rate_limit_window_s: int = Field(60, ge=1)
    """Length of the rate-limit window."""
    key_cache_ttl_s: float = Field(30.0, ge=0)
    """How long a checked API key is trusted before it is looked up again (revocation delay when the revocation
    notice on Redis is missed)."""
    key_cache_size: int = Field(10_000, ge=1)
    """Valid API keys kept in the in-memory LRU; unknown keys never enter it, so they cannot evict valid ones."""
    auth_failure_limit: int = Field(20, ge=1)
    """Failed key checks one client address may cause per ``auth_failure_window_s``; past it the API answers 429
    without looking the key up."""
    auth_failure_window_s: int = Field(60, ge=1)
    """Window of ``auth_failure_limit``."""
    key_user_quota: int = Field(10_000, ge=1)
    """Distinct end users (``user_ref``) one app may act for per ``key_user_quota_window_s``; a new user past it
    is refused with 429 (one app key cannot invent unlimited raters)."""
    key_user_quota_window_s: int = Field(3600, ge=1)
    """Window of ``key_user_quota``."""
    trusted_proxy: bool = False
    """Honour X-Forwarded-Proto and X-Forwarded-For (set it only behind a proxy that overwrites them)."""
    ui_session_ttl_s: int = Field(8 * 3600, ge=60)
    """How long an approval-page sign-in lasts (the session lives in Redis; the cookie holds only its id)."""
    liveness_stall_s: float = Field(60.0, gt=0)
    """/healthz fails when a background loop (spool replayer, delivery poller) made no progress for this long
    while it had work; keep it above a few kafka.send_timeout_s (one replay round can take that long)."""


class RuntimeSettings(_Group):
    """The in-process engine inside the API (threads, batching)."""

    max_batch_size: int = Field(16, ge=1, le=256)
    """Most /generate requests run together in one micro-batch."""
    max_wait_ms: float = Field(10.0, ge=0, le=1000)
    """How long a micro-batch waits for more requests after its first one."""
    torch_threads: int = Field(0, ge=0)
    """torch intra-op threads for generation; 0 keeps torch's default."""
    adapter_slots: int = Field(4, ge=2)
    """Adapters kept loaded at once (active, canary and recent ones for rollback)."""
    max_queued: int = Field(256, ge=1)
    """Generation requests the micro-batcher may hold waiting; past it /v1/generate answers 503 with Retry-After."""


class ServingSettings(_Group):
    """Which engine generates behind the API: in process, or vLLM replicas over HTTP (docs/serving.md)."""

    engine: Literal["inprocess", "vllm"] = "inprocess"
    """inprocess: transformers + PEFT inside each API process (the embedded default); vllm: forward to the vLLM
    replicas below, which get every approved adapter loaded at runtime (the API process then loads no model)."""
    vllm_urls: str = ""
    """Comma-separated base URLs of the vLLM OpenAI-compatible servers, e.g. http://vllm-0:8000,http://vllm-1:8000;
    each must run with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True and see the artifacts at the same
    paths as the registry records them (the adapter volume, mounted read-only)."""
    vllm_timeout_s: float = Field(60.0, gt=0)
    """Bound on one completion request to a replica; on expiry or a connection error the next replica serving the
    adapter is tried."""
    vllm_load_timeout_s: float = Field(120.0, gt=0)
    """Bound on one replica's load_lora_adapter call during a deployment."""
    vllm_unload_grace_s: float = Field(60.0, ge=0)
    """A retired adapter is unloaded from the replicas this long after requests stopped being routed to it (those
    routed to it just before the swap still complete)."""

    @property
    def replica_urls(self) -> list[str]:
        return [u.strip().rstrip("/") for u in self.vllm_urls.split(",") if u.strip()]


class TrainingSettings(_Group):
    """Retraining: Celery workers on the gpu queue, the automatic trigger, hyperparameter overrides."""

    min_new_examples: int = Field(200, ge=1, validation_alias=AliasChoices("min_new_examples", "min_new_pairs"))
    """A retrain starts by itself once this many training examples (preference pairs plus ratings) are newer than
    the last dataset snapshot. The former name RLHF_TRAINING__MIN_NEW_PAIRS is still read."""
    check_interval_s: float = Field(60.0, gt=0)
    """How often Celery beat checks for enough new training examples."""
    hyperparameters: dict[str, Any] = {}
    """Overrides of the training hyperparameters as nested JSON, e.g. {"ppo": {"episodes": 1024}}."""

    @field_validator("hyperparameters", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        # A nested group's field reaches us from the environment as the raw string.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except json.JSONDecodeError as e:
                raise ValueError(f"not JSON: {e}") from e
        return value

    lease_s: float = Field(120.0, ge=1)
    """A running run whose worker has not reported for this long is taken over by a redelivered task."""
    visibility_timeout_s: int = Field(21_600, ge=10)
    """Redis broker: a task held by a worker that vanished whole is redelivered after this long."""
    requeue_after_s: float = Field(600.0, gt=0)
    """Beat sends a run's task again when the run is still queued this long after its last send (a lost message),
    or is running with a stale lease (its worker vanished whole)."""
    max_attempts: int = Field(3, ge=1)
    """A run whose workers died this many times is failed instead of resumed again."""
    transient_retries: int = Field(5, ge=0)
    """Retries of a run after a transient error (the database unreachable); then the run fails."""
    metrics_port: int = Field(9101, ge=0, le=65535)
    """Port of the worker's /metrics endpoint (0: none)."""


class PromotionSettings(_Group):
    """Gate thresholds, approval, canary rollout and automatic rollback."""

    min_win_rate: float = Field(0.5, ge=0, le=1)
    """Gate: the candidate's responses must outscore the active adapter's on more than this share of held-out
    prompts, by the candidate's and by the incumbent's reward model: the lower end of each confidence interval
    must reach it."""
    gate_confidence: float = Field(0.9, gt=0, lt=1)
    """Gate: two-sided confidence of the win-rate intervals (0.9: the lower end is a one-sided 95% bound)."""
    max_kl_nats: float = Field(5.0, gt=0)
    """Gate: largest mean sequence KL of the candidate's responses from the base model. Sits a nat above the
    training KL budget (``ppo.kl_budget``, 4 by default), which PPO undoes updates to stay within: the gate's
    prompts and samples differ from the last rollouts', and a candidate past it spent more than its run was
    allowed."""
    max_kl_vs_active_nats: float = Field(5.0, gt=0)
    """Gate: largest mean sequence KL of the candidate's responses from the active adapter (the step this
    deployment takes)."""
    min_thumbs_auc: float = Field(0.6, ge=0, le=1)
    """Gate: floor for the candidate reward model's held-out thumbs ROC-AUC, when its training run measured one."""
    accuracy_tolerance: float = Field(0.05, ge=0, le=1)
    """Gate: held-out pair accuracy may be at most this much below the active adapter's reward model's."""
    min_heldout_accuracy: float = Field(0.6, ge=0, le=1)
    """Gate: floor for the candidate reward model's held-out pair accuracy."""
    golden_path: Path | None = None
    """Golden-prompt suite (JSON lines: prompt, must, must_not regexes); empty: the one shipped with rlhf-loop."""
    max_golden_regressions: int = Field(0, ge=0)
    """Gate: golden cases by which the candidate may be worse than the active adapter, summed over the failure
    modes (named patterns) its sign test finds worse."""
    golden_alpha: float = Field(0.2, gt=0, le=1)
    """Gate: a golden failure mode is worse when the one-sided sign test of the cases the candidate lost against
    those it won has p below this (lenient toward failing; 1 fails any mode that lost a case)."""
    max_repetition: float = Field(0.5, ge=0, le=1)
    """Gate: largest mean share of repeated word 3-grams in the candidate's responses."""
    max_empty_share: float = Field(0.1, ge=0, le=1)
    """Gate: largest share of empty responses."""
    max_length_ratio: float = Field(2.5, gt=1)
    """Gate: largest mean response length relative to the active adapter's."""
    gate_prompts: int = Field(128, ge=8)
    """Prompts the gate samples both adapters on: the snapshot's held-out prompts, then the most recent logged
    prompts no training step saw (held out by the run's split, or logged after its snapshot)."""
    required_approvals: int = Field(1, ge=1, le=2)
    """Approvals by approvers of different owners needed before a candidate deploys; 2 when env is prod and it is
    not set."""
    auto_approve: bool = False
    """Approve every candidate that passes the gate without a person (the demo; refused when env is prod)."""
    canary_share: float = Field(0.1, ge=0, le=1)
    """Share of users (by a hash of user_ref salted per deployment) routed to a newly approved adapter; 0 deploys it
    at once."""
    canary_min_samples: int = Field(200, ge=10)
    """Ratings each arm needs before the canary can be judged (the sequential test's normal approximation)."""
    canary_min_users: int = Field(50, ge=2)
    """Distinct raters each arm needs before the canary can be judged (users are the test's units)."""
    canary_alpha: float = Field(0.01, gt=0, lt=0.5)
    """Error rate of each sequential canary test, however often it is checked: the chance that a canary no worse
    than the active adapter is ever rolled back, and that one worse by ``canary_margin`` or more is promoted."""
    canary_margin: float = Field(0.02, gt=0, lt=1)
    """Non-inferiority margin: a canary is promoted once its thumbs-down rate is shown to be less than this much
    above the active adapter's (an absolute difference of rates)."""
    canary_mixture_sd: float = Field(0.05, gt=0, lt=1)
    """Spread of the rate differences the sequential tests weigh (the sd of their normal mixture): differences near
    it are decided soonest; any value keeps the error rate."""
    canary_check_interval_s: float = Field(30.0, gt=0)
    """How often Celery beat judges the canary."""
    poll_interval_s: float = Field(5.0, gt=0)
    """API replicas re-read the deployment pointers this often (fallback for a missed Redis message)."""


class SimulatorSettings(_Group):
    """Synthetic prompts and simulated users."""

    seed: int = 7
    """Seed for prompts, users and rating noise."""
    n_prompts: int = Field(300, ge=1)
    """Distinct prompts in the catalogue (Zipf head + long tail)."""
    n_users: int = Field(200, ge=1)
    """Simulated users."""
    noise: float = Field(0.1, ge=0, le=0.5)
    """Probability that a simulated user flips their rating."""
    traffic: Literal["realistic", "catalogue"] = "realistic"
    """realistic: fresh prompts, a third of users rate, regenerations and side-by-side choices;
    catalogue: popular prompts repeated verbatim, every user rates."""
    rating_share: float = Field(0.33, ge=0, le=1)
    """Share of users who rate at all (realistic traffic)."""
    regenerate_share: float = Field(0.5, ge=0, le=1)
    """Share of rated-down answers whose user regenerates them and rates the new one (realistic traffic)."""
    side_by_side_share: float = Field(0.15, ge=0, le=1)
    """Share of requests shown as two candidates side by side, the user picking one (realistic traffic)."""
    context_share: float = Field(0.2, ge=0, le=1)
    """Share of requests that follow up on an earlier turn, sent as context (realistic traffic)."""


class MonitoringSettings(_Group):
    """Drift checks (Celery beat, never in the request path) and the aggregator's /metrics endpoint."""

    drift_interval_s: float = Field(300.0, gt=0)
    """How often Celery beat computes drift (prompts, negative feedback; reward score and KL on the gpu queue)."""
    drift_window_s: int = Field(3600, ge=60)
    """Live traffic window the drift checks compare with their reference."""
    drift_min_prompts: int = Field(50, ge=1)
    """Fewest live prompts for a prompt-drift PSI; with fewer the gauge reads NaN."""
    drift_max_prompts: int = Field(5000, ge=1)
    """Most recent live prompts one prompt-drift check reads."""
    drift_token_buckets: int = Field(64, ge=2, le=4096)
    """Hash buckets of the token-frequency feature of prompt drift."""
    drift_sample: int = Field(64, ge=1)
    """Live responses of the active adapter scored for reward-score drift and policy KL (model forward passes)."""
    baseline_window_s: int = Field(7 * 24 * 3600, ge=60)
    """Negative-feedback baseline of an adapter: its ratings in this span before the drift window."""
    aggregator_metrics_port: int = Field(0, ge=0, le=65535)
    """Port of the aggregator's /metrics endpoint; 0: none (the deployments set 9102; replicas on one host need
    a port each)."""


class Settings(BaseSettings):
    """All settings. Build one with ``Settings(...)`` in tests, never by editing os.environ."""

    model_config = SettingsConfigDict(
        env_prefix="RLHF_", env_nested_delimiter="__", extra="forbid", use_attribute_docstrings=True
    )

    env: Literal["demo", "dev", "prod"] = "demo"
    """Deployment kind. demo (the default, so the quick start needs no environment) allows the demo secret, the
    embedded broker, SQLite, a local Redis and auto-approval; dev and prod refuse each of them at start-up, and prod
    needs 2 approvers unless set. Every deploy config sets it explicitly (a test checks)."""
    data_dir: Path = Path("var")
    """Root for local state: SQLite, spool, artifacts, models, reports."""
    artifacts_dir: Path = Path("var/artifacts")
    """Where adapters and reward models are stored (atomic writes, sha256 recorded)."""
    kafka: KafkaSettings = KafkaSettings()
    spool: SpoolSettings = SpoolSettings()
    database: DatabaseSettings = DatabaseSettings()
    redis: RedisSettings = RedisSettings()
    token: TokenSettings = TokenSettings()
    model: ModelSettings = ModelSettings()
    pairs: PairSettings = PairSettings()
    api: ApiSettings = ApiSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    serving: ServingSettings = ServingSettings()
    training: TrainingSettings = TrainingSettings()
    promotion: PromotionSettings = PromotionSettings()
    simulator: SimulatorSettings = SimulatorSettings()
    monitoring: MonitoringSettings = MonitoringSettings()

    @model_validator(mode="after")
    def _refuse_open_settings(self) -> Settings:
        if self.serving.engine == "vllm" and not self.serving.replica_urls:
            raise ValueError("RLHF_SERVING__VLLM_URLS must name at least one vLLM server when the engine is vllm")
        if self.env == "demo":
            return self
        problems = deployment_problems(self)
        if problems:
            raise ValueError(f"refused for RLHF_ENV={self.env}: " + "; ".join(problems))
        if self.env == "prod" and "required_approvals" not in self.promotion.model_fields_set:
            self.promotion = self.promotion.model_copy(update={"required_approvals": 2})
        return self

    @model_validator(mode="after")
    def _refuse_unreplicated_topics(self) -> Settings:
        k = self.kafka
        if not k.create_topics:
            return self
        if k.min_insync_replicas > k.replication_factor:
            raise ValueError("RLHF_KAFKA__MIN_INSYNC_REPLICAS must not exceed RLHF_KAFKA__REPLICATION_FACTOR")
        if self.env != "demo" and k.replication_factor < 2:
            raise ValueError(
                "RLHF_KAFKA__REPLICATION_FACTOR must be at least 2 when RLHF_ENV is not 'demo' "
                "(acks=all with one replica protects nothing)"
            )
        if self.env != "demo" and k.min_insync_replicas < 2:
            raise ValueError("RLHF_KAFKA__MIN_INSYNC_REPLICAS must be at least 2 when RLHF_ENV is not 'demo'")
        return self


MIN_SECRET_CHARS = 32
MIN_SECRET_DISTINCT = 12
PLACEHOLDER_WORDS = ("change", "replace", "example", "placeholder", "secret", "demo", "password", "todo")
LOCAL_HOSTS = ("localhost", "::1", "0.0.0.0", "")


def secret_problem(secret: str) -> str | None:
    """Why ``secret`` is unfit to sign tokens outside the demo (None when it is fit): too short, too few distinct
    characters (a repeated or patterned string), or a placeholder word left in."""
    if len(secret) < MIN_SECRET_CHARS:
        return f"is shorter than {MIN_SECRET_CHARS} characters"
    if len(set(secret)) < MIN_SECRET_DISTINCT:
        return f"has fewer than {MIN_SECRET_DISTINCT} distinct characters"
    word = next((w for w in PLACEHOLDER_WORDS if w in secret.lower()), None)
    return f"contains the placeholder word {word!r}" if word else None


def deployment_problems(s: Settings) -> list[str]:
    """Every setting that would make a dev or prod deployment fail open, each naming its variable."""
    problems = []
    for name, secret in [("RLHF_TOKEN__SECRET", s.token.secret)] + [
        (f"RLHF_TOKEN__PREVIOUS[{kid}]", v) for kid, v in s.token.previous.items()
    ]:
        why = secret_problem(secret)
        if why:
            problems.append(f"{name} {why} (use e.g. `openssl rand -base64 32`)")
    if not s.kafka.bootstrap_servers.strip():
        problems.append("RLHF_KAFKA__BOOTSTRAP_SERVERS is empty (the embedded broker keeps events in memory only)")
    if s.database.url.startswith("sqlite"):
        problems.append("RLHF_DATABASE__URL is SQLite (one file on one host; use PostgreSQL)")
    host = urlsplit(s.redis.url).hostname or ""
    if host in LOCAL_HOSTS or host.startswith("127."):
        problems.append(f"RLHF_REDIS__URL points at this host ({host or 'a socket'}); replicas need a shared Redis")
    if s.env == "prod" and s.promotion.auto_approve:
        problems.append("RLHF_PROMOTION__AUTO_APPROVE is on: approvals need a person in prod")
    return problems


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
