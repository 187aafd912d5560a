"""The catalog of every ``rlhf_*`` Prometheus metric, in one file (the dashboard test reads it).

Each metric names the module that updates it. Labels are bounded: routes, topics, ratings,
adapter ids from the registry; never user or request ids. For several API worker processes, set
``PROMETHEUS_MULTIPROC_DIR`` before start: :func:`exposition` then aggregates them with a
fresh registry per scrape.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from schemas.events import Topics

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

# --- inference API (services/inference) --------------------------------------------------------
REQUEST_DURATION = Histogram(
    "rlhf_request_duration_seconds",
    "HTTP request latency by route.",
    ["route", "method"],
    buckets=LATENCY_BUCKETS,
)  # services/inference/app.py (middleware)
REQUESTS = Counter(
    "rlhf_requests_total", "HTTP requests by route and status code class.", ["route", "status"]
)  # services/inference/app.py (middleware)
GENERATION_BATCH_SIZE = Histogram(
    "rlhf_generation_batch_size", "Prompts per generation micro-batch.", buckets=BATCH_BUCKETS
)  # services/inference/engines/batching.py
GENERATION_SHED = Counter(
    "rlhf_generation_shed_total", "Generation requests refused with 503 because the micro-batcher's queue was full."
)  # services/inference/engines/batching.py
GENERATED_TOKENS = Counter(
    "rlhf_generated_tokens_total", "Completion tokens generated.", ["adapter"]
)  # services/inference/engines/batching.py
RATELIMIT_ERRORS = Counter(
    "rlhf_ratelimit_errors_total", "Rate-limit checks that failed open because Redis was unreachable."
)  # services/inference/ratelimit.py
FEEDBACK_EVENTS = Counter(
    "rlhf_feedback_events_total", "Feedback events accepted by the API.", ["rating", "adapter"]
)  # services/inference/routes/feedback.py

VLLM_REQUESTS = Counter(
    "rlhf_vllm_requests_total",
    "Completion requests sent to a vLLM replica, by outcome (ok, error).",
    ["replica", "outcome"],
)  # services/inference/engines/vllm.py
VLLM_ADAPTER_REQUESTS = Counter(
    "rlhf_vllm_adapter_requests_total", "Completions a vLLM replica served, by adapter.", ["replica", "adapter"]
)  # services/inference/engines/vllm.py
VLLM_ADAPTER_LOADS = Counter(
    "rlhf_vllm_adapter_loads_total",
    "load_lora_adapter calls to a vLLM replica by result (ok, refused by the replica, error: unreachable).",
    ["replica", "result"],
)  # services/inference/engines/vllm_adapters.py
VLLM_REPLICA_UP = Gauge(
    "rlhf_vllm_replica_up",
    "1 when this API process reached the vLLM replica on its last call.",
    ["replica"],
    multiprocess_mode="min",
)  # services/inference/engines/vllm_adapters.py
VLLM_REPLICA_MISSING_ADAPTERS = Gauge(
    "rlhf_vllm_replica_missing_adapters",
    "Served adapters (active, canary) the vLLM replica has not loaded: it gets no requests for them.",
    ["replica"],
    multiprocess_mode="max",
)  # services/inference/engines/vllm_adapters.py

# --- event bus (rlhf_loop/bus) -----------------------------------------------------------------
PRODUCE_ATTEMPTS = Counter(
    "rlhf_produce_attempts_total", "Events handed to the Kafka producer.", ["topic"]
)  # rlhf_loop/bus/producer.py
PRODUCE_ERRORS = Counter(
    "rlhf_produce_errors_total", "Events the broker did not acknowledge (then spooled).", ["topic"]
)  # rlhf_loop/bus/producer.py
SPOOLED_EVENTS = Counter(
    "rlhf_spooled_events_total", "Events written to the durable spool.", ["topic"]
)  # rlhf_loop/bus/producer.py
REPLAYED_EVENTS = Counter(
    "rlhf_spool_replayed_events_total", "Spooled events produced after the broker came back.", ["topic"]
)  # rlhf_loop/bus/replayer.py
SPOOL_DEPTH = Gauge(
    "rlhf_spool_depth_events", "Events waiting in the durable spool.", multiprocess_mode="max"
)  # rlhf_loop/bus/replayer.py
THREAD_RESTARTS = Counter(
    "rlhf_thread_restarts_total",
    "Background loops restarted after an exception (spool-replayer, kafka-delivery).",
    ["thread"],
)  # rlhf_loop/bus/supervised.py
CONSUMED_EVENTS = Counter(
    "rlhf_consumed_events_total", "Events consumed and committed.", ["topic"]
)  # rlhf_loop/bus/consumer.py
CONSUMER_LAG = Gauge(
    "rlhf_consumer_lag_messages",
    "Messages behind the partition's high watermark after the last batch.",
    ["topic", "partition"],
    multiprocess_mode="max",
)  # rlhf_loop/bus/consumer.py (Tansu's high watermark can be wrong: a dev-broker caveat)
DEAD_LETTERS = Counter(
    "rlhf_dead_letters_total", "Messages sent to the dead-letter topic.", ["topic"]
)  # rlhf_loop/bus/consumer.py

# --- aggregator (workers/aggregator) -----------------------------------------------------------
AGGREGATED_EVENTS = Counter(
    "rlhf_aggregated_events_total", "Events stored by the aggregator (duplicates included).", ["kind"]
)  # workers/aggregator/handler.py
PAIRS_BUILT = Counter("rlhf_pairs_built_total", "Preference pairs created.")  # workers/aggregator/handler.py
AGGREGATE_BATCH_SECONDS = Histogram(
    "rlhf_aggregate_batch_duration_seconds",
    "Time to store one consumed batch and re-derive its pairs.",
    buckets=LATENCY_BUCKETS,
)  # workers/aggregator/handler.py
FEEDBACK_AWAITING_RESPONSE = Gauge(
    "rlhf_feedback_awaiting_response", "Stored ratings whose response has not arrived yet.", multiprocess_mode="max"
)  # workers/aggregator/handler.py
ORPHAN_FEEDBACK_DROPPED = Counter(
    "rlhf_orphan_feedback_dropped_total", "Ratings dropped after waiting too long for their response."
)  # workers/aggregator/handler.py
AGGREGATOR_REDIS_ERRORS = Counter(
    "rlhf_aggregator_redis_errors_total",
    "Redis calls of the aggregator's hot state that failed or timed out (it kept going on SQL alone).",
)  # workers/aggregator/hot_state.py
NEGATIVE_FEEDBACK_RATE = Gauge(
    "rlhf_negative_feedback_rate",
    "Share of thumbs-down among ratings in the sliding window, per adapter.",
    ["adapter"],
    multiprocess_mode="mostrecent",
)  # workers/aggregator/hot_state.py

# --- training (workers/training) -------------------------------------------------------------
TRAINING_RUN_ATTEMPTS = Counter(
    "rlhf_training_run_attempts_total", "Times a worker started or resumed a training run."
)  # workers/training/pipeline.py
TRAINING_RUNS = Counter(
    "rlhf_training_runs_total", "Training runs that ended, by outcome.", ["outcome"]
)  # workers/training/pipeline.py
TRAINING_STAGE_SECONDS = Histogram(
    "rlhf_training_stage_duration_seconds",
    "Wall time of one training stage.",
    ["stage"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600),
)  # workers/training/pipeline.py
TRAINING_LAST_SUCCESS = Gauge(
    "rlhf_training_last_success_timestamp_seconds",
    "When each training stage last finished successfully.",
    ["stage"],
    multiprocess_mode="max",
)  # workers/training/pipeline.py
TRAINING_LOSS = Gauge(
    "rlhf_training_loss",
    "Latest training loss by stage (reward: Bradley-Terry on pairs plus logistic on thumbs; ppo: clipped policy loss).",
    ["stage"],
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
PPO_SCORE = Gauge(
    "rlhf_ppo_reward_score",
    "Mean normalized reward-model score of the latest PPO step's rollouts.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
PPO_KL = Gauge(
    "rlhf_ppo_kl_nats",
    "Mean sequence KL of the latest PPO step's rollouts vs the base model.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
TRAINING_TOKENS_PER_SECOND = Gauge(
    "rlhf_training_generation_tokens_per_second",
    "Rollout generation speed of the latest PPO step.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
REWARD_MODEL_ACCURACY = Gauge(
    "rlhf_reward_model_heldout_accuracy_ratio",
    "Held-out pair accuracy of the latest reward model.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
REWARD_MODEL_THUMBS_AUC = Gauge(
    "rlhf_reward_model_heldout_thumbs_auc_ratio",
    "Held-out thumbs ROC-AUC (thumbs up vs down) of the latest reward model; NaN without both kinds held out.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
TRAINING_EXAMPLES = Gauge(
    "rlhf_training_examples",
    "Training examples in the latest dataset snapshot, by kind (pairs; thumbs: rated responses), held-out included.",
    ["kind"],
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
TRAINING_RATINGS_USED = Gauge(
    "rlhf_training_ratings_used_ratio",
    "Share of the stored ratings that reached the latest dataset snapshot; NaN without ratings.",
    multiprocess_mode="mostrecent",
)  # workers/training/pipeline.py
TRAINING_EXAMPLE_KINDS = ("pairs", "thumbs")
# --- promotion (services/promotion) and adapter serving (services/inference) ------------------
PROMOTION_TRANSITIONS = Counter(
    "rlhf_promotion_transitions_total", "Registry state changes of adapters, by the state entered.", ["to_state"]
)  # services/promotion/registry.py
GATE_CHECKS = Counter(
    "rlhf_gate_checks_total", "Gate checks run on candidate adapters, by check and result.", ["check", "result"]
)  # services/promotion/gate.py
ROLLBACKS = Counter(
    "rlhf_rollbacks_total", "Adapter rollbacks, by trigger (auto: canary monitor; manual: approver).", ["trigger"]
)  # services/promotion/registry.py
CANARY_NEGATIVE_RATE = Gauge(
    "rlhf_canary_negative_feedback_rate",
    "Negative-feedback rate since the canary started, canary vs active arm.",
    ["arm"],
    multiprocess_mode="mostrecent",
)  # services/promotion/canary_monitor.py
CANARY_P_VALUE = Gauge(
    "rlhf_canary_p_value",
    "Always-valid p-value (sequential harm test) that the canary's negative-feedback rate is worse than active's.",
    multiprocess_mode="mostrecent",
)  # services/promotion/canary_monitor.py
CANARY_NONINFERIORITY_P_VALUE = Gauge(
    "rlhf_canary_noninferiority_p_value",
    "Always-valid p-value that the canary is worse than active's by the non-inferiority margin or more.",
    multiprocess_mode="mostrecent",
)  # services/promotion/canary_monitor.py
CANARY_DIFFERENCE = Gauge(
    "rlhf_canary_negative_rate_difference",
    "Canary negative-feedback rate minus the active arm's, since the canary started.",
    multiprocess_mode="mostrecent",
)  # services/promotion/canary_monitor.py
CANARY_DECISIONS = Counter(
    "rlhf_canary_decisions_total",
    "Canary monitor looks, by decision (wait, rollback, promote, none).",
    ["decision"],
)  # services/promotion/canary_monitor.py
for _decision in ("wait", "rollback", "promote", "none"):
    CANARY_DECISIONS.labels(_decision)
SERVING_ADAPTER = Gauge(
    "rlhf_serving_adapter_info",
    "1 for the adapter this API process serves in each role (active, canary).",
    ["role", "adapter"],
    multiprocess_mode="max",
)  # services/inference/deployment.py
ADAPTER_SWAPS = Counter(
    "rlhf_adapter_swaps_total", "Deployment changes applied by an API process, by result.", ["result"]
)  # services/inference/deployment.py
DEPLOYMENT_APPLIED = Gauge(
    "rlhf_deployment_applied",
    "1 while this API process serves what the deployment pointers name, 0 while it could not attach them.",
    multiprocess_mode="min",
)  # services/inference/deployment.py
CANARY_SHARE = Gauge(
    "rlhf_canary_share_ratio",
    "Share of users routed to the canary adapter by this API process.",
    multiprocess_mode="max",
)  # services/inference/deployment.py
TRAINING_LEASES_LOST = Counter(
    "rlhf_training_leases_lost_total",
    "Times a worker found its training run taken over by another (a newer fencing token) and stopped writing.",
)  # workers/training/lease.py
TRAINING_RUNS_REQUEUED = Counter(
    "rlhf_training_runs_requeued_total",
    "Training run tasks sent again by beat, by why (queued: message lost; stale_lease: the worker vanished).",
    ["reason"],
)  # workers/training/tasks.py
TRAINING_TRANSIENT_RETRIES = Counter(
    "rlhf_training_transient_retries_total",
    "Training run tasks retried after a transient error (the database unreachable); the runs tried are"
    " rlhf_training_run_attempts_total.",
)  # workers/training/tasks.py
ADAPTER_VERIFICATIONS = Counter(
    "rlhf_adapter_verifications_total",
    "Adapter artifacts checked (content hash, safetensors only) before use, by who uses them.",
    ["consumer"],
)  # rlhf_loop/artifacts.py
ADAPTER_VERIFICATION_FAILURES = Counter(
    "rlhf_adapter_verification_failures_total",
    "Adapter artifacts refused before use, by who refused them and why (hash_mismatch, unsafe_format, missing).",
    ["consumer", "reason"],
)  # rlhf_loop/artifacts.py
ADAPTER_CONSUMERS = ("serving", "training", "gate")
ADAPTER_REFUSALS = ("hash_mismatch", "unsafe_format", "missing")
for _consumer in ADAPTER_CONSUMERS:
    ADAPTER_VERIFICATIONS.labels(_consumer)
    for _reason in ADAPTER_REFUSALS:
        ADAPTER_VERIFICATION_FAILURES.labels(_consumer, _reason)
for _reason in ("queued", "stale_lease"):
    TRAINING_RUNS_REQUEUED.labels(_reason)
TRAINING_STAGES = ("snapshot", "reward", "ppo", "evaluate", "register")
for _stage in TRAINING_STAGES:
    TRAINING_STAGE_SECONDS.labels(_stage)
for _outcome in ("succeeded", "failed"):
    TRAINING_RUNS.labels(_outcome)
for _kind in TRAINING_EXAMPLE_KINDS:
    TRAINING_EXAMPLES.labels(_kind)
for _trigger in ("auto", "manual"):
    ROLLBACKS.labels(_trigger)
for _result in ("ok", "failed"):
    ADAPTER_SWAPS.labels(_result)

_PER_TOPIC = (PRODUCE_ATTEMPTS, PRODUCE_ERRORS, SPOOLED_EVENTS, REPLAYED_EVENTS, CONSUMED_EVENTS, DEAD_LETTERS)
for _kind in ("response", "feedback", "choice"):  # pre-create known label values
    AGGREGATED_EVENTS.labels(_kind)
for _topic in (Topics.RESPONSES, Topics.FEEDBACK, Topics.CHOICES):  # pre-create known label values
    for _metric in _PER_TOPIC:
        _metric.labels(_topic)


# --- drift (workers/monitoring/drift.py: prompts, feedback; workers/training/model/drift_scoring.py: model) ------
DRIFT_PROMPT_PSI = Gauge(
    "rlhf_drift_prompt_psi",
    "PSI of live prompts vs the active adapter's training prompts, by feature "
    "(length: word-count buckets; tokens: hashed word frequencies). NaN with too few live prompts.",
    ["feature"],
    multiprocess_mode="mostrecent",
)  # workers/monitoring/drift.py
DRIFT_NEGATIVE_RATE = Gauge(
    "rlhf_drift_negative_feedback_rate",
    "Negative-feedback rate of the serving adapters from SQL: the drift window "
    "(recent) vs the span before it (baseline). NaN without ratings.",
    ["role", "window"],
    multiprocess_mode="mostrecent",
)  # workers/monitoring/drift.py
DRIFT_REWARD_SCORE = Gauge(
    "rlhf_drift_reward_score",
    "Mean normalized reward-model score of the active adapter's responses: "
    "a live sample vs its evaluation at promotion.",
    ["source"],
    multiprocess_mode="mostrecent",
)  # workers/training/model/drift_scoring.py
DRIFT_POLICY_KL = Gauge(
    "rlhf_drift_policy_kl_nats",
    "Mean sequence KL of the active adapter from the base model: live responses vs its evaluation at promotion.",
    ["source"],
    multiprocess_mode="mostrecent",
)  # workers/training/model/drift_scoring.py
DRIFT_SAMPLE = Gauge(
    "rlhf_drift_sample_size",
    "Live items the latest drift check used, by check.",
    ["check"],
    multiprocess_mode="mostrecent",
)  # workers/monitoring/drift.py, workers/training/model/drift_scoring.py
DRIFT_CHECKS = Counter(
    "rlhf_drift_checks_total",
    "Drift checks run, by check and outcome (computed, or skipped: no reference).",
    ["check", "outcome"],
)  # workers/monitoring/drift.py, workers/training/model/drift_scoring.py
DRIFT_LAST_SUCCESS = Gauge(
    "rlhf_drift_last_success_timestamp_seconds",
    "When each drift check last computed its gauges.",
    ["check"],
    multiprocess_mode="max",
)  # workers/monitoring/drift.py, workers/training/model/drift_scoring.py
API_KEY_LOOKUPS = Counter(
    "rlhf_api_key_lookups_total", "API keys looked up in SQL (cache misses), by result: found or unknown.", ["result"]
)  # services/inference/auth.py
AUTH_REFUSALS = Counter(
    "rlhf_auth_refusals_total",
    "Requests refused by the key or token check: malformed, unknown, forbidden, throttled, foreign_token.",
    ["reason"],
)  # services/inference/auth.py, services/inference/user_scope.py
USER_QUOTA_REFUSALS = Counter(
    "rlhf_user_quota_refusals_total", "New end users refused because their app's distinct-user quota was spent."
)  # services/inference/user_scope.py
UI_REFUSALS = Counter(
    "rlhf_ui_refusals_total", "Approval-page form posts refused: csrf or origin.", ["reason"]
)  # services/inference/ui_security.py
DRIFT_CHECK_NAMES = ("prompt", "feedback", "model")
for _check in DRIFT_CHECK_NAMES:
    for _outcome in ("computed", "skipped"):
        DRIFT_CHECKS.labels(_check, _outcome)


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric and its content type. In multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR`` set) a fresh registry aggregates all worker processes per scrape."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
