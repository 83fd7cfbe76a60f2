"""The import graph keeps its shape (pyproject.toml ``[tool.importlinter]``, also run by ``make lint``): the
domains lean on the core and never the reverse, no domain imports another, and no module imports itself
back through others."""

import subprocess
import sys
from pathlib import Path

from django.conf import settings
from grimp import ImportGraph

from tests.import_contracts import AcyclicModules


def test_the_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    run = subprocess.run(
        [lint_imports, "--no-cache", "--no-logo"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


def test_a_circle_of_modules_breaks_the_acyclic_contract():
    graph = ImportGraph()
    for importer, imported in [("core.kick", "core.tasks"), ("core.tasks", "core.services"), ("core.api", "core.kick")]:
        graph.add_import(importer=importer, imported=imported)
    contract = AcyclicModules(name="acyclic", session_options={}, contract_options={})
    assert contract.check(graph, verbose=False).kept

    graph.add_import(importer="core.services", imported="core.kick")  # function-local or not: an import
    check = contract.check(graph, verbose=False)

    assert not check.kept
    assert check.metadata["circles"] == [("core.kick", "core.tasks", "core.services")]
