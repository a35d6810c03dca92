"""The container and compose files, checked without Docker: the build context holds what the
Dockerfile copies and builds a package that carries the demo model and no torch; the image runs
as a non-root user with a health check that really answers; the compose file wires the service,
a persistent Redis and a Prometheus that scrapes the service where it listens."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from service_harness import ROOT, ServiceProcess, free_port

DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(excludes, regex) per .dockerignore line, with Docker's matching: ``*`` and ``?`` stay
    within one path segment, ``**`` spans any number, a leading ``!`` re-includes."""
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        for token in re.split(r"(\*\*/?|\*|\?)", pattern):
            if token in ("**", "**/"):
                regex += "(.*/)?" if token == "**/" else ".*"
            elif token == "*":
                regex += "[^/]*"
            elif token == "?":
                regex += "[^/]"
            else:
                regex += re.escape(token)
        rules.append((excludes, re.compile(regex)))
    return rules


def excluded(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether the context leaves ``path`` out: the last rule matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    verdict = False
    for excludes, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            verdict = excludes
    return verdict


def copied_sources() -> list[str]:
    sources = []
    for keyword, args in instructions():
        if keyword in ("COPY", "ADD"):
            words = [w for w in shlex.split(args) if not w.startswith("--")]
            sources += [w.rstrip("/") for w in words[:-1]]
    return sources


def context_files() -> list[str]:
    """Every file of the repository (tracked, or new and not git-ignored) that the build context
    holds. Git-ignored files (caches, .venv, egg-info) are checked by name in the tests."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.splitlines()  # fmt: skip
    rules = dockerignore_rules()
    return [f for f in listed if (ROOT / f).is_file() and not excluded(f, rules)]


# -- the build context -----------------------------------------------------------------------------


def test_the_dockerignore_matcher_follows_dockers_rules() -> None:
    rules = [
        (True, re.compile("[^/]*")),
        (False, re.compile(re.escape("service"))),
        (True, re.compile("(.*/)?__pycache__")),
    ]
    assert excluded("tests/conftest.py", rules)
    assert not excluded("service/app.py", rules)
    assert excluded("service/__pycache__/app.cpython-311.pyc", rules)
    assert excluded("__pycache__", rules)


def test_what_the_dockerfile_copies_is_in_the_context_and_nothing_else_is() -> None:
    rules = dockerignore_rules()
    sources = copied_sources()
    assert {"pyproject.toml", "README.md", "service", "model_export"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else context_files()
        assert not excluded(source, rules), source
        inside = [f for f in files if f == source or f.startswith(source + "/")]
        assert inside, f"{source} contributes no file to the context"
    for module in (ROOT / "service").glob("*.py"):
        assert not excluded(module.relative_to(ROOT).as_posix(), rules), module
    for kept_out in [
        ".git/HEAD", ".venv/pyvenv.cfg", "tests/conftest.py", "bench/bench_service.py",
        ".pytest_cache/README.md", ".mypy_cache/x", "service/__pycache__/app.cpython-311.pyc",
        "lstm_serve.egg-info/PKG-INFO", "deploy/docker-compose.yml", "Dockerfile",
    ]:  # fmt: skip
        assert excluded(kept_out, rules), kept_out
    # Every file in the context is under something the Dockerfile copies.
    strays = [
        f for f in context_files() if not any(f == s or f.startswith(s + "/") for s in sources)
    ]
    assert not strays, strays


@pytest.mark.slow
def test_the_context_builds_a_package_with_the_demo_model_and_no_torch(tmp_path: Path) -> None:
    """What ``pip install .`` in the image builds from: exactly the files the context holds."""
    context = tmp_path / "context"
    for name in context_files():
        (context / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, context / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path / "dist"), str(context)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/METADATA")
        )
        entry_points = next(
            archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt")
        )
    demo = {p.name for p in (ROOT / "service" / "demo_model").iterdir() if p.is_file()}
    assert {"model.onnx", "model.json"} <= demo
    assert {f"service/demo_model/{name}" for name in demo} <= names
    assert "lstm-serve = service.__main__:main" in entry_points
    core = [
        line.split(":", 1)[1].strip()
        for line in metadata.splitlines()
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    ]
    assert core and not [d for d in core if re.match(r"(torch|keras|pytest|mypy|ruff)\b", d)]


def test_the_core_dependencies_cover_every_import_of_the_service() -> None:
    """The image installs the core dependencies only: the service must need nothing else."""
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    core = {re.split(r"[ ;<>=!~\[]", req, maxsplit=1)[0].lower() for req in declared}
    providers = importlib.metadata.packages_distributions()
    needed: set[str] = set()
    for module in (ROOT / "service").glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "service":
                    continue
                needed |= {d.lower().replace("_", "-") for d in providers.get(top, [top])}
    assert needed and needed <= core, needed - core
    assert not needed & {"torch", "keras"}


# -- the image -------------------------------------------------------------------------------------


def test_the_image_runs_the_service_as_a_non_root_user_on_port_8080() -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert steps[0][0] == "FROM" and re.fullmatch(r"python:3\.11-slim(@.*)?", steps[0][1])
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert not [args for k, args in steps if "torch" in args.lower()]
    installs = [args for k, args in steps if k == "RUN" and "pip install" in args]
    assert len(installs) == 1
    target = shlex.split(installs[0].split("&&")[0])[2:]
    assert target == ["."], "the project, no extras, not editable"
    env = " ".join(args for k, args in steps if k == "ENV")
    assert "LSTM_HOST=0.0.0.0" in env and "LSTM_PORT=8080" in env
    assert "REDIS_URL" not in env  # the embedded default stays possible; compose gives one
    assert [args for k, args in steps if k == "EXPOSE"] == ["8080"]
    assert shlex.split(steps[-1][1].strip("[]").replace(",", " ")) == ["lstm-serve"]


def healthcheck_command() -> str:
    (args,) = [args for k, args in instructions() if k == "HEALTHCHECK"]
    words = shlex.split(args)
    return shlex.join(words[words.index("CMD") + 1 :])


def test_the_health_check_passes_on_a_live_service_and_fails_without_one(
    service: ServiceProcess,
) -> None:
    command = healthcheck_command()
    assert "/healthz" in command and "curl" not in command and "wget" not in command

    def run(port: int) -> int:
        env = {"PATH": str(Path(sys.executable).parent), "LSTM_PORT": str(port)}
        return subprocess.run(
            command, shell=True, env=env, capture_output=True, timeout=30
        ).returncode

    assert run(service.port) == 0
    assert run(free_port()) != 0


# -- compose and Prometheus ------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_runs_the_service_against_a_persistent_redis() -> None:
    services = compose()["services"]
    assert set(services) == {"lstm-serve", "redis", "prometheus"}
    app, redis = services["lstm-serve"], services["redis"]
    build = app["build"]
    context = COMPOSE.parent / build["context"]
    assert (context / build.get("dockerfile", "Dockerfile")).resolve() == DOCKERFILE
    url = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", environment(app)["REDIS_URL"])
    assert url and url.group(1) in services and url.group(1) == "redis"
    command = redis["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    assert words[0] == "redis-server"
    assert words[words.index("--appendonly") + 1] == "yes"
    port = words[words.index("--port") + 1] if "--port" in words else "6379"
    assert url.group(2) == port
    assert redis["image"].split(":")[0] == "redis"
    (volume,) = [v for v in redis["volumes"] if v.split(":")[1] == "/data"]
    assert volume.split(":")[0] in compose()["volumes"]  # a named volume, kept across restarts
    assert "redis-cli" in " ".join(redis["healthcheck"]["test"])
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    published = [str(p).rsplit(":", 1) for p in app["ports"]]
    assert [container for _, container in published] == [environment(app)["LSTM_PORT"]]
    assert environment(app)["LSTM_HOST"] == "0.0.0.0"


def test_prometheus_scrapes_the_service_where_it_listens() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    assert prometheus["image"].split(":")[0] == "prom/prometheus"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_file = (COMPOSE.parent / mounts["/etc/prometheus/prometheus.yml"]).resolve()
    config = yaml.safe_load(config_file.read_text())
    (job,) = config["scrape_configs"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, port = target.rsplit(":", 1)
    assert host in services and "build" in services[host]  # the service built from Dockerfile
    assert port == environment(services[host])["LSTM_PORT"]
    assert prometheus["depends_on"][host]["condition"] == "service_healthy"
