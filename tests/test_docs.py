"""The reference in README.md and docs/: links resolve inside the repository, and the
lists that must match the code (events handled, commands) do."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import click
import pytest

from webhook_service.cli import cli
from webhook_service.services import build_router

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and [text]: target, outside code spans and fenced blocks.
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
FENCE_RE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
CODE_SPAN_RE = re.compile(r"`[^`\n]*`")


def links(page: Path) -> list[str]:
    text = CODE_SPAN_RE.sub("", FENCE_RE.sub("", page.read_text("utf-8")))
    return [a or b for a, b in LINK_RE.findall(text)]


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    text = FENCE_RE.sub("", page.read_text("utf-8"))
    found = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def resolves(page: Path, target: str) -> bool:
    """An absolute URL, or a file (and heading) inside the repository."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
        return True
    path_part, _, anchor = target.partition("#")
    resolved = (page.parent / path_part).resolve() if path_part else page
    if not resolved.is_relative_to(ROOT) or not resolved.exists():
        return False
    return not anchor or resolved.suffix != ".md" or anchor in anchors(resolved)


def test_the_reference_pages_exist() -> None:
    names = {page.name for page in PAGES}
    expected = {"http-api.md", "events.md", "quotas.md", "configuration.md", "cli.md"}
    assert expected | {"monitoring.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    found = links(page)
    assert found, f"{page.name} links nothing"
    broken = [target for target in found if not resolves(page, target)]
    assert broken == [], f"{page.name}: links that do not resolve inside the repository"


def test_no_file_points_outside_the_repository() -> None:
    """No tracked file refers to the product folder beside the repository (a clone has none)."""
    outside = "/".join(("..", "shared"))  # spelt apart, so this file does not name it either
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    offenders = [
        name
        for name in tracked
        if (ROOT / name).is_file() and outside in (ROOT / name).read_text("utf-8", errors="ignore")
    ]
    assert len(tracked) > 50
    assert offenders == []


def test_events_page_lists_exactly_the_handled_event_types() -> None:
    page = (ROOT / "docs" / "events.md").read_text("utf-8")
    page = page.split("## The event types handled", 1)[1].split("\n## ", 1)[0]
    table = set(re.findall(r"^\| `([a-z_.]+)` \|", page, re.MULTILINE))
    listen = re.search(r"--events (\S+)", page)
    assert listen is not None
    assert table == set(build_router().event_types)
    assert set(listen.group(1).split(",")) == set(build_router().event_types)


def test_cli_page_names_every_command() -> None:
    page = (ROOT / "docs" / "cli.md").read_text("utf-8")

    def commands(group: click.Group, prefix: str) -> list[str]:
        found = []
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found += commands(command, f"{prefix} {name}")
            else:
                found.append(f"{prefix} {name}")
        return found

    names = commands(cli, "webhook-service")
    assert len(names) >= 10
    assert [name for name in names if name not in page] == []
