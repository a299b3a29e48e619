"""The package's layers (README "Layout"): each part imports only its own layer and those below.

    control/    CLI, supervisor, renderers, the Triton launcher       (starts processes, writes files)
    dataplane/  gRPC edge, routes, the service                         (the request path's edge)
    chat/       pipeline, intent, targets, endpoints, providers, ...   (what a chat request becomes)
    models/     the Models protocol, the Triton client, local LLM      (model clients)
    foundation  config, errors, names, telemetry, metrics, processor, wire/

Every ``import`` counts, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ext_proc"
LAYERS = {"foundation": 0, "models": 1, "chat": 2, "dataplane": 3, "control": 4}
# the console script, `python -m ext_proc`, and the package itself (the public surface re-exports main)
TOP_LEVEL_CONTROL = {"ext_proc", "ext_proc.cli", "ext_proc.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in TOP_LEVEL_CONTROL:
        return "control"
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in LAYERS else "foundation"


def imports(path: Path) -> set[str]:
    """ext_proc modules ``path`` imports (``from ext_proc.x import y`` counts y when it is a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ext_proc")
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the package uses absolute imports"
            if node.module and node.module.split(".")[0] == "ext_proc":
                for a in node.names:
                    sub = f"{node.module}.{a.name}"
                    found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {m: imports(p) - {m} for m, p in MODULES.items()}


def test_every_module_is_in_a_known_layer() -> None:
    subpackages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert subpackages - {"wire"} == set(LAYERS) - {"foundation"}, "a new subpackage needs its place in LAYERS"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module: str) -> None:
    mine = LAYERS[layer(module)]
    upward = sorted(dep for dep in GRAPH[module] if LAYERS[layer(dep)] > mine)
    assert not upward, f"{module} ({layer(module)}) imports a higher layer: {upward}"


def test_the_data_plane_does_not_import_the_control_side() -> None:
    offenders = sorted((m, d) for m in MODULES if layer(m) == "dataplane" for d in GRAPH[m] if layer(d) == "control")
    assert offenders == []


def test_no_import_cycles() -> None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for dep in sorted(GRAPH.get(m, ())):
            if dep not in MODULES:
                continue
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        path.pop()
        state[m] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule is not vacuous: an import of the control side from the data plane is caught."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from ext_proc.control.supervisor import home\n")
    deps = imports(src)
    assert deps == {"ext_proc.control.supervisor"}
    assert LAYERS[layer("ext_proc.control.supervisor")] > LAYERS[layer("ext_proc.dataplane.server")]


def test_the_public_surface_is_what_the_package_says() -> None:
    import ext_proc

    assert sorted(ext_proc.__all__) == ["Config", "ConfigError", "build_config", "load_config", "main"]
    for name in ext_proc.__all__:
        assert getattr(ext_proc, name).__module__.startswith("ext_proc"), name
    cfg = ext_proc.load_config()  # the embedded default config
    assert isinstance(cfg, ext_proc.Config)
