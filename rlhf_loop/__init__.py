"""The light shared kernel every process imports: settings, database, the event bus, artifacts, metrics,
the simulator and the pure preference rules; ``models/`` is its one heavy folder. Only the entry points
(``cli/``, ``demo/``) import ``services`` or ``workers``.

- ``settings``, ``settings_doc``: the one Settings object (``RLHF_*``) and its generated table
- ``db``: engines, sessions, Alembic migrations
- ``bus/``: Kafka producer with its durable spool, consumer, embedded broker
- ``artifacts``: atomic artifact directories with a content hash
- ``metrics``: the catalog of every ``rlhf_*`` Prometheus metric
- ``generation``: what a generation request and its result are (shared by routes and engines)
- ``preferences/``: pure pair rules and the dataset file format (aggregator, training and drift share them)
- ``corpus``, ``simulator``: the synthetic customer-support world and its simulated users
- ``models/`` (HEAVY): model loading, the batched generator, the demo model kit
- ``schema_export``: the checked-in JSON Schema files of the events
- ``cli/``, ``demo/``: entry points
"""
