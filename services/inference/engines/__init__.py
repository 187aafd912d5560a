"""HEAVY: the engines generation runs on.

- ``inprocess``: builds the in-process engine (transformers + PEFT) inside the lifespan
- ``batching``: micro-batching of concurrent requests on one worker thread
- ``adapters``: LoRA adapter slots: validate on CPU, attach between batches, switch atomically
"""
