"""A mistyped command is a usage error (exit 2, one line naming it), never a traceback."""

from __future__ import annotations

from rlhf_loop.cli.main import main


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["model", "build"]) == 2
    err = capsys.readouterr().err
    assert "No such command 'build'" in err
    assert "Traceback" not in err


def test_help_exits_zero(capsys):
    assert main(["model", "--help"]) == 0
    assert "build-demo" in capsys.readouterr().out
