"""Who may import whom, so that each folder can be read on its own.

No test module imports another (what two of them share lives in tests/tiny_runs.py or
tests/conftest.py); the benchmarks (benchmarks/) and the scripts users run (scripts/,
data/make_corpus.py) use only the public names of `transformer`, and import no other
benchmark or script: a benchmark imports `benchmarks.common`, its one shared module.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SCRIPTS = ROOT / "scripts"
PROGRAMS = [*sorted(BENCHMARKS.glob("*.py")), *sorted(SCRIPTS.glob("*.py"))]
PROGRAMS.append(ROOT / "data" / "make_corpus.py")


@dataclass(frozen=True)
class Import:
    """One import statement: its line, the module, the names taken from it, those it binds."""

    line: int
    module: str
    names: tuple[str, ...]  # `from module import names`; empty for `import module`
    bound: tuple[str, ...]  # the names the file then holds (`as` names included)


def imports(path: Path, package: str = "") -> list[Import]:
    """Every import in the file, at any depth (inside functions too); relative imports are
    resolved against `package`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                found.append(Import(node.lineno, alias.name, (), (bound,)))
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(filter(None, [package, module]))
            names = tuple(alias.name for alias in node.names)
            bound = tuple(alias.asname or alias.name for alias in node.names)
            found.append(Import(node.lineno, module, names, bound))
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(path: Path) -> list[str]:
    """The private names of `transformer` the file reaches: imported from it, a private
    module of it, or an attribute `_x` of something imported from it."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found, bound = [], set()
    for item in imports(path):
        if item.module.split(".")[0] != "transformer":
            continue
        where = f"{path.relative_to(ROOT)}:{item.line}"
        found += [f"{where} {item.module}" for part in item.module.split(".") if is_private(part)]
        found += [f"{where} {item.module}.{name}" for name in item.names if is_private(name)]
        bound.update(item.bound)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in bound:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {base.id}...{node.attr}")
    return found


def test_no_test_module_imports_another_test_module() -> None:
    found = [
        f"{path.name}:{item.line} imports {item.module}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for item in imports(path)
        if item.module.split(".")[0].startswith("test_")
    ]
    assert found == [], "move what they share to tests/tiny_runs.py or tests/conftest.py"


def test_benchmarks_and_scripts_use_only_public_names_of_the_package() -> None:
    assert len(PROGRAMS) > 8
    found = [use for path in PROGRAMS for use in private_uses(path)]
    assert found == [], "make the name public (with a docstring), or compute it in the program"


def test_no_test_module_imports_a_private_name_of_the_package() -> None:
    """Tests go through the names a user has: what they need is made public, documented."""
    found = [
        f"{path.name}:{item.line} {item.module} {' '.join(item.names)}"
        for path in sorted((ROOT / "tests").glob("*.py"))
        for item in imports(path)
        if item.module.split(".")[0] == "transformer"
        and (any(map(is_private, item.module.split("."))) or any(map(is_private, item.names)))
    ]
    assert found == []


def test_a_benchmark_imports_no_other_benchmark_or_script_but_benchmarks_common() -> None:
    siblings = {path.stem for path in PROGRAMS} | {"benchmarks", "scripts"}
    found = []
    for path in PROGRAMS:
        package = "benchmarks" if path.parent == BENCHMARKS else ""
        for item in imports(path, package):
            modules = [item.module, *(f"{item.module}.{name}" for name in item.names)]
            if item.module.split(".")[0] not in siblings:
                continue
            if path.parent == BENCHMARKS and item.module == "benchmarks.common":
                continue
            found.append(f"{path.relative_to(ROOT)}:{item.line} imports {' '.join(modules)}")
    assert found == []


def test_benchmarks_live_apart_from_the_scripts_users_run() -> None:
    assert sorted(SCRIPTS.glob("benchmark*")) == []
    assert (BENCHMARKS / "common.py").is_file()
