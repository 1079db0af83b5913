"""The package's shape, measured from its source: modules, lines, import levels, and which stage imports which.

    python benchmarks/layout.py              # table of modules with their level and lines, then a summary
    python benchmarks/layout.py --json       # the same as one JSON object

An import is any ``import ticketctl...`` / ``from ticketctl... import`` statement anywhere in a file (also inside a
function: a lazy import is still a dependency). A module's level is 1 when it imports nothing of the package, else one
more than the highest level among what it imports; a cycle is reported as an error. ``tests/test_layout.py`` holds
the rules this measures (levels, no stage importing another, no torch in the analysis commands).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ticketctl"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(package modules this file imports, top-level third-party packages it imports)."""
    tree = ast.parse(path.read_text())
    inner, outer = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                (inner if alias.name in known else outer).add(alias.name if alias.name in known
                                                              else alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "ticketctl":
                outer.add(node.module.split(".")[0])
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                inner.add(sub if sub in known else node.module)
    return inner, outer


def measure(package: Path = PACKAGE) -> dict:
    known = modules(package)
    deps = {m: imports(p, known) for m, p in known.items()}
    level: dict[str, int] = {}

    def floor(m: str, trail: tuple = ()) -> int:
        if m in trail:
            raise SystemExit(f"import cycle: {' -> '.join(trail + (m,))}")
        if m not in level:
            inner = [d for d in deps[m][0] if d != m]
            level[m] = 1 + max((floor(d, trail + (m,)) for d in inner), default=0)
        return level[m]

    rows = []
    for m, p in known.items():
        rows.append({"module": m, "level": floor(m), "lines": len(p.read_text().splitlines()),
                     "imports": sorted(deps[m][0]), "third_party": sorted(deps[m][1])})
    return {"modules": len(rows), "lines": sum(r["lines"] for r in rows), "levels": max(r["level"] for r in rows),
            "rows": sorted(rows, key=lambda r: (-r["level"], r["module"]))}


def main() -> None:
    result = measure()
    if "--json" in sys.argv:
        print(json.dumps(result, indent=1))
        return
    for r in result["rows"]:
        print(f"{r['level']:3}  {r['lines']:5}  {r['module']}")
    print(f"{result['modules']} modules, {result['lines']} lines, {result['levels']} import levels")


if __name__ == "__main__":
    main()
