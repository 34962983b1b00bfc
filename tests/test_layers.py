"""The package's layers (docs/architecture.md): each folder of rklu imports only from the layers below it.

Read from the source's import statements (including imports inside functions), so a new upward import fails
here, not in a user's circular-import traceback. The command-line modules (``rklu/cli.py``, each area's
``cli.py`` and ``__main__.py``) sit on top: they wire every layer together.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rklu"
LAYERS = {
    "kernels": 0, "data": 0, "io": 0, "run_record": 0, "environment": 0,
    "models": 1,
    "methods": 2,
    "eval": 3,
    "training": 4,
    "demo": 5,
    "cli": 6,
}


def _area(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    if rel.name in ("cli.py", "__main__.py"):
        return "cli"
    return rel.parts[0].removesuffix(".py")


def _imported_areas(path: Path):
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
            modules = names
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "rklu" and len(parts) > 1:
                yield node.lineno, parts[1], module


def test_every_area_has_a_layer():
    areas = {_area(p) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE}
    assert areas <= set(LAYERS), f"give these a layer in LAYERS and docs/architecture.md: {areas - set(LAYERS)}"


def test_no_import_runs_up_a_layer():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent == PACKAGE and path.name == "__init__.py":
            continue
        here = _area(path)
        for line, target, module in _imported_areas(path):
            if target == "cli" or (target in LAYERS and LAYERS[target] > LAYERS[here]):
                if here != "cli":
                    upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({here}) imports {module}")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a kernels module importing rklu.training is reported."""
    fake = tmp_path / "rklu"
    (fake / "kernels").mkdir(parents=True)
    (fake / "kernels" / "bad.py").write_text("def f():\n    from rklu.training import stages\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    try:
        test_no_import_runs_up_a_layer()
    except AssertionError as error:
        assert "rklu/kernels/bad.py:2 (kernels) imports rklu.training" in str(error)
    else:
        raise AssertionError("an upward import went unnoticed")
