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
    arch: Annotated[
        str,
        typer.Option(help="gpt2, or llama (the shape vLLM serves with LoRA; default out: model.demo_dir + '-llama')."),
    ] = "gpt2",
) -> None:
    """Build the small demo model (GPT-2-style or Llama-shaped) and its tokenizer deterministically (HF format)."""
    from rlhf_loop.models.demo_kit import ARCHES, DemoKitConfig, build_demo_model, demo_dir_for, llama_config

    if arch not in ARCHES:
        raise typer.BadParameter(f"--arch must be one of {', '.join(ARCHES)}")
    path = build_demo_model(
        out or demo_dir_for(arch, load_settings().model.demo_dir),
        force=force,
        cfg=llama_config() if arch == "llama" else DemoKitConfig(),
    )
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
