"""Every HTTP route, one module per area.

- ``generate``: POST /v1/generate; ``feedback``: POST /v1/feedback and /v1/feedback/batch
- ``health``: /healthz, /readyz, /metrics
- ``promotions``: /v1/adapters and /v1/promotions (approver keys)
- ``approval_page``: the server-rendered approval page under /ui
"""
