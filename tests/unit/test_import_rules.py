"""Each service reads on its own: ingest, poller, normalizer, writer and the app's API import only
`services.shared` and themselves; the shared package imports no service; the dev stack does not
import the CLI. What two of them need lives in shared."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICES = ("ingest", "poller", "normalizer", "writer", "api")


def imported_names(node: ast.AST, package: list[str]) -> list[str]:
    """The absolute names an import statement in a module of `package` (its dotted parts) brings
    in: `from a.b import c` counts as `a.b.c`, since `c` may be a module, and a relative import is
    resolved against the package, so `from ..writer import x` is `services.writer.x`."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = package[: len(package) - node.level + 1] if node.level else []
    module = ".".join([*base, *([node.module] if node.module else [])])
    return [f"{module}.{alias.name}" for alias in node.names]


def imports_of(package: str, root: Path = SERVICES_DIR) -> Iterator[tuple[str, str]]:
    """(module file, imported `services.*` module) for every import under `package`, inside
    functions too."""
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root.parent).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in imported_names(node, parts):
                if name.startswith("services."):
                    yield str(path.relative_to(root.parent)), name


def packages_imported(package: str, root: Path = SERVICES_DIR) -> set[tuple[str, str]]:
    return {(path, name.split(".")[1]) for path, name in imports_of(package, root)}


@pytest.mark.parametrize("service", [s for s in SERVICES if (SERVICES_DIR / s).is_dir()])
def test_a_service_imports_only_shared_code_and_its_own(service: str) -> None:
    foreign = {
        (path, imported)
        for path, imported in packages_imported(service)
        if imported not in ("shared", service)
    }
    assert foreign == set()


def test_shared_code_imports_no_service_the_cli_or_the_dev_stack() -> None:
    assert {(p, i) for p, i in packages_imported("shared") if i != "shared"} == set()


def test_the_dev_stack_does_not_import_the_cli() -> None:
    assert {(p, i) for p, i in packages_imported("devstack") if i == "cli"} == set()


def test_the_rule_sees_imports_anywhere_in_a_module(tmp_path: Path) -> None:
    """Planted in a package of its own: a plain `import`, one inside a function, a service
    imported from `services` itself, one reached by a relative import climbing out of the
    package, and a relative import of a sibling (its own package: allowed)."""
    package = tmp_path / "services" / "ingest"
    package.mkdir(parents=True)
    (package / "planted.py").write_text(
        "import services.poller.schedule\n"
        "from . import sibling\n"
        "from services import normalizer\n"
        "from ..shared import envelope\n"
        "def f():\n    from services.writer.repository import JournalRepository\n"
        "def g():\n    from ..devstack.stack import DevStack\n"
    )
    found = packages_imported("ingest", tmp_path / "services")
    assert found == {
        ("services/ingest/planted.py", imported)
        for imported in ("poller", "ingest", "normalizer", "shared", "writer", "devstack")
    }
