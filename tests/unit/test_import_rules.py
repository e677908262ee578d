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


def imports_of(package: str, root: Path = SERVICES_DIR) -> Iterator[tuple[str, str]]:
    """(module file, imported `services.*` module) for every import under `package`, inside
    functions too."""
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
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
    """Planted in a package of its own: a top-level import, one inside a function, a plain
    `import`, and a relative one (not a `services.*` name, so not counted)."""
    package = tmp_path / "services" / "ingest"
    package.mkdir(parents=True)
    (package / "planted.py").write_text(
        "import services.poller.schedule\n"
        "from . import sibling\n"
        "def f():\n    from services.writer.repository import JournalRepository\n"
    )
    found = packages_imported("ingest", tmp_path / "services")
    assert found == {
        ("services/ingest/planted.py", "poller"),
        ("services/ingest/planted.py", "writer"),
    }
