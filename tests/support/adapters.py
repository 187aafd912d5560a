"""LoRA adapters for promotion tests, made in seconds on the demo model: one taught to answer every
prompt with the same text (a degenerate policy the gate and the simulated users should reject), and
registry rows that put an adapter in a given state."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.orm import Session

from rlhf_loop.artifacts import dir_sha256
from schemas.tables import Adapter, DeploymentPointer, PromotionAudit


def taught_adapter(base_dir: Path, out: Path, answer: str, prompts: list[str], steps: int = 80, seed: int = 0) -> Path:
    """A LoRA adapter (the trainer's shape) fine-tuned so the model answers every prompt with ``answer``."""
    import torch
    from peft import get_peft_model

    from rlhf_loop.models.loading import load_base
    from workers.training.config import PPOConfig
    from workers.training.model.encoding import Encoder
    from workers.training.model.losses import token_logprobs
    from workers.training.model.roles import POLICY, forward, pack
    from workers.training.model.trainer import lora_config

    torch.manual_seed(seed)
    base, tokenizer = load_base(base_dir)
    model = get_peft_model(base, lora_config(PPOConfig().lora, base.config.model_type))
    enc = Encoder(tokenizer, model)
    encoded = [enc.pair(p, answer) for p in prompts]
    packed = pack([e[0] for e in encoded], [e[1] for e in encoded], enc.pad_id, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    model.train()
    for _ in range(steps):
        logprobs = token_logprobs(forward(model, packed, POLICY)[0], packed.tokens)  # (B, R)
        loss = -(logprobs * packed.resp_mask).sum() / packed.resp_mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(out))
    return out


def register(
    session: Session,
    adapter_id: str,
    path: Path,
    state: str = "candidate",
    run_id: str | None = None,
    base_model: str = "demo",
    active: bool = False,
) -> Adapter:
    """An adapter row in ``state`` (with an audit row, as if it got there through the registry)."""
    adapter = Adapter(
        id=adapter_id,
        state=state,
        base_model=base_model,
        path=str(path),
        sha256=dir_sha256(path),
        run_id=run_id,
        metrics={},
        lineage={},
    )
    session.add(adapter)
    session.flush()
    session.add(PromotionAudit(adapter_id=adapter_id, from_state=None, to_state=state, actor="test", reason="setup"))
    if active:
        session.merge(DeploymentPointer(role="active", adapter_id=adapter_id, share=1.0))
    return adapter
