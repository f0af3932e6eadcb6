"""The shape of the house: no import cycle among pipeline's modules, no private name taken across
subpackages, no lower layer importing a higher one, a test file for every module with logic.

Every module under pipeline/ is parsed with `ast` (nothing is imported), so imports inside
functions count as much as the ones at the top of a file: a lazy import still ties two modules.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline"
TESTS = REPO / "tests"

# From the bottom up; "core" is the modules directly in pipeline/. A module may import its own layer
# and the layers below it, never one above.
LAYERS = ("core", "decode", "backbones", "store", "dataset", "featurizer", "engines", "heads", "training", "audit", "scoring", "export",
          "serving", "reports", "cli")
# pipeline/__init__.py re-exports names lazily and __main__.py runs the command line: both sit above everything.
EXEMPT = {"pipeline", "pipeline.__main__"}

# Allowed exceptions, each with its reason (an entry that no longer happens fails the test, so a fix
# cannot leave a stale one behind).
KNOWN_CYCLES: set[frozenset[str]] = set()  # none: keep it so
KNOWN_PRIVATE: set[tuple[str, str]] = set()  # (importer, "module._name"); none: keep it so
KNOWN_LAYERING: set[tuple[str, str]] = {  # (importer, imported)
    # The one upward call, on purpose: Classifier.export() is a convenience for Python users that imports
    # the exporter lazily (the export itself lives in export/, which never imports heads.classifier).
    ("pipeline.heads.classifier", "pipeline.export.exporter"),
    # Classifier.estimator: a loaded head rebuilt as the scikit-learn estimator that trains heads (get_params,
    # clone), on first use, for Python users; nothing in scoring or serving calls it.
    ("pipeline.heads.classifier", "pipeline.training.estimator"),
}
COVERED_ELSEWHERE: dict[str, str] = {
    "pipeline.backbones.base": "tests/backbones/test_backbones.py",  # layer aliases, padding, every kind alike
    "pipeline.backbones.graph": "tests/backbones/test_backbones.py",
    "pipeline.backbones.keras_apps": "tests/backbones/test_keras_backend.py",
    "pipeline.backbones.tflite": "tests/backbones/test_backbones.py",
    "pipeline.cli.arguments": "tests/core/test_options.py",  # settings dataclasses <-> flags
    "pipeline.cli.commands": "tests/cli/test_end_to_end.py",
    "pipeline.cli.subparsers": "tests/cli/test_parser.py",  # every command's flags, their help, did-you-mean
    "pipeline.dataset.labels": "tests/realdata/test_real_world.py",  # CSV labels; multi-label tags in test_multilabel
    "pipeline.dataset.sources": "tests/engines/test_ray.py",  # s3:// listings and reads (moto)
    "pipeline.dataset.splits": "tests/realdata/test_real_world.py",
    "pipeline.decode.tfresize": "tests/decode/test_tfdecode.py",  # TensorFlow resize == Pillow resize
    "pipeline.engines.local": "tests/featurizer/test_resume.py",  # every local run; kill -9 and resume
    "pipeline.engines.report": "tests/engines/test_base.py",  # what a run reports
    "pipeline.export.exporter": "tests/export/test_export.py",
    "pipeline.export.info": "tests/export/test_export.py",
    "pipeline.export.tfhead": "tests/export/test_export.py",
    "pipeline.export.tflitejoin": "tests/export/test_export.py",
    "pipeline.featurizer.committer": "tests/featurizer/test_mapper.py",
    "pipeline.featurizer.prepare": "tests/featurizer/test_decodepool.py",
    "pipeline.heads.arrayhead": "tests/heads/test_headfile.py",
    "pipeline.heads.classifier": "tests/training/test_estimator.py",
    "pipeline.hints": "tests/cli/test_first_hour.py",
    "pipeline.logs": "tests/cli/test_first_hour.py",
    "pipeline.preprocess": "tests/backbones/test_registry.py",  # one preprocessing rule for every kind
    "pipeline.progress": "tests/cli/test_first_hour.py",
    "pipeline.reports.multilabel": "tests/training/test_multilabel.py",
    "pipeline.reports.screenshot": "tests/cli/test_first_hour.py",
    "pipeline.scoring.batch": "tests/scoring/test_scoring.py",
    "pipeline.store.pieces": "tests/store/test_store_integrity.py",  # damaged parts and segments
    "pipeline.store.opening": "tests/store/test_store.py",  # a store made otherwise, another run, --overwrite
    "pipeline.store.reader": "tests/store/test_store.py",
    "pipeline.store.writer": "tests/store/test_store.py",
    "pipeline.store.copies": "tests/store/test_store_segments.py",  # and tests/featurizer/test_reader.py
    "pipeline.serving.batcher": "tests/serving/test_serve.py",  # requests batched together, timed-out ones dropped
    "pipeline.serving.limits": "tests/serving/test_serve.py",  # every limit and its refusal
    "pipeline.serving.requests": "tests/serving/test_serve.py",  # raw and multipart bodies, budgets' shares, 422s
}
LOGIC_LINES = 40  # code lines (not blank, not comments, not the module docstring) that make a module "with logic"


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # the pipeline module the import reaches
    name: str | None  # the name taken from it (None for `import x` or when the name is itself a module)
    line: int

    def where(self) -> str:
        return f"{self.importer} (line {self.line})"


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (a package is its __init__.py)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def owning_module(dotted: str) -> str | None:
    """The longest prefix of `dotted` that is one of our modules."""
    while dotted:
        if dotted in modules():
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def absolute(importer: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@cache
def imports() -> tuple[Import, ...]:
    """Every import of a pipeline module by a pipeline module, wherever it stands in the file."""
    found = []
    for importer, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = owning_module(alias.name)
                    if target:
                        found.append(Import(importer, target, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                source = absolute(importer, node)
                if owning_module(source) is None:
                    continue
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules():  # `from .pkg import module`
                        found.append(Import(importer, f"{source}.{alias.name}", None, node.lineno))
                    else:
                        found.append(Import(importer, owning_module(source), alias.name, node.lineno))
    return tuple(found)


def defining_module(module: str, name: str, seen=()) -> str:
    """Where `module.name` comes from: a package's __init__ re-exporting `from .x import name` leads to x."""
    if not is_package(module) or (module, name) in seen:
        return module
    for imp in imports():
        if imp.importer == module and imp.name == name and imp.target != module:
            return defining_module(imp.target, name, seen + ((module, name),))
    return module


def edges() -> dict[str, set[str]]:
    """importer -> the modules it depends on (names re-exported by a package count for the module defining them)."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in imports():
        target = defining_module(imp.target, imp.name) if imp.name else imp.target
        if target != imp.importer:
            graph[imp.importer].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative; the components of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    found.append(component)
    return found


def cycle_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One cycle through the component, as the chain of imports: a -> b -> ... -> a."""
    start = min(component)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first: the shortest way back to start
        node = queue.pop(0)
        for child in sorted(graph[node] & component):
            if child == start:
                return paths[node] + [start]
            if child not in paths:
                paths[child] = paths[node] + [child]
                queue.append(child)
    return sorted(component)


def group(module: str) -> str:
    """The subpackage a module belongs to; modules directly in pipeline/ form 'core'."""
    parts = module.split(".")
    if len(parts) >= 3 or (len(parts) == 2 and is_package(module)):
        return parts[1]
    return "core"


def private_imports() -> list[tuple[Import, str]]:
    """(import, 'module._name') for a _private name taken from a module of another group, by `from m import _x`
    or by `m._x` on a module bound by an import."""
    found = []
    for imp in imports():
        if imp.name and is_private(imp.name):
            origin = defining_module(imp.target, imp.name)
            if group(origin) != group(imp.importer) and imp.importer not in EXEMPT:
                found.append((imp, f"{origin}.{imp.name}"))
    for importer, path in modules().items():
        if importer in EXEMPT:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        bound = module_aliases(importer, tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and is_private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in bound and group(bound[node.value.id]) != group(importer)):
                found.append((Import(importer, bound[node.value.id], node.attr, node.lineno),
                              f"{bound[node.value.id]}.{node.attr}"))
    return found


def module_aliases(importer: str, tree: ast.AST) -> dict[str, str]:
    """Local names bound to pipeline modules: `import pipeline.x.y as m`, `from ..x import y` (y a module)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules():
                    bound[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = absolute(importer, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules():
                    bound[alias.asname or alias.name] = f"{source}.{alias.name}"
    return bound


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def layer_violations() -> list[Import]:
    found = []
    for imp in imports():
        if imp.importer in EXEMPT or imp.target in EXEMPT:
            continue
        target = defining_module(imp.target, imp.name) if imp.name else imp.target
        if LAYERS.index(group(target)) > LAYERS.index(group(imp.importer)):
            found.append(Import(imp.importer, target, imp.name, imp.line))
    return found


# ---- the rules -----------------------------------------------------------------------------------
def test_every_subpackage_has_a_layer():
    groups = {group(m) for m in modules() if m not in EXEMPT}
    assert groups <= set(LAYERS), f"subpackages without a place in LAYERS: {sorted(groups - set(LAYERS))}"


def test_no_import_cycles():
    graph = edges()
    cycles = {frozenset(c): " -> ".join(cycle_path(graph, c)) for c in strongly_connected(graph)}
    new = [path for c, path in cycles.items() if c not in KNOWN_CYCLES]
    assert not new, "import cycles (imports inside functions count):\n  " + "\n  ".join(sorted(new))
    gone = KNOWN_CYCLES - set(cycles)
    assert not gone, f"no longer cycles, remove them from KNOWN_CYCLES: {[sorted(c) for c in gone]}"


def test_no_private_name_taken_from_another_subpackage():
    found = private_imports()
    new = sorted({f"{imp.where()} takes {name}" for imp, name in found if (imp.importer, name) not in KNOWN_PRIVATE})
    assert not new, "private names taken across subpackages:\n  " + "\n  ".join(new)
    gone = KNOWN_PRIVATE - {(imp.importer, name) for imp, name in found}
    assert not gone, f"no longer taken, remove them from KNOWN_PRIVATE: {sorted(gone)}"


def test_no_lower_layer_imports_a_higher_one():
    found = layer_violations()
    new = sorted({f"{imp.where()} [{group(imp.importer)}] imports {imp.target} [{group(imp.target)}]"
                  for imp in found if (imp.importer, imp.target) not in KNOWN_LAYERING})
    assert not new, f"imports against the layer order {' < '.join(LAYERS)}:\n  " + "\n  ".join(new)
    gone = KNOWN_LAYERING - {(imp.importer, imp.target) for imp in found}
    assert not gone, f"no longer happening, remove them from KNOWN_LAYERING: {sorted(gone)}"


def code_lines(path: Path) -> int:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = set()
    if tree.body and isinstance(tree.body[0], ast.Expr) and isinstance(tree.body[0].value, ast.Constant):
        skip = set(range(tree.body[0].lineno, tree.body[0].end_lineno + 1))
    return sum(1 for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
               if i not in skip and line.strip() and not line.lstrip().startswith("#"))


def mirrored_test(module: str) -> Path:
    """tests/<group>/test_<module>.py; a package's __init__ is tests/<package>/test_<package>.py."""
    return TESTS / group(module) / f"test_{module.rsplit('.', 1)[-1]}.py"


def test_every_module_with_logic_has_a_test_file():
    with_logic = {m for m, path in modules().items() if m not in EXEMPT and code_lines(path) > LOGIC_LINES}
    missing = sorted(f"{m} ({code_lines(modules()[m])} code lines): no {mirrored_test(m).relative_to(REPO)}"
                     for m in with_logic if not mirrored_test(m).exists() and m not in COVERED_ELSEWHERE)
    assert not missing, "modules without tests (add the file, or say where they are tested in COVERED_ELSEWHERE):\n  " \
        + "\n  ".join(missing)


@pytest.mark.parametrize("module,test_file", sorted(COVERED_ELSEWHERE.items()))
def test_covered_elsewhere_entries_are_real(module, test_file):
    assert module in modules(), f"{module} is no longer a module of the package"
    assert (REPO / test_file).is_file(), f"{test_file}, said to test {module}, does not exist"
    assert not mirrored_test(module).exists(), f"{module} now has {mirrored_test(module).relative_to(REPO)}: drop it"


def test_the_cycle_finder_names_a_planted_cycle_and_its_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    found = sorted(map(sorted, strongly_connected(graph)))
    assert found == [["a", "b", "c"], ["e"]]
    assert cycle_path(graph, {"a", "b", "c"}) == ["a", "b", "c", "a"]
