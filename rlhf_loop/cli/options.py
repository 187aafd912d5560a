"""What several commands share: the settings (loaded on first use, never at import) and option types."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rlhf_loop.settings import Settings


def load_settings() -> Settings:
    """The process's settings, from the environment; only entry points call this."""
    from rlhf_loop.settings import get_settings

    return get_settings()


ApiUrl = Annotated[str | None, typer.Option("--api", help="API base URL (default: http://api.host:api.port).")]
ApiKeyOpt = Annotated[str, typer.Option("--key", envvar="RLHF_API_KEY", help="An approver key.", show_default=False)]
Reason = Annotated[str, typer.Option(help="Why (kept in the audit log).")]
