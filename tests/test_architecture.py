"""The package's structure (issue 19): no import cycles, nothing imported upward from tuners/, no
``sys.path`` edits in the repository, no module over 500 lines, and the CLI without the assets says in one
line where to get the model."""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "loca_diffusion"
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports (at any depth of the file: lazy imports count too)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_known_edges():
    # the checks below are only as good as the graph: it must see relative, lazy and package imports
    graph = import_graph()
    assert "loca_diffusion.tuners.loca.dct" in graph["loca_diffusion.tuners.loca.ops"]
    assert "loca_diffusion.embedded.pipeline" in graph["loca_diffusion.embedded.evaluate"]  # a lazy import
    assert "loca_diffusion.data.cartoonize" in graph["loca_diffusion.embedded.edits"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_the_import_graph_has_no_cycle():
    assert find_cycle(import_graph()) is None


def test_nothing_imports_upward_from_tuners():
    upward = {
        (name, target)
        for name, targets in import_graph().items()
        if name.startswith("loca_diffusion.tuners")
        for target in targets
        if not target.startswith("loca_diffusion.tuners")
    }
    assert not upward


def test_no_sys_path_edits_in_the_repository():
    offenders = []
    for path in ROOT.rglob("*.py"):
        if any(part.startswith(".") or part in ("build", "node_modules") for part in path.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            # sys.path.insert / append / extend / [:] = ... / sys.path = ...
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_no_module_of_the_package_over_500_lines():
    too_long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not too_long, too_long


def test_edit_cli_without_the_assets_says_where_to_get_the_model(tmp_path):
    photo = ROOT / "assets" / "examples" / "chelsea.png"
    env = dict(os.environ, LOCA_DIFFUSION_ASSETS=str(tmp_path / "no-assets"), PYTHONPATH=str(ROOT),
               OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "loca_diffusion.edit", "--image", str(photo), "--instruction", "invert the colors"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "assets/" in errors[0] and "LOCA_DIFFUSION_ASSETS" in errors[0] and "pip install -e ." in errors[0]


def test_the_layer_classes_keep_their_import_path():
    # layer.py was split (locations.py, merging.py, utils.py); the classes users import stay where they were
    import loca_diffusion
    from loca_diffusion.tuners.loca.layer import Linear, LoCALayer

    assert LoCALayer is loca_diffusion.LoCALayer and issubclass(Linear, LoCALayer)
