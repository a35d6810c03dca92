"""The container, compose, Kubernetes and Grafana files, checked without Docker or a cluster: the
build context holds what the Dockerfile copies and builds a package that carries the demo model
and no torch; the image runs as a non-root user with a health check that really answers; the
compose file wires the service, a persistent Redis and a Prometheus that scrapes the service where
it listens; the Kubernetes manifests set only options the service has, probe and reach the port it
listens on, take the Redis URL from their Secret and outlast the service's drain; the Grafana
dashboard queries only metrics a running service exports, from the compose file's Prometheus."""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from service_harness import ROOT, ServiceProcess, call, free_port

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
    assert not excluded("service/process/app.py", rules)
    assert excluded("service/process/__pycache__/app.cpython-311.pyc", rules)
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
    for module in (ROOT / "service").rglob("*.py"):
        assert not excluded(module.relative_to(ROOT).as_posix(), rules), module
    for kept_out in [
        ".git/HEAD", ".venv/pyvenv.cfg", "tests/conftest.py", "bench/bench_service.py",
        ".pytest_cache/README.md", ".mypy_cache/x",
        "service/process/__pycache__/app.cpython-311.pyc", "lstm_serve.egg-info/PKG-INFO",
        "deploy/docker-compose.yml", "Dockerfile",
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
    for module in (ROOT / "service").rglob("*.py"):
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
    assert set(services) == {"lstm-serve", "redis", "prometheus", "grafana"}
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


RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"


def rules_scrape_job() -> str:
    """The scrape job the rules find the service's targets by (``up{job="..."}``)."""
    jobs = set(re.findall(r'up\{job="([^"]+)"\}', RULES.read_text()))
    assert len(jobs) == 1, jobs
    return jobs.pop()


def test_prometheus_loads_the_alert_rules_for_the_job_it_scrapes() -> None:
    prometheus = compose()["services"]["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config = yaml.safe_load((COMPOSE.parent / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    (rule_file,) = config["rule_files"]
    in_container = str(Path("/etc/prometheus") / rule_file)  # relative to the config's folder
    assert (COMPOSE.parent / mounts[in_container]).resolve() == RULES
    (volume,) = [v for v in prometheus["volumes"] if v.split(":")[1] == in_container]
    assert volume.endswith(":ro")
    (job,) = config["scrape_configs"]
    assert job["job_name"] == rules_scrape_job()


# -- Kubernetes ------------------------------------------------------------------------------------

KUBERNETES = ROOT / "deploy" / "kubernetes"


def kubernetes_objects() -> list[dict[str, Any]]:
    """Every object of every manifest that ``kubectl apply -f deploy/kubernetes/`` applies."""
    objects = []
    for path in sorted(KUBERNETES.iterdir()):
        assert path.suffix in (".yaml", ".yml"), f"{path.name}: kubectl would apply or skip it"
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                assert isinstance(document, dict), path.name
                objects.append(document)
    return objects


def kubernetes_object(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of this kind (and name, when given) in the manifests."""
    (found,) = [
        o
        for o in kubernetes_objects()
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    return found


def the_container() -> dict[str, Any]:
    (container,) = kubernetes_object("Deployment")["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def container_env() -> dict[str, dict[str, Any]]:
    """The container's environment: name -> its entry (``value`` or ``valueFrom``)."""
    entries = the_container().get("env", [])
    env = {entry["name"]: entry for entry in entries}
    assert len(env) == len(entries), "a variable set twice"
    return env


def container_port(port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the container port it reaches."""
    ports = the_container()["ports"]
    if isinstance(port, str) and not port.isdigit():
        (number,) = [p["containerPort"] for p in ports if p.get("name") == port]
        return int(number)
    assert int(port) in [p["containerPort"] for p in ports], port
    return int(port)


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def dockerfile_uid() -> int:
    """The uid of the Dockerfile's last USER: numeric, or the --uid its useradd gives the name."""
    steps = instructions()
    user = [args for k, args in steps if k == "USER"][-1].split(":")[0]
    if user.isdigit():
        return int(user)
    for keyword, args in steps:
        for command in args.split("&&") if keyword == "RUN" else []:
            words = shlex.split(command)
            if words and words[0] == "useradd" and words[-1] == user and "--uid" in words:
                return int(words[words.index("--uid") + 1])
    raise AssertionError(f"no uid found for the Dockerfile's user {user!r}")


def test_every_kubernetes_manifest_parses_into_named_objects() -> None:
    objects = kubernetes_objects()
    for obj in objects:
        assert isinstance(obj.get("apiVersion"), str) and obj["apiVersion"], obj
        assert isinstance(obj.get("kind"), str) and obj["kind"], obj
        name = obj.get("metadata", {}).get("name")
        assert isinstance(name, str) and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        assert "namespace" not in obj["metadata"], "applied to the namespace the operator picks"
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Deployment", "Secret", "Secret", "Service"]  # Redis, tokens
    apis = {o["kind"]: o["apiVersion"] for o in objects}
    assert apis == {"ConfigMap": "v1", "Deployment": "apps/v1", "Secret": "v1", "Service": "v1"}


def test_the_deployment_listens_probes_and_is_reached_on_one_port() -> None:
    deployment, service = kubernetes_object("Deployment"), kubernetes_object("Service")
    spec, pod = deployment["spec"], deployment["spec"]["template"]
    assert spec["replicas"] >= 2  # stateless replicas: state is in Redis
    labels = pod["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    container = the_container()
    assert container["image"] == "lstm-serve:latest"
    env = container_env()
    listens = int(env["LSTM_PORT"]["value"]) if "LSTM_PORT" in env else 8080
    assert [p["containerPort"] for p in container["ports"]] == [listens]
    for probe, path in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")]:
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert container_port(check["port"]) == listens, probe
    if "startupProbe" in container:  # alive once it listens; never hangs on Redis
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        assert container_port(container["startupProbe"]["httpGet"]["port"]) == listens
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8080
    assert container_port(port.get("targetPort", port["port"])) == listens
    annotations = pod["metadata"].get("annotations", {})
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == listens
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_the_deployment_sets_real_options_with_values_they_accept() -> None:
    from service.core.settings import OPTIONS, load_settings

    by_env = {opt.env: opt for opt in OPTIONS}
    env = container_env()
    values: dict[str, str] = {}
    for name, entry in env.items():
        if name.startswith("LSTM_"):
            assert name in by_env, f"{name} is no option of the service"
            assert "value" in entry, f"{name}: give it as a value, to be checked here"
            by_env[name].parse(str(entry["value"]))  # raises on a value the service refuses
            values[name] = str(entry["value"])
    load_settings([], environ=values)  # and the combination is accepted (e.g. port 0 + workers)
    assert values["LSTM_HOST"] == "0.0.0.0"
    # One worker per CPU the container is given, and given as much as it asks for.
    resources = the_container()["resources"]
    requested = cpu_cores(resources["requests"]["cpu"])
    assert requested == cpu_cores(resources["limits"]["cpu"]) == int(values["LSTM_WORKERS"])
    assert resources["requests"]["memory"] and resources["limits"]["memory"]


def test_the_redis_url_comes_from_a_secret_in_the_manifests() -> None:
    from service.core.settings import OPTIONS

    entry = container_env()["REDIS_URL"]
    assert "value" not in entry, "the URL may carry a password: keep it in a Secret"
    ref = entry["valueFrom"]["secretKeyRef"]
    secret = kubernetes_object("Secret", ref["name"])
    assert not ref.get("optional", False)
    plain = dict(secret.get("stringData", {}))
    plain |= {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    assert ref["key"] in plain
    (redis_url,) = [opt for opt in OPTIONS if opt.env == "REDIS_URL"]
    redis_url.parse(plain[ref["key"]])  # even the placeholder has the shape the service needs
    assert "CHANGE-ME" in plain[ref["key"]], "the example must not look like a real password"


def image_env() -> dict[str, str]:
    """The variables the Dockerfile's ENV instructions set."""
    env: dict[str, str] = {}
    for keyword, args in instructions():
        if keyword == "ENV":
            env |= dict(word.split("=", 1) for word in shlex.split(args.replace("\\\n", " ")))
    return env


def test_every_deployment_gives_the_service_the_tokens_file_it_requires() -> None:
    """The image listens beyond loopback, so it names a tokens file; compose mounts its secret
    there, and the Kubernetes Deployment mounts the tokens Secret's directory (not by subPath,
    which would never see an update) where its LSTM_AUTH_TOKENS points."""
    from service.core.auth import parse_tokens

    path = image_env()["LSTM_AUTH_TOKENS"]
    assert image_env()["LSTM_HOST"] == "0.0.0.0"
    app = compose()["services"]["lstm-serve"]
    (mounted,) = app["secrets"]
    secret = compose()["secrets"][mounted["source"]]
    assert "/run/secrets/" + mounted["target"] == path
    assert (COMPOSE.parent / secret["file"]).resolve() == ROOT / "deploy" / "lstm-tokens.json"
    assert "deploy/lstm-tokens.json" in (ROOT / ".gitignore").read_text().splitlines()
    assert "LSTM_AUTH_TOKENS" not in environment(app)  # the image's path, which the secret fills

    pod = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    env_path = Path(container_env()["LSTM_AUTH_TOKENS"]["value"])
    (mount,) = [m for m in the_container()["volumeMounts"] if m["name"] == "tokens"]
    assert Path(mount["mountPath"]) == env_path.parent and "subPath" not in mount
    assert mount.get("readOnly") is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tokens"]
    secret_object = kubernetes_object("Secret", volume["secret"]["secretName"])
    placeholder = secret_object["stringData"][env_path.name]
    assert parse_tokens(placeholder.encode()).summary() == "0 token(s) of 0 tenant(s)"


def test_the_images_environment_starts_only_with_its_tokens_file(tmp_path: Path) -> None:
    """Started as the image starts it (its LSTM_HOST and LSTM_AUTH_TOKENS, the path moved into a
    scratch directory), the service refuses without the file, naming it, and with it answers
    401 to a request without a token and 200 to its health check."""
    env = image_env()
    tokens = tmp_path / Path(env["LSTM_AUTH_TOKENS"]).name
    settings = {"LSTM_HOST": env["LSTM_HOST"], "LSTM_AUTH_TOKENS": str(tokens)}
    missing = ServiceProcess(tmp_path, env=settings)
    with pytest.raises(RuntimeError, match="exited at start-up"):
        missing.start()
    assert str(tokens) in missing.log()
    tokens.write_text(json.dumps({"tokens": []}))
    service = ServiceProcess(tmp_path, env=settings).start()
    try:
        assert call("GET", service.url + "/healthz").status == 200
        refused = call("POST", service.url + "/v1/streams/s/readings", {"values": [1.0]})
        assert refused.status == 401 and refused.body["error"]["code"] == "unauthenticated"
    finally:
        service.stop()


def test_the_rules_configmap_holds_the_rules_file_verbatim() -> None:
    configmap = kubernetes_object("ConfigMap")
    assert configmap["metadata"]["name"] == "lstm-serve-prometheus-rules"
    (text,) = configmap["data"].values()
    assert text == RULES.read_text(), (
        "deploy/kubernetes/prometheus-rules.yaml differs from deploy/prometheus/alerts.yml: "
        "copy the rules file into the ConfigMap again"
    )


def test_the_pod_outlasts_the_services_drain() -> None:
    from service.process.supervisor import DRAIN_S

    pod = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    pre_stop = the_container()["lifecycle"]["preStop"]
    if "sleep" in pre_stop:
        pause = float(pre_stop["sleep"]["seconds"])
    else:
        command = pre_stop["exec"]["command"]
        assert command[0] == "sleep" and len(command) == 2, command
        pause = float(command[1])
    assert pause >= 5, "the endpoint must leave the Service before the service stops accepting"
    # SIGTERM comes after the preStop hook; the grace period counts from the start of the hook.
    assert pod["terminationGracePeriodSeconds"] > pause + DRAIN_S


def test_the_pod_runs_as_the_images_user_and_writes_only_to_its_volumes() -> None:
    pod = kubernetes_object("Deployment")["spec"]["template"]["spec"]
    container = the_container()
    security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == dockerfile_uid()
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    if security.get("readOnlyRootFilesystem"):
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = [
            m["mountPath"].rstrip("/")
            for m in container["volumeMounts"]
            if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
        ]
        env = {k: str(v.get("value", "")) for k, v in container_env().items()}

        def is_writable(path: str) -> bool:
            return any(path == w or path.startswith(w + "/") for w in writable)

        # TMPDIR: the supervisor's PROMETHEUS_MULTIPROC_DIR and onnxruntime's files; the
        # XDG cache: onnxruntime's (else under the image's read-only home).
        assert is_writable(env.get("TMPDIR", "/tmp"))
        assert "XDG_CACHE_HOME" in env and is_writable(env["XDG_CACHE_HOME"])
        if "PROMETHEUS_MULTIPROC_DIR" in env:
            assert is_writable(env["PROMETHEUS_MULTIPROC_DIR"])


# -- Grafana ---------------------------------------------------------------------------------------

GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "lstm-serve.json"


def dashboard_panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows and the panels of collapsed rows included."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels += panel.get("panels", [])
    return panels


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", [])]


def compose_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """A compose service's bind mounts: container path -> the host path (volumes left out)."""
    mounts = {}
    for volume in service["volumes"]:
        host, container = volume.split(":")[:2]
        if host.startswith("."):
            mounts[container.rstrip("/")] = (COMPOSE.parent / host).resolve()
    return mounts


def test_the_dashboard_parses_and_its_panels_have_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids)), ids
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"] and panel["targets"], panel["id"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for source in [panel["datasource"], *(t.get("datasource") for t in panel["targets"])]:
            if source is None:
                continue
            assert source["type"] == "prometheus", panel["title"]
            variable = re.fullmatch(r"\$\{(\w+)\}", source["uid"])
            assert variable, "a datasource variable, so the dashboard imports anywhere"
            chosen = variables[variable.group(1)]
            assert chosen["type"] == "datasource" and chosen["query"] == "prometheus"


def test_every_metric_the_dashboard_queries_is_one_the_service_exports(
    service: ServiceProcess,
) -> None:
    answer = call("GET", service.url + "/metrics")
    assert answer.status == 200
    families = {f.name: f.type for f in text_string_to_metric_families(answer.body)}
    # Without a multiprocess directory prometheus_client adds a timestamp series, X_created, to
    # each counter and histogram X: not a metric of the service.
    exported = {
        name: kind
        for name, kind in families.items()
        if name.startswith("lstm_")
        and not (name.endswith("_created") and name.removesuffix("_created") in families)
    }
    metrics = set(exported)
    # A counter's family drops _total (its samples keep it, once it has any).
    exported |= {f"{name}_total": kind for name, kind in exported.items() if kind == "counter"}
    assert "lstm_http_request_duration_seconds" in exported  # the scrape is the service's
    used: set[str] = set()
    for expr in dashboard_expressions():
        for name in re.findall(r"lstm_[a-z_]+", expr):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported, f"{name} in {expr!r} is not a metric the service exports"
            if name.endswith("_bucket"):
                assert exported[base] == "histogram", f"{name}: {base} is no histogram"
            used.add(re.sub(r"_total$", "", base))
    # And the other way round: nothing the service exports is missing from the dashboard.
    assert metrics <= used, f"not on the dashboard: {sorted(metrics - used)}"


def test_every_recorded_series_the_dashboard_queries_is_one_the_rules_record() -> None:
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    queried: set[str] = set()
    for expr in dashboard_expressions():
        queried |= set(re.findall(r"lstm:[a-z0-9_]+:[a-z0-9_]+", expr))
    assert queried, "the dashboard shows the objective, recorded by the rules"
    assert queried <= recorded, sorted(queried - recorded)
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for expr in dashboard_expressions():
        if "ALERTS" in expr:
            pattern = re.search(r'alertname=~"([^"]+)"', expr)
            assert pattern and all(re.fullmatch(pattern.group(1), a) for a in alerts), expr


def test_grafana_reads_the_composes_prometheus_and_loads_the_dashboard() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    assert re.fullmatch(r"grafana/grafana(-oss)?:\d+\.\d+\.\d+", grafana["image"]), "pin a tag"
    assert [str(p) for p in grafana["ports"]] == ["3000:3000"]
    assert "prometheus" in grafana["depends_on"]
    mounts = compose_mounts(grafana)
    provisioning = "/etc/grafana/provisioning"
    assert mounts[f"{provisioning}/datasources"] == GRAFANA / "provisioning" / "datasources"
    assert mounts[f"{provisioning}/dashboards"] == GRAFANA / "provisioning" / "dashboards"

    (datasources,) = (GRAFANA / "provisioning" / "datasources").glob("*.y*ml")
    (source,) = yaml.safe_load(datasources.read_text())["datasources"]
    assert source["type"] == "prometheus" and source.get("isDefault") is True
    url = urlsplit(source["url"])
    assert url.scheme == "http" and url.hostname in services
    prometheus = services[url.hostname]
    assert prometheus["image"].split(":")[0] == "prom/prometheus"
    listens = "9090"  # Prometheus's own default; the compose file does not change it
    assert "--web.listen-address" not in " ".join(prometheus.get("command", []))
    assert str(url.port) == listens
    assert listens in [str(p).rsplit(":", 1)[-1] for p in prometheus["ports"]]
    scrape = yaml.safe_load((COMPOSE.parent / "prometheus.yml").read_text())
    assert source["jsonData"]["timeInterval"] == scrape["global"]["scrape_interval"]

    (providers,) = (GRAFANA / "provisioning" / "dashboards").glob("*.y*ml")
    (provider,) = yaml.safe_load(providers.read_text())["providers"]
    assert provider["type"] == "file"
    folder = mounts[provider["options"]["path"].rstrip("/")]
    assert DASHBOARD.parent == folder and DASHBOARD in folder.glob("*.json")
