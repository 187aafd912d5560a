"""Preference data rules the aggregator, the training worker and the drift checks share (pure Python).

- ``pairs``: preference pairs from one prompt group's ratings (labels, margins, caps)
- ``dataset``: pairs and prompts as JSON-lines files, the held-out split by prompt group
"""
