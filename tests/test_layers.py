"""Dependencies point one way: explorer/ never imports Streamlit; explorer.model and
explorer.ingest import only the standard library (and each other)."""

import ast
import sys
from pathlib import Path

EXPLORER = Path(__file__).resolve().parent.parent / "explorer"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_explorer_never_imports_streamlit() -> None:
    for path in EXPLORER.rglob("*.py"):
        assert not any(n.split(".")[0] == "streamlit" for n in _imports(path)), path


def test_model_and_trace_use_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"explorer"}
    for package in ("model", "ingest"):
        for path in (EXPLORER / package).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                assert top in allowed, f"{path.name} imports {name}"
                if top == "explorer":
                    assert name.split(".")[1] in ("model", "ingest"), f"{path.name} imports {name}"


def test_no_pages_directory_beside_the_entry_point() -> None:
    """A pages/ directory makes Streamlit run deep links (/compare) as legacy pages on a fresh
    server, without the app's navigation: see streamlit_app.py."""
    root = EXPLORER.parent
    assert (root / "streamlit_app.py").exists() and not (root / "pages").exists()


def _model_graph() -> dict[str, set[str]]:
    """explorer.model's modules and the model modules each imports, wherever the import is (at
    the top, inside a function, under TYPE_CHECKING): ``from explorer.model import x`` counts as
    importing ``x`` when ``x`` is a module, else the package."""
    model = EXPLORER / "model"
    mods = {p.stem for p in model.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in model.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "explorer.model":
                    names = [
                        f"explorer.model.{a.name}" if a.name in mods else "explorer.model"
                        for a in node.names
                    ]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[:2] == ["explorer", "model"]:
                    deps.add(parts[2] if len(parts) > 2 else "__init__")
        graph[path.stem] = deps - {path.stem}
    return graph


def test_no_import_circle_in_the_model() -> None:
    """machine -> kvm -> dpamt -> state -> steps: the kernel code and the scheduler share the
    step vocabulary (explorer.model.steps) and the state (explorer.model.state), never each
    other both ways. The package's own __init__ (which re-exports) is left out: a module that
    imports its package only runs the package's re-exports first."""
    graph = {k: v - {"__init__"} for k, v in _model_graph().items() if k != "__init__"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                raise AssertionError(" -> ".join([*stack[stack.index(dep) :], dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_top_of_explorer_shows_the_pipeline() -> None:
    """At most six modules beside __init__ and __main__: everything else lives in the package
    of its stage (ingest, model, replay, the analyses, views, cli)."""
    top = sorted(p.name for p in EXPLORER.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 6, top
