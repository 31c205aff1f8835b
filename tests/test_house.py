"""The house drawn from bnjax's imports: no import runs back up (the graph, function-level
imports included, has no cycle), plotting lives in bnjax/figures.py, and no large module mixes
parsing, reporting and plotting; and a run does not pull PyTorch in through TensorBoard."""
import ast
import os
import subprocess
import sys

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bnjax")
LARGE = 300  # lines


def _modules() -> dict:
    """{dotted name: path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def _imported(path: str, name: str, modules: dict) -> set:
    """Every module this one imports, bnjax's by dotted name and others by top-level name."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                names.add(full if full in modules or not base.startswith("bnjax") else base)
    # other packages by their full and top-level names (absl.flags and absl)
    return ({n for n in names if n in modules}
            | {n for n in names if n not in modules}
            | {n.split(".")[0] for n in names if n not in modules}) - {name}


def _graph() -> dict:
    modules = _modules()
    return {name: _imported(path, name, modules) for name, path in modules.items()}


def _cycle(graph: dict) -> list | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in sorted(c for c in graph[node] if c in graph):
            if state.get(child) == "open":
                return stack[stack.index(child):] + [child]
            if child not in state and (found := visit(child)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_runs_back_up():
    graph = _graph()
    assert len(graph) > 40  # the walk found the package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def _jobs(imports: set) -> set:
    jobs = set()
    if imports & {"argparse", "absl.flags", "ml_collections.config_flags"}:
        jobs.add("parse")
    if imports & {"bnjax.tables"}:
        jobs.add("report")
    if imports & {"matplotlib", "bnjax.figures"}:
        jobs.add("plot")
    return jobs


def test_plotting_lives_in_figures_and_no_large_module_mixes_jobs():
    graph, modules = _graph(), _modules()
    assert [name for name, imports in graph.items() if "matplotlib" in imports] == [
        "bnjax.figures"]
    for name, path in modules.items():
        lines = sum(1 for _ in open(path))
        jobs = _jobs(graph[name])
        assert lines <= LARGE or len(jobs) <= 1, f"{name}: {lines} lines doing {sorted(jobs)}"


def test_the_tensorboard_writer_leaves_torch_unimported(tmp_path):
    """tensorboardX imports torch whenever it is installed (1.5 s, 190 MB); bnjax's writer
    keeps it out, and `import torch` still works afterwards. A stand-in torch package records
    each import of it."""
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch_imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('x')\nSTAND_IN = True\n")
    script = f"""
import os, sys
from bnjax.metrics import summary_writer
summary_writer({str(tmp_path / 'tb')!r}, None).close()
assert "torch" not in sys.modules and not os.path.exists({str(marker)!r})
import torch
assert torch.STAND_IN
"""
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    result = subprocess.run([sys.executable, "-c", script], env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert marker.read_text() == "x"
    assert os.listdir(tmp_path / "tb")  # the event file
