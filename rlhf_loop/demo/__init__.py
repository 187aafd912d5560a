"""``rlhf-loop demo``: the whole closed loop on embedded defaults, round after round.

Child processes (logs under the run directory): the embedded Kafka-protocol broker, the inference API
(``rlhf-loop serve``), the aggregator and a Celery worker on the ``gpu`` and ``default`` queues. State is
a fresh SQLite file and artifact directory under ``var/demo/seed-<seed>``. Each round:

1. simulated users ask prompts through the HTTP API (each request with its own sampling seed) and rate
   the answers through /v1/feedback, as an app would forward them;
2. the aggregator turns the ratings into preference pairs in SQL;
3. (not after the last round) a retrain is enqueued: dataset snapshot -> reward model -> PPO; the worker
   then gates the candidate against the active adapter and, with ``promotion.auto_approve`` on (a
   demo-only setting, logged as such), deploys it; the API hot-swaps it.

Simulated ratings depend only on (seed, user, prompt, response), generation only on the request's seed
and the adapter (a round starts once the API process serves the new one), the pairs only on the
ratings and the texts (ties rank by text, not by the random response ids), and the trainer is
deterministic on CPU, so the same seed gives the same table.

Modules: ``config`` (DemoConfig, DemoError), ``processes`` (the child processes and the state they
share), ``traffic`` (simulated users through the HTTP API), ``loop`` (rounds: traffic, aggregation,
retrain, gate, deploy) and ``report`` (the round table, the Markdown report and the plot).
"""
