"""The package's shape, read from its files: no import circle, no module importing a layer above it, and a
function-level import only where it defers a heavy library on purpose (with a comment saying so).

docs/architecture.md draws the same layers.
"""

import ast
import os
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "facemtl"

# Bottom to top. A module may import its own layer or those below. The longest matching entry places a module:
# `a.b` is that module and everything under it, `a.b.` only what is under it, `=a` that module alone.
LAYERS = [
    ("base", ["facemtl.errors", "facemtl.labels", "facemtl.files", "facemtl.quiet", "facemtl.pretrained",
              "facemtl.images", "facemtl.media"]),
    ("records and runtimes", ["facemtl.config", "facemtl.preprocessing", "facemtl.litert", "facemtl.faces.detection",
                              "facemtl.export.metadata", "facemtl.faces.align", "facemtl.recognition.open_set", "facemtl.recognition.metrics",
                              "facemtl.faces", "facemtl.recognition", "facemtl.export",
                              "facemtl.models", "facemtl.data"]),  # the packages' own __init__ files import nothing heavy
    ("faces", ["facemtl.faces.blazeface", "facemtl.faces.detect", "facemtl.faces.graph",
               "facemtl.faces.align_folder"]),
    ("models, data and metrics", ["facemtl.models.", "facemtl.data.", "facemtl.evaluation"]),
    ("export", ["facemtl.export."]),
    ("training and loading", ["facemtl.training", "facemtl.installed"]),
    ("inference", ["facemtl.inference"]),
    ("recognition", ["facemtl.recognition.", "facemtl.scoring"]),
    ("applications", ["facemtl.pipelines", "facemtl.serving", "facemtl.annotate"]),
    ("command line", ["facemtl.cli", "facemtl.__main__", "=facemtl"]),
]
# Third-party libraries a module defers when a command may not need them (startup time, optional extras).
HEAVY = {"tensorflow", "keras", "apache_beam", "fastapi", "fastapi_offline", "starlette", "uvicorn", "pymilvus",
         "milvus_lite", "matplotlib", "mtcnn", "pyarrow", "tensorflow_datasets", "dlib", "face_recognition"}
# Lazy by design: each command imports its modules when it runs (`facemtl --version` answers in ~0.1 s), and the
# packages' `__getattr__` re-exports.
LAZY_BY_DESIGN = {"facemtl.cli", "facemtl", "facemtl.export", "facemtl.serving", "facemtl.models",
                  "facemtl.pipelines"}


def modules():
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "docs" in path.relative_to(PACKAGE).parts:  # docs/architecture.py draws a picture; it is not imported
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = modules()


def _owner(name):
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports():
    """`(importer, imported, line, at_top, source_lines, named)` for every import between facemtl modules.

    Importing `a.b.c` runs `a/__init__` and `a/b/__init__` first: those count as imported too (`named` False).
    """
    edges = []
    for mod, path in MODULES.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text)
        top = {id(n) for n in tree.body}
        lines = text.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names]
            else:
                continue
            for name in names:
                target = _owner(name) if name.startswith("facemtl") else ""
                parts = target.split(".") if target else []
                for k in range(1, len(parts) + 1):
                    dep = ".".join(parts[:k])
                    if dep in MODULES and dep != mod and not mod.startswith(dep + "."):
                        edges.append((mod, dep, node.lineno, id(node) in top, lines, dep == target))
    return edges


EDGES = imports()


def layer(mod):
    best, rank = "", None
    for i, (_, entries) in enumerate(LAYERS):
        for e in entries:
            if e.startswith("="):
                hit = mod == e[1:]
            elif e.endswith("."):
                hit = mod.startswith(e)
            else:
                hit = mod == e or mod.startswith(e + ".")
            if hit and len(e) > len(best):
                best, rank = e, i
    if rank is None:
        raise AssertionError(f"{mod} is in no layer of tests/test_architecture.py: place it")
    return rank


def test_every_module_has_a_layer():
    for mod in MODULES:
        layer(mod)


def test_no_import_circle():
    graph = {}
    for a, b, *_ in EDGES:
        graph.setdefault(a, set()).add(b)
    state, stack, circles = {}, [], []

    def visit(node):  # depth-first search; a grey node met again closes a circle
        state[node] = "grey"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "grey":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_no_module_imports_a_layer_above_its_own():
    # A package's lazy `__getattr__` may import its own modules (`facemtl.export.export_saved_model`).
    upward = sorted({f"{a}:{line} imports {b} ({LAYERS[layer(a)][0]} -> {LAYERS[layer(b)][0]})"
                     for a, b, line, *_ in EDGES if layer(b) > layer(a) and not b.startswith(a + ".")})
    assert not upward, "\n".join(upward)


def _heavy_at_import():
    """What each module's import loads of `HEAVY`, following facemtl's module-level imports."""
    own = {}
    for mod, path in MODULES.items():
        found = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.add(node.module.split(".")[0])
        own[mod] = found & HEAVY
    deps = {}
    for a, b, _, at_top, *_ in EDGES:
        if at_top:
            deps.setdefault(a, set()).add(b)
    memo = {}

    def heavy(mod):
        if mod not in memo:
            memo[mod] = set(own[mod])
            for dep in deps.get(mod, ()):
                memo[mod] |= heavy(dep)
        return memo[mod]

    return {mod: frozenset(heavy(mod)) for mod in MODULES}


def test_function_level_imports_only_defer_heavy_libraries_and_say_so():
    heavy = _heavy_at_import()
    wrong = []
    for a, b, line, at_top, lines, named in EDGES:
        if at_top or not named or a in LAZY_BY_DESIGN:
            continue
        deferred = heavy[b] - heavy[a]
        said = "#" in lines[line - 1] or lines[line - 2].strip().startswith("#")
        if not deferred:
            wrong.append(f"{a}:{line} imports {b} inside a function, deferring nothing heavy: import it at the top")
        elif not said:
            wrong.append(f"{a}:{line} defers {b} ({', '.join(sorted(deferred))}) without a comment saying why")
    assert not wrong, "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("mod", ["facemtl.models.presets", "facemtl.litert", "facemtl.config", "facemtl.evaluation"])
def test_the_review_s_upward_imports_stay_gone(mod):
    """The import circles of the review (docs/architecture.md): a model layer importing training, a runtime the
    exporter, the schema a detector, the metrics library the front end."""
    above = {"facemtl.models.presets": ("facemtl.training", "facemtl.installed", "facemtl.inference"),
             "facemtl.litert": ("facemtl.export",),
             "facemtl.config": ("facemtl.faces.detect", "facemtl.faces.blazeface"),
             "facemtl.evaluation": ("facemtl.inference", "facemtl.installed")}[mod]
    bad = [b for a, b, *_ in EDGES if a == mod and any(b == x or b.startswith(x + ".") for x in above)]
    assert not bad and os.path.isfile(MODULES[mod])


def test_the_photo_path_loads_no_tensorflow_at_import():
    """`pip install facemtl` answers photos without TensorFlow (docs/install.md): a module-level import that reached
    an exporter or a trainer would break that silently."""
    photo_path = ["facemtl.inference", "facemtl.installed", "facemtl.models.presets", "facemtl.litert",
                  "facemtl.faces.detect", "facemtl.recognition.gallery", "facemtl.recognition.clustering",
                  "facemtl.recognition.enrolment", "facemtl.recognition.calibration", "facemtl.pipelines.analyze",
                  "facemtl.pipelines.enroll", "facemtl.serving.model", "facemtl.cli"]
    heavy = _heavy_at_import()
    loads = {m: sorted(heavy[m] & {"tensorflow", "keras"}) for m in photo_path if heavy[m] & {"tensorflow", "keras"}}
    assert not loads, loads


def test_test_modules_share_helpers_only_through_tests_helpers():
    tests = PACKAGE.parent / "tests"
    wrong = []
    for path in tests.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            wrong += [f"{path.relative_to(tests)}:{node.lineno} imports {n}" for n in names
                      if n.startswith("tests") and n != "tests.helpers"]
    assert not wrong, "\n".join(wrong)
