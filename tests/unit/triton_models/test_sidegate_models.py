"""triton_models/sidegate_models: the models' shared package is imported one way, and its
function_call engine's modules import only the ones below them (no cycles)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[3] / "triton_models"
PACKAGE = MODELS / "sidegate_models"
MODEL_PYS = sorted(MODELS.glob("*/1/model.py"))
# the engine's modules, each allowed to import only those before it
ENGINE_ORDER = ["schema", "grammar", "grounding", "prompt", "engine"]
# prompt builds the route judge's grammar over the preference names with grammar's literals, and
# tells the model today's date when grounding finds a date to work out in the user's words
ENGINE_DEPS = {"schema": set(), "grammar": {"schema"}, "grounding": {"schema"}, "prompt": {"schema", "grammar", "grounding"},
               "engine": {"schema", "grammar", "grounding", "prompt"}}


def imported(path: Path) -> set[str]:
    """Absolute module names ``path`` imports (``from a.b import c`` counts as ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_every_model_imports_shared_code_from_the_package_not_by_path() -> None:
    assert {p.parent.parent.name for p in MODEL_PYS} >= {"prompt_embed", "prompt_guard_head", "function_call", "chat_llm"}
    for path in [*MODEL_PYS, *PACKAGE.rglob("*.py")]:
        tree = ast.parse(path.read_text())
        attributes = {ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert "sys.path" not in attributes, path
        assert not any(a.endswith("spec_from_file_location") for a in attributes), path


@pytest.mark.parametrize("model", MODEL_PYS, ids=lambda p: p.parent.parent.name)
def test_models_use_the_shared_backend(model: Path) -> None:
    assert "sidegate_models.backend" in imported(model)


def test_only_the_backend_needs_triton() -> None:
    needs = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if "triton_python_backend_utils" in imported(p))
    assert needs == ["backend.py"]


@pytest.mark.parametrize("module", ENGINE_ORDER)
def test_the_engines_modules_import_only_those_below_them(module: str) -> None:
    prefix = "sidegate_models.function_call."
    siblings = {n.removeprefix(prefix) for n in imported(PACKAGE / "function_call" / f"{module}.py") if n.startswith(prefix)}
    assert siblings <= ENGINE_DEPS[module], (module, siblings)
