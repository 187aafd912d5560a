"""``rlhf-loop model``: build the demo model kit, sample from a model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rlhf_loop.cli.options import load_settings

app = typer.Typer(help="The base model: build the demo model kit, sample from a model.", no_args_is_help=True)


@app.command("build-demo")
def build_demo(
    out: Annotated[Path | None, typer.Option(help="Output directory (default: model.demo_dir).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a model is already there.")] = False,
) -> None:
    """Build the small GPT-2-style demo model and tokenizer deterministically (Hugging Face format)."""
    from rlhf_loop.models.demo_kit import build_demo_model

    path = build_demo_model(out or load_settings().model.demo_dir, force=force)
    typer.echo(f"demo model ready at {path}")


@app.command("sample")
def sample(
    prompt: Annotated[list[str], typer.Argument(help="Prompt(s) to complete.")],
    model: Annotated[str | None, typer.Option(help="Model path (default: the configured base model).")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 0,
) -> None:
    """Generate a response for each prompt and print it."""
    from rlhf_loop.models.loading import generate, load_base, resolve_base_model

    cfg = load_settings().model
    lm, tok = load_base(model or resolve_base_model(cfg), device="cpu")
    for p, r in zip(prompt, generate(lm, tok, prompt, seed=seed), strict=True):
        typer.echo(f"> {p}\n{r}\n")
