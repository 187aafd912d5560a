"""Contracts only, no I/O: pydantic and SQLAlchemy, nothing else.

- ``events``: the Kafka events, topic names, prompt normalization and hash
- ``http``: request and response bodies of the API
- ``tables``: the SQL tables; ``migrations/``: Alembic; ``jsonschema/``: generated, checked in
"""
