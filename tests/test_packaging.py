"""Packaging (issue 14.8): the lock files, and the wheel run the way the Docker image runs it.

Docker cannot build here, so the slow test does what the image does, minus Docker: it
builds the wheel from exactly the files the Dockerfile copies, installs it non-editable
into a clean virtual environment, and, as an unprivileged user (``nobody`` when the suite
runs as root) in an empty directory, migrates, serves with gunicorn and answers
``/healthz`` and ``/readyz``. The dependencies come from the suite's own environment
(installed from the same lock), added by a ``.pth`` line, so the test takes seconds;
``test_runtime_lock_pins_every_dependency`` checks that the lock the image installs holds
every one of them.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.helpers import WEBHOOK_SECRET
from tests.servers import clean_environ, free_port

ROOT = Path(__file__).resolve().parent.parent
DOCKER_CONTEXT = ("pyproject.toml", "README.md", "webhook_service")  # the Dockerfile's COPYs
_PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\$", re.MULTILINE)


def locked(path: Path) -> dict[str, str]:
    """name -> version of every pin in a pip-compile lock file (each must carry hashes)."""
    text = path.read_text("utf-8")
    pins = {_normal(name): version for name, version in _PIN.findall(text)}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        if _PIN.match(block):
            assert "--hash=sha256:" in block, f"{path.name}: no hash for {block.split()[0]}"
    return pins


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(requirements: list[str], extras: tuple[str, ...] = ()) -> set[str]:
    """Every distribution ``requirements`` need here, transitively (markers evaluated)."""
    seen: set[str] = set()
    todo = [(Requirement(r), extras) for r in requirements]
    while todo:
        req, wanted = todo.pop()
        environment = [{"extra": e} for e in wanted or ("",)]
        if req.marker is not None and not any(req.marker.evaluate(env) for env in environment):
            continue
        name = _normal(req.name)
        key = name + "[" + ",".join(sorted(req.extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for sub in metadata.distribution(name).requires or []:
            todo.append((Requirement(sub), tuple(req.extras)))
    return {key.split("[")[0] for key in seen}


def project_requirements() -> list[str]:
    return [
        r
        for r in metadata.distribution("nat-webhook-service").requires or []
        if "extra ==" not in r
    ]


def test_runtime_lock_pins_every_dependency() -> None:
    """Pin, with hashes, every distribution the service needs at run time, as installed."""
    pins = locked(ROOT / "requirements.lock")
    needed = closure(project_requirements())
    assert needed - set(pins) == set(), "requirements.lock lacks them: run `make lock`"
    for name in needed:
        assert metadata.version(name) == pins[name], (name, "installed differs from the lock")


def test_dev_lock_pins_the_runtime_lock_and_the_dev_tools() -> None:
    """Hold the same runtime versions as requirements.lock, plus every dev dependency."""
    runtime = locked(ROOT / "requirements.lock")
    dev = locked(ROOT / "requirements-dev.lock")
    assert {name: dev.get(name) for name in runtime} == runtime
    dev_requirements = [
        r.split(";")[0]
        for r in metadata.distribution("nat-webhook-service").requires or []
        if 'extra == "dev"' in r
    ]
    assert closure(dev_requirements) - set(dev) == set()


def test_makefile_and_dockerfile_install_from_the_locks() -> None:
    """Install with --require-hashes from the lock, then the project with --no-deps."""
    makefile = (ROOT / "Makefile").read_text("utf-8")
    assert "pip install --quiet --require-hashes -r requirements-dev.lock" in makefile
    assert "pip install --quiet --no-deps -e ." in makefile
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")
    assert "pip install --require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-deps ." in dockerfile
    ignored = (ROOT / ".dockerignore").read_text("utf-8").split()
    for entry in (".venv", ".env", "var/", ".git"):
        assert entry in ignored


# --------------------------------------------------------------------------- the wheel


def _unprivileged() -> list[str]:
    """The command prefix that drops root to nobody (nothing when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop root in this test"
    return [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


def _base_python(drop: list[str]) -> str:
    """An interpreter of this minor version that the unprivileged user may run.

    The suite's own may live where only root can reach (pyenv under /root); a system
    Python of the same minor version reads the same compiled dependencies.
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [
        os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
        f"/usr/bin/python{version}",
        f"/usr/local/bin/python{version}",
    ]
    for candidate in candidates:
        if not os.path.exists(candidate):
            continue
        # Through env: the first exec after setpriv may still pass on root's capabilities.
        probe = subprocess.run(
            [*drop, "/usr/bin/env", candidate, "-c", "import sys; print(sys.version_info[:2])"],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == str(sys.version_info[:2]):
            return candidate
    pytest.fail(f"no Python {version} that an unprivileged user can run: {candidates}")


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A directory every user can read (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="nat-wheel-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
def test_wheel_runs_unprivileged_from_an_empty_directory(scratch: Path) -> None:
    """Build, install non-editable, migrate, serve and answer /healthz and /readyz."""
    source = scratch / "src"
    source.mkdir()
    for name in DOCKER_CONTEXT:
        if (ROOT / name).is_dir():
            shutil.copytree(
                ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(ROOT / name, source / name)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(scratch), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = scratch.glob("nat_webhook_service-*.whl")

    drop = _unprivileged()
    venv = scratch / "venv"
    subprocess.run(
        [_base_python(drop), "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60
    )
    installed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    # Dependencies: this environment's site-packages, after the venv's own (see the module doc).
    Path(purelib, "zz_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n", encoding="utf-8"
    )
    shutil.rmtree(source)  # nothing of the source tree is left to import from

    home = scratch / "empty"
    home.mkdir()
    if os.geteuid() == 0:
        shutil.chown(home, "nobody", "nogroup")
    port = free_port()
    env = clean_environ(
        {
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "PORT": str(port),
            "BIND_HOST": "127.0.0.1",
            "WEB_CONCURRENCY": "1",
            "HOME": str(home),
            "LOG_FORMAT": "json",
        }
    )
    env.pop("PYTHONPATH", None)
    cli = str(venv / "bin" / "webhook-service")

    where = subprocess.run(
        [
            *drop,
            str(venv / "bin" / "python"),
            "-c",
            "import webhook_service; print(webhook_service.__file__)",
        ],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.strip()
    assert where.startswith(purelib), where
    migrated = subprocess.run(
        [*drop, cli, "db", "upgrade"],
        cwd=home,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr

    server = subprocess.Popen(
        [*drop, cli, "serve"],
        cwd=home,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        health: tuple[int, bytes] = (0, b"")
        while time.monotonic() < deadline and server.poll() is None:
            try:
                health = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                time.sleep(0.1)
        assert health[0] == 200, server.stderr.read().decode() if server.poll() is not None else ""
        status, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200, body
        assert b'"migrations":"ok"' in body.replace(b" ", b"")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=5)
        server.stderr.close()  # type: ignore[union-attr]
    if drop:
        assert (home / "var" / "webhook-service.db").stat().st_uid != 0


def test_paas_requirements_txt_pins_the_runtime_lock_and_the_service() -> None:
    """Give buildpacks requirements.txt: the lock's exact versions, then the service itself."""
    lines = [
        line
        for line in (ROOT / "requirements.txt").read_text("utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[-1] == "."
    pins = dict(_normal_pin(line) for line in lines[:-1])
    assert pins == locked(ROOT / "requirements.lock")


def _normal_pin(line: str) -> tuple[str, str]:
    name, version = line.split(";")[0].strip().split("==")
    return _normal(name), version
