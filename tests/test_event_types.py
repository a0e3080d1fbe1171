"""The handled event types (issue 14.3): the CLI prints them, the README's listen line has them."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from webhook_service.cli import cli
from webhook_service.services import build_router

README = Path(__file__).resolve().parent.parent / "README.md"


def test_events_types_prints_every_handled_type(runner: CliRunner) -> None:
    """Print the registry's event types, one a line, sorted."""
    result = runner.invoke(cli, ["events", "types"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == sorted(build_router().event_types)
    assert "customer.subscription.created" in result.stdout.splitlines()


def test_events_types_listen_prints_the_stripe_listen_line_on_port(runner: CliRunner) -> None:
    """Print `stripe listen --events ... --forward-to localhost:$PORT/...`."""
    result = runner.invoke(cli, ["events", "types", "--listen"], env={"PORT": "9123"})
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"stripe listen --events {','.join(sorted(build_router().event_types))} "
        "--forward-to localhost:9123/api/v1/billing/webhook\n"
    )


def test_readme_listen_line_names_exactly_the_handled_types() -> None:
    """Keep the README's `stripe listen --events` line equal to the registry's set."""
    lines = [
        line for line in README.read_text("utf-8").splitlines() if "stripe listen --events" in line
    ]
    assert lines, "README has no `stripe listen --events` line"
    for line in lines:
        match = re.search(r"--events (\S+)", line)
        assert match is not None
        assert set(match.group(1).split(",")) == build_router().event_types, line
