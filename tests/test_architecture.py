"""The floor plan in ARCHITECTURE.md, checked: imports go one way, down the floors, with no
circles (function-local imports included: a deferred import is still a dependency), and no two
classes share a name."""

import ast
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# Bottom to top. A module may import its own unit (package or module) and any unit on a lower floor.
FLOORS = [
    ["tunery", "errors", "files", "home", "progress"],  # ground: no tunery imports but each other
    ["run_folder"],  # a run's files and run.json
    ["config"],  # the typed recipe
    ["registry"],  # storage: SQLite, content hashes, the jobs table
    ["models"],  # resolving references (ft: names through the registry), loading
    ["data"],  # formats, templates, masks, the data doctor
    ["retrieval"],  # document indexes: chunks, BM25 and embeddings, registered by name
    ["metrics", "generation", "constrain"],
    ["training"],
    ["evaluate"],
    ["workflows"],  # re-running a recorded recipe: retrain, reeval, stale bases
    ["serve", "export"],
    ["cli_output"],  # how the command line talks: --json, --quiet, progress bars, one-line errors
    ["cli_registry", "cli_index"],
    ["cli"],
    ["__main__"],  # python -m tunery: what launchers (torchrun, accelerate launch) start
]
FLOOR_OF = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "tunery").rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                if full in modules:
                    found.add(full)
                elif target in modules:
                    found.add(target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "tunery"


def test_every_unit_has_a_floor():
    units = {_unit(m) for m in _modules()}
    assert units <= set(FLOOR_OF), f"add these to FLOORS (and ARCHITECTURE.md): {sorted(units - set(FLOOR_OF))}"


def test_imports_go_down_the_floors():
    wrong = []
    for module, deps in _graph().items():
        for dep in deps:
            a, b = _unit(module), _unit(dep)
            if a != b and FLOOR_OF[b] >= FLOOR_OF[a]:
                wrong.append(f"{module} imports {dep} (floor {FLOOR_OF[a]} -> {FLOOR_OF[b]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import circles: {cycles}"


def test_no_two_classes_share_a_name():
    where = defaultdict(list)
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                where[node.name].append(name)
    assert not {k: v for k, v in where.items() if len(v) > 1}


def test_the_run_folder_layout_is_spelled_once():
    """Only run_folder.py names the files of a run folder."""
    offenders = []
    for name, path in _modules().items():
        if name == "tunery.run_folder":
            continue
        text = path.read_text()
        offenders += [f"{name}: {lit}" for lit in ('"run.json"', '"config.yaml"', '"metrics.jsonl"', '"step-')
                      if lit in text]
    assert not offenders, offenders


def test_scripts_import_what_exists():
    """examples/ and bench/ call the package as users do: every name they import from it exists."""
    import importlib

    root = SRC.parent
    missing = []
    for path in [*(root / "examples").rglob("*.py"), *(root / "bench").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("tunery"):
                try:
                    module = importlib.import_module(node.module)
                except ImportError as exc:
                    missing.append(f"{path.relative_to(root)}: {node.module} ({exc})")
                    continue
                missing += [f"{path.relative_to(root)}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(module, a.name) and not _is_module(f"{node.module}.{a.name}")]
    assert not missing, missing


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
