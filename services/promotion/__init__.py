"""The promotion domain, imported by the API and the workers; it imports neither.

- ``states``: the adapter state machine
- ``registry``: adapters, approvals, deployment pointers, audit rows (take a Session, never commit)
- ``actions``: each promotion action as one transaction, then a Redis notice to the replicas
- ``gate``: the gate's pure decision over measurements; ``golden_prompts.jsonl``: its regression suite
- ``canary``: the canary's statistics and verdict
"""
