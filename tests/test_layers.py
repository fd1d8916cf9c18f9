"""The package's layers: every import points down (core <- io <- inference <- train <- cli), lazy ones included.

Imports are read from the source with `ast`, so an import inside a function counts as much as one at the top.
Imports under `if TYPE_CHECKING:` never run: they count for the layer order but not for import cycles.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "minigpt"
ORDER = ("core", "io", "inference", "train", "cli")
CORE = {"config", "errors", "extras", "machine", "hooks", "kernels", "head", "quantize", "model"}
IO = {"hub", "tokenizer", "loading", "checkpoint", "template", "reward_model", "progress"}
# The public faces: the package itself (`minigpt.GPT` is composed there) and the pre-`inference/` paths kept for
# users. They may import anything; nothing inside the package may import them.
FACES = {"minigpt", "minigpt.text", "minigpt.sampling", "minigpt.scoring"}


def module_names() -> dict[str, Path]:
    """minigpt's module names -> files (a package is its `__init__.py`)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("minigpt",) + path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def layer(module: str) -> str:
    if module in FACES:
        return "face"
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] == "inspect":  # interpretability: beside inference, over the model alone
        return "inference"
    if len(parts) >= 2 and parts[1] in ("inference", "train", "cli"):
        return parts[1]
    if len(parts) == 2 and parts[1] in CORE:
        return "core"
    if len(parts) == 2 and parts[1] in IO:
        return "io"
    raise AssertionError(f"{module} belongs to no layer: add it to CORE or IO in {Path(__file__).name}, or move "
                         "it into its layer's package")


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imports(source: str, module: str, is_package: bool, known: set[str]) -> list[tuple[str, bool]]:
    """(imported minigpt module, runs at import or call time) for every import statement in `source`."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, runs: bool) -> None:
        for child in ast.iter_child_nodes(node):
            child_runs = runs and not _type_checking_only(child)
            if isinstance(child, ast.Import):
                found.extend((alias.name, runs) for alias in child.names if alias.name.split(".")[0] == "minigpt")
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "minigpt":
                    continue
                subs = [f"{target}.{alias.name}" for alias in child.names if f"{target}.{alias.name}" in known]
                found.extend((name, runs) for name in subs or [target])
            visit(child, child_runs)

    visit(ast.parse(source), True)
    return found


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    names = module_names()
    return {name: imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", set(names))
            for name, path in names.items()}


def violations(graph: dict[str, list[tuple[str, bool]]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        for target, _ in targets:
            if layer(module) == "face":
                continue
            if layer(target) == "face":
                bad.append(f"{module} ({layer(module)}) imports the public face {target}")
            elif ORDER.index(layer(target)) > ORDER.index(layer(module)):
                bad.append(f"{module} ({layer(module)}) imports {target} ({layer(target)}), a higher layer")
    return bad


def cycles(graph: dict[str, list[tuple[str, bool]]]) -> list[list[str]]:
    """Import cycles between modules (imports that run only; a package and its own modules excepted)."""
    edges = {m: sorted({t for t, runs in targets if runs and t in graph and not m.startswith(t + ".")})
             for m, targets in graph.items()}
    found, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in edges[node]:
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, path + [nxt])
        state[node] = "done"

    for module in edges:
        if module not in state:
            walk(module, [module])
    return found


def test_every_module_has_a_layer():
    for module in module_names():
        layer(module)


def test_imports_point_down_only():
    assert violations(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_model_file_imports_nothing_of_loading_checkpoints_or_generation():
    """nanoGPT's habit: the model file needs torch and nothing of loading, checkpoints or generation."""
    graph = import_graph()
    assert sorted(t for t, _ in graph["minigpt.model"]) == ["minigpt.config", "minigpt.head", "minigpt.hooks",
                                                             "minigpt.kernels"]


def test_root_holds_only_core_io_and_faces():
    root = {m for m in module_names() if m.count(".") == 1 and not (PACKAGE / m.split(".")[1]).is_dir()}
    assert {layer(m) for m in root} <= {"core", "io", "face"}


@pytest.mark.parametrize("source, expected", [
    ("def f():\n    from .inference.generation import generate\n", "a higher layer"),  # lazy, upward
    ("from . import GPT\n", "the public face minigpt"),
    ("from .train.data import Example\n", "a higher layer"),
])
def test_the_checker_sees_upward_imports(source, expected):
    """Today's main had all three (model's lazy `generate`, kernels' lazy model import, scoring -> data)."""
    names = set(module_names())
    graph = {"minigpt.model": imports(source, "minigpt.model", False, names)}
    assert any(expected in v for v in violations(graph))


def test_the_checker_sees_a_lazy_cycle():
    graph = {
        "minigpt.inference.beam": [("minigpt.inference.generation", True)],
        "minigpt.inference.generation": imports("def g():\n    from .beam import beam_search\n",
                                                "minigpt.inference.generation", False, set(module_names())),
    }
    assert cycles(graph)


def test_public_paths_still_import():
    """Paths users already use keep working (README: public paths)."""
    import minigpt
    from minigpt import GPT, RewardModel, Tokenizer  # noqa: F401
    from minigpt.sampling import SamplingParams
    from minigpt.scoring import score_ids
    from minigpt.text import complete

    assert complete.__module__ == "minigpt.inference.text"
    assert SamplingParams.__module__ == "minigpt.inference.sampling"
    assert score_ids.__module__ == "minigpt.inference.scoring"
    assert issubclass(GPT, minigpt.Transformer)
    assert callable(GPT.from_pretrained) and callable(GPT.generate) and callable(GPT.save_pretrained)
