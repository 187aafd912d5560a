"""HEAVY (torch, transformers, peft): models loaded the way a real checkpoint is.

- ``loading``: ``from_pretrained(path)``, devices, a base model with an adapter
- ``generator``: batched generation with a KV cache over one base model and many LoRA adapters
- ``sampling``: the tensor math of batched sampling
- ``demo_kit``: the small GPT-2-style demo model and tokenizer, built deterministically
"""
