"""An import-linter contract of the project's own (pyproject.toml ``[tool.importlinter]``): no circle of modules.

import-linter's ``acyclic_siblings`` judges a package whole, as one node beside its siblings; a package
such as ``core.audit`` or ``web.accounts`` holds both what a sibling imports (its services, its models) and
what imports that sibling (its admin, its API), so as packages they stand in circles that no module does.
This contract follows the modules themselves, ``TYPE_CHECKING`` imports included.
"""

from __future__ import annotations

from grimp import ImportGraph
from importlinter.application import output
from importlinter.domain.contract import Contract, ContractCheck


class AcyclicModules(Contract):
    type_name = "acyclic_modules"

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        circles: set[tuple[str, ...]] = set()
        for module in graph.modules:
            for imported in graph.find_modules_directly_imported_by(module):
                chain = graph.find_shortest_chain(importer=imported, imported=module)
                if chain is not None:  # module → imported → … → module
                    start = chain.index(min(chain))
                    circles.add(chain[start:] + chain[:start])
        return ContractCheck(kept=not circles, metadata={"circles": sorted(circles)})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for circle in check.metadata["circles"]:
            output.print_error(" → ".join((*circle, circle[0])))
            output.new_line()
