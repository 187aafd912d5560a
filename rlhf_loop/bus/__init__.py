"""The event bus: moves bytes and events, never knows about pairs or tables.

- ``codec``: event <-> bytes, known schema versions, ``InvalidEvent``
- ``client``: the librdkafka produce client of the API
- ``producer``: asynchronous produce with acks=all and the durable spool behind it
- ``spool``, ``replayer``, ``drain``: the SQLite spool, its in-order replay, ``rlhf-loop spool drain``
- ``consumer``: the batch consumer (poll, decode, handle, commit last; dead letters, backpressure)
- ``admin``: topic creation; ``broker``: the embedded Tansu broker for dev and tests
"""
