"""The engines generation runs on.

- ``inprocess`` (HEAVY): builds the in-process engine (transformers + PEFT) inside the lifespan
- ``batching``: micro-batching of concurrent requests on one worker thread
- ``adapters``: LoRA adapter slots: validate on CPU, attach between batches, switch atomically
- ``vllm`` (light): the client of vLLM replicas' OpenAI-compatible API, replica choice per adapter
- ``vllm_adapters`` (light): hot-swap on the vLLM replicas (load everywhere, then route; unload retired)
- ``vllm_server`` (light): install and start commands of a development vLLM server
"""
