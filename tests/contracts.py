"""An import-linter contract of this project's own (``lint-imports`` loads it from pyproject):
a name starting with an underscore may be imported only from a module of the same package, so
what a package keeps private cannot become another package's dependency."""

from __future__ import annotations

import ast
import importlib.util

from importlinter import Contract, ContractCheck, fields, output


class PrivateNamesContract(Contract):
    """``from a.b.c import _x`` is refused unless the importing module is in package ``a.b``."""

    type_name = "private_names"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:
        found = []
        for module in sorted(graph.modules):
            if not module.startswith(tuple(self.packages)):
                continue
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.origin or not spec.origin.endswith(".py"):
                continue
            with open(spec.origin) as f:
                tree = ast.parse(f.read())
            package = module if spec.origin.endswith("__init__.py") else module.rpartition(".")[0]
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or not node.module or node.level:
                    continue
                source_package = node.module.rpartition(".")[0] or node.module
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and source_package != package:
                        found.append((module, node.lineno, node.module, alias.name))
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for module, line, source, name in check.metadata["found"]:
            output.print_error(
                f"{module}:{line} imports the private {name} from {source}: make it public "
                "there, or move the code that needs it into that package",
                bold=False,
            )
            output.new_line()
