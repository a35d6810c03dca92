"""The service's layers and the one rule between them: imports point down, never up or sideways.

``service/`` is cut by concern into subpackages, ordered from the bottom::

    core      settings, errors, metrics, logs, JSON, ids: imports nothing of service
    step      the step path: batcher, plan, record, state store and cache, model, events, expiry
    push      live delivery to subscribers
    api       the HTTP edge: routes, wire formats, OpenAPI, CORS, access log
    process   the app's composition, runner, supervisor, private Redis

A module may import its own subpackage and any subpackage below it; nothing above it, and so no
two subpackages import each other. ``service/__init__.py`` and ``__main__.py`` stand on top. This
file is where that rule is written down; each subpackage's docstring says what it may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "service"
LAYERS = ("core", "step", "push", "api", "process")
TOP = len(LAYERS)  # service/__init__.py and service/__main__.py


def layer_of(module: str) -> int | None:
    """The rank of a dotted module name inside ``service`` (None: outside the package)."""
    parts = module.split(".")
    if parts[0] != "service":
        return None
    if len(parts) == 1 or parts[1] in ("__init__", "__main__"):
        return TOP
    if parts[1] not in LAYERS:
        raise AssertionError(f"{module} is in no layer: put it in one of {LAYERS}")
    return LAYERS.index(parts[1])


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, importer: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in the source, relative ones resolved."""
    found: list[tuple[int, str]] = []
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            # ``from . import x`` names a module; so may ``from .pkg import x``: check both.
            found.append((node.lineno, target))
            found.extend((node.lineno, f"{target}.{alias.name}") for alias in node.names)
    return found


def violations(source: str, importer: str, is_package: bool = False) -> list[str]:
    own = layer_of(importer)
    assert own is not None
    wrong = []
    for line, target in imported_modules(source, importer, is_package):
        parts = target.split(".")
        if parts[0] != "service" or (len(parts) > 1 and parts[1] not in (*LAYERS, "__init__")):
            # A name imported from a module (``from .errors import X``) is not a module.
            if parts[0] == "service" and len(parts) > 1:
                raise AssertionError(f"{importer}:{line} imports {target}, in no layer")
            continue
        theirs = layer_of(target)
        if theirs is not None and theirs > own:
            wrong.append(f"{importer}:{line} imports {target}, a layer above it")
    return wrong


def service_modules() -> list[Path]:
    return sorted(p for p in SERVICE.rglob("*.py") if "demo_model" not in p.parts)


def test_every_module_of_the_service_sits_in_a_layer() -> None:
    loose = [p.name for p in SERVICE.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside every layer: {loose}; put each in one of {LAYERS}"
    packages = sorted(p.name for p in SERVICE.iterdir() if (p / "__init__.py").exists())
    assert packages == sorted(LAYERS), f"subpackages {packages} are not the layers {LAYERS}"
    for name in LAYERS:
        doc = ast.get_docstring(ast.parse((SERVICE / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, (
            f"service/{name}/__init__.py must say what it may import"
        )


def test_imports_point_down_the_layers_only() -> None:
    wrong: list[str] = []
    checked = 0
    for path in service_modules():
        name = module_name(path)
        wrong += violations(path.read_text(), name, is_package=path.name == "__init__.py")
        checked += 1
    assert checked >= 30, f"only {checked} modules found under {SERVICE}"
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_an_upward_or_sideways_import() -> None:
    # The rule's own check, on sources that break it, so that a checker that sees nothing fails.
    assert violations("from ..api.wire import parse_body\n", "service.step.plan")
    assert violations("from ..process import app\n", "service.push.subscriber")
    assert violations("import service.step.batcher\n", "service.core.metrics")
    assert violations("from service.push.event_hub import EventHub\n", "service.step.batcher")
    assert violations("from .. import push\n", "service.step.batcher")
    assert not violations("from ..core.errors import StaleSeq\n", "service.step.plan")
    assert not violations("from .record import StreamState\n", "service.step.plan")
    assert not violations("from .core import jsonio\n", "service", is_package=True)
