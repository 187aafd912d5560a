"""The inference API: every HTTP route, the engines behind them, adapter hot-swap.

- ``app``: ``create_app(settings)``, one lifespan; ``wiring``: builds what the lifespan owns
- ``context``, ``deps``: the typed context on ``app.state`` and the Annotated dependency aliases
- ``routes/``: every HTTP route; ``adapter_views``: registry rows as HTTP bodies
- ``engines/`` (HEAVY): the in-process engine (micro-batching, adapter slots)
- ``deployment``: keeps a replica serving what the deployment pointers say
- ``auth``, ``tokens``, ``ratelimit``, ``body_limit``: keys, signed feedback tokens, limits
- ``errors``: the error vocabulary mapped to HTTP status in one place
"""
