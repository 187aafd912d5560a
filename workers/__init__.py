"""The offline workers; none imports another.

- ``aggregator/``: Kafka -> SQL rows -> preference pairs
- ``training/``: Celery: retrains, gates, canary watch, drift checks on beat
- ``monitoring/``: the light drift checks that the training worker's beat runs
"""
