"""Training on Celery. This folder is light (no torch at import); ``model/`` is the heavy code.

- ``celery_app``, ``tasks``, ``worker``: the Celery app, thin idempotent tasks, a worker process
- ``pipeline``: a retrain as the service runs it: run record -> snapshot -> trainer -> registry
- ``snapshot``, ``dataset``: dataset snapshots from SQL and the train/held-out dataset
- ``config``, ``errors``: hyperparameters (frozen dataclasses) and the error vocabulary
- ``runs``, ``progress``: the CLI's run commands and progress bars
"""
