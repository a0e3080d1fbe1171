"""The domain does not load the web: its packages import no web framework or server."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import webhook_service

PACKAGE = Path(webhook_service.__file__).parent
WEB_LIBRARIES = ("flask", "werkzeug", "gunicorn")
DOMAIN_PACKAGES = ("webhooks", "quotas", "billing")
# Modules outside web/ that the domain and the CLI share.
SHARED_MODULES = ("errors", "services", "config", "db", "models", "plans", "migrate", "cli")


def is_web_layer(module: str) -> bool:
    return module == "webhook_service.web" or module.startswith("webhook_service.web.")


def domain_modules() -> list[str]:
    found = [f"webhook_service.{name}" for name in SHARED_MODULES]
    for package in DOMAIN_PACKAGES:
        for module in pkgutil.iter_modules([str(PACKAGE / package)]):
            found.append(f"webhook_service.{package}.{module.name}")
    return found


def test_the_domain_loads_no_web_library_in_a_fresh_interpreter() -> None:
    modules = domain_modules()
    assert len(modules) > len(SHARED_MODULES) + 10, modules  # the walk found the packages
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = json.loads(result.stdout)
    assert "webhook_service.quotas.event_handlers" in loaded
    web = [name for name in loaded if name.split(".")[0] in WEB_LIBRARIES]
    assert web == []
    assert [name for name in loaded if is_web_layer(name)] == []


def test_no_module_outside_web_imports_the_web_layer() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in ("web", "migrations"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] in WEB_LIBRARIES or is_web_layer(name):
                    offenders.append(f"{relative}: {name}")
    assert offenders == []
