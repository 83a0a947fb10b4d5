"""The suite's layout: shared helpers live in tests/support, never in another test module or conftest.py.

A test module imported by another is loaded twice (pytest imports it as
test_x, the import as tests.test_x) and ties the two together; conftest.py is
pytest's, for fixtures, and pytest gives those to every test without an import.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def is_test_module(module: str) -> bool:
    """tests.test_x or tests.conftest, or test_x or conftest as pytest's sys.path entry for tests/ names them."""
    name = module.removeprefix("tests.")
    return "." not in name and (name == "conftest" or name.startswith("test_"))


def absolute(node: ast.ImportFrom, path: Path) -> str:
    """The module a `from ... import` names, a relative one resolved from the file's package."""
    if not node.level:
        return node.module or ""
    package = ["tests", *path.parent.relative_to(TESTS).parts]
    return ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])


def imported_test_modules(path: Path) -> list[tuple[str, str]]:
    """Each import of a test module or conftest in the file, anywhere in it: the module, and where and how."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names if is_test_module(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            module = absolute(node, path)
            modules = [f"tests.{a.name}" for a in node.names] if module == "tests" else [module]
            modules = [name for name in modules if is_test_module(name)]
        else:
            continue
        where = f"{path.relative_to(TESTS.parent)}:{node.lineno}: {ast.unparse(node)}"
        found += [(module, where) for module in modules]
    return found


def python_files() -> list[Path]:
    return sorted(TESTS.rglob("*.py"))


def test_no_module_imports_from_a_test_module_or_conftest() -> None:
    offences = [where for path in python_files() for _, where in imported_test_modules(path)]
    assert offences == [], "shared helpers belong in tests/support:\n" + "\n".join(offences)


def test_conftest_holds_only_fixtures_and_hooks() -> None:
    tree = ast.parse((TESTS / "conftest.py").read_text(encoding="utf-8"))
    others = []
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)  # the docstring
        ):
            continue
        if isinstance(node, ast.FunctionDef) and (
            node.name.startswith("pytest_") or any("fixture" in ast.unparse(d) for d in node.decorator_list)
        ):
            continue
        others.append(f"conftest.py:{node.lineno} {ast.unparse(node).splitlines()[0]}")
    assert others == [], "move these to tests/support:\n" + "\n".join(others)
