"""The package's layout holds: every module imports on its own (no import circle), the pure modules
pull in neither Ray nor the kubernetes client nor torch, and only the CLI package imports the CLI."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "orchestrator"
# Planning and rendering that must run anywhere (no cluster, no accelerator libraries), and be testable without Ray.
PURE = (
    "orchestrator.spec",
    "orchestrator.train.plan",
    "orchestrator.tune.plan",
    "orchestrator.serve.plan",
    "orchestrator.submit.plan",
    "orchestrator.k8s.render",
    "orchestrator.data.preprocess",
    "orchestrator.data.text",
    "orchestrator.data.sequences",
    "orchestrator.train.metrics",
    "orchestrator.data.preflight",
    "orchestrator.data.starter",
    "orchestrator.batch.plan",
)
HEAVY = ("ray", "kubernetes", "torch")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module_name(p) for p in PACKAGE.rglob("*.py"))


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _in_parallel(fn, items) -> list:
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(fn, items))


def test_the_layout_has_its_rooms():
    for name in (
        "cli.main",
        "cli.common",
        "errors",
        "data.ingest",
        "models.build",
        "train.loop",
        "train.driver",
        "train.checkpoint",
        "tune.search",
        "serve.app",
        "serve.deployment",
        "serve.client",
        "submit.client",
        "submit.local_cluster",
        "k8s.client",
        *(m.removeprefix("orchestrator.") for m in PURE),
    ):
        assert f"orchestrator.{name}" in MODULES, name


# One interpreter loads the third-party libraries once, then forks a child per module; each child
# imports its module first, with no orchestrator module loaded yet, which is what finds a circle.
FORK_IMPORTS = r"""
import importlib, json, os, sys, traceback
for lib in ("ray", "ray.train", "ray.tune", "ray.serve", "ray.data", "torch", "pandas", "pyarrow", "fastapi",
            "typer", "rich", "kubernetes", "pydantic", "yaml", "matplotlib", "sklearn"):
    importlib.import_module(lib)
assert not any(m == "orchestrator" or m.startswith("orchestrator.") for m in sys.modules)
failed = {}
for name in json.loads(sys.argv[1]):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            importlib.import_module(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        message = f.read().decode()
    _, status = os.waitpid(pid, 0)
    if status:
        failed[name] = message or f"exit status {status}"
print(json.dumps(failed))
"""


def test_every_module_imports_on_its_own():
    """Each module imported first, in a process where no other orchestrator module is loaded: an
    import circle fails here whichever module it starts from."""
    r = subprocess.run([sys.executable, "-c", FORK_IMPORTS, json.dumps(MODULES)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {}


def test_pure_modules_import_neither_ray_nor_kubernetes_nor_torch():
    check = "import json, sys, {m}; print(json.dumps(sorted(k for k in {heavy!r} if k in sys.modules)))"
    results = _in_parallel(lambda m: (m, _fresh(check.format(m=m, heavy=HEAVY))), PURE)
    for m, r in results:
        assert r.returncode == 0, (m, r.stderr)
        assert json.loads(r.stdout.strip().splitlines()[-1]) == [], f"{m} imports {r.stdout.strip()}"


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports, at module level or inside functions, relative imports resolved."""
    tree, module = ast.parse(path.read_text()), _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def test_the_import_scan_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "orchestrator" / "train"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..cli import common\n    import orchestrator.cli.main\n")
    found = _imported_modules(pkg / "x.py", root=tmp_path)
    assert {"orchestrator.cli", "orchestrator.cli.common", "orchestrator.cli.main"} <= found


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_only_the_cli_imports_the_cli(path: Path):
    module = _module_name(path)
    if module == "orchestrator.cli" or module.startswith("orchestrator.cli."):
        return
    imported = _imported_modules(path)
    assert not {m for m in imported if m == "orchestrator.cli" or m.startswith("orchestrator.cli.")}, module


def test_nothing_imports_the_cli_entry_point():
    """cli/main.py assembles the app; the console script calls it and nothing else imports it."""
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "cli" / "main.py":
            continue
        imported = _imported_modules(path)
        assert "orchestrator.cli.main" not in imported, path


def _import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """module -> the package's modules it imports anywhere in its file (inside functions too)."""
    package = root / "orchestrator"
    modules = {_module_name(p, root) for p in package.rglob("*.py")}
    return {
        _module_name(p, root): {m for m in _imported_modules(p, root) if m in modules} - {_module_name(p, root)}
        for p in package.rglob("*.py")
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_counting_imports_inside_functions():
    """A function-level import only postpones a circle: the modules still depend on each other."""
    circles = _circles(_import_graph())
    assert not circles, "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_sees_one_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "orchestrator"
    pkg.mkdir()
    (pkg / "a.py").write_text("from orchestrator import b\n")
    (pkg / "b.py").write_text("def f():\n    from orchestrator.c import g\n")
    (pkg / "c.py").write_text("import orchestrator.a\n")
    (pkg / "d.py").write_text("import orchestrator.a\n")
    assert _circles(_import_graph(tmp_path)) == [["orchestrator.a", "orchestrator.b", "orchestrator.c"]]


def _private_imports(path: Path) -> list[str]:
    """`from orchestrator.x import _name` anywhere in the file (dunders such as __version__ aside)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("orchestrator"):
            out += [
                f"{node.module}.{a.name} (line {node.lineno})" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")
            ]
    return out


def test_no_module_imports_a_private_name_of_another():
    found = {str(p.relative_to(ROOT)): _private_imports(p) for p in PACKAGE.rglob("*.py")}
    assert not {k: v for k, v in found.items() if v}


# Ray's private modules and private ray.init arguments: reached from orchestrator/ray_internals.py only
RAY_PRIVATE = ("ray._private", "ray._common", "ray._raylet", "._internal", "_node_ip_address=", "_system_config=", "_temp_dir=")


def test_only_ray_internals_reaches_rays_private_apis():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "ray_internals.py":
            continue
        text = path.read_text()
        imported = _imported_modules(path)
        found += [
            f"{path.relative_to(ROOT)}: imports {m}"
            for m in sorted(imported)
            if m.startswith("ray") and ("._" in m or m.startswith("ray._"))
        ]
        found += [f"{path.relative_to(ROOT)}: {s}" for s in RAY_PRIVATE if s in text and "ray" in text]
    assert not found, "\n".join(found)
