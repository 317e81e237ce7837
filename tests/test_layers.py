"""Dependencies point one way: explorer/ never imports Streamlit; explorer.model and
explorer.trace import only the standard library (and each other)."""

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
    for package in ("model", "trace"):
        for path in (EXPLORER / package).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                assert top in allowed, f"{path.name} imports {name}"
                if top == "explorer":
                    assert name.split(".")[1] in ("model", "trace"), f"{path.name} imports {name}"


def test_no_pages_directory_beside_the_entry_point() -> None:
    """A pages/ directory makes Streamlit run deep links (/compare) as legacy pages on a fresh
    server, without the app's navigation: see streamlit_app.py."""
    root = EXPLORER.parent
    assert (root / "streamlit_app.py").exists() and not (root / "pages").exists()
