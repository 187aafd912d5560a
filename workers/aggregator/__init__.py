"""The aggregator: Kafka responses and ratings -> SQL -> preference pairs, exactly once in effect.

- ``main``: one aggregator process of the consumer group
- ``handler``: the composer: store a batch, re-derive the pairs of the groups it touched
- ``store``: idempotent SQL writes (take a Session, never commit)
- ``group_reads``: the bounded reads of a prompt group's votes and choices
- ``hot_state``: Redis dedup fast path and the negative-feedback-rate window
- ``forget``: forgetting a user and re-deriving what they touched
"""
