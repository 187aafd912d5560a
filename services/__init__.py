"""The online services: ``inference/`` (the HTTP API) and ``promotion/`` (the promotion domain)."""
