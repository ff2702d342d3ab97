"""The package's layering, checked on its source: every import (function-level and
TYPE_CHECKING imports included) goes from a top-level part to the same part or a lower layer,
every top-level part has a layer, and no module is over 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "fedkd_mpi"

#: lowest first; a part may import only from its own part and from the layers before it
LAYERS = (
    ("tensors", "seeding", "pretrained"),
    ("config",),
    ("registry", "storage"),
    ("data",),
    ("models", "aggregators"),
    ("metrics", "codecs"),
    ("algorithms", "comm"),
    ("analysis",),  # reads run files: no MPI, no jobs
    ("runtime",),  # the ranks of a job: clients, server, writer
    ("api",),
    ("sweep", "catalog"),  # orchestration beside the API
    ("cli",),
    ("__main__",),
)
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
#: names the package root itself defines (imported from it, not from a part)
ROOT_NAMES = {"__version__"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("").as_posix().replace("/", ".")
        out[rel.removesuffix(".__init__")] = path
    return out


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else None  # None: the package root


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported fedkd_mpi module or root name) for every import in the file."""
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("fedkd_mpi")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base == "fedkd_mpi":  # from fedkd_mpi import sweep / __version__
                out += [(node.lineno, f"fedkd_mpi.{a.name}") for a in node.names]
            elif base.startswith("fedkd_mpi."):
                out.append((node.lineno, base))
    return out


def test_every_top_level_part_has_a_layer():
    parts = {_part(m) for m in _modules()} - {None}
    assert parts - set(RANK) == set(), "place the new part in LAYERS"
    assert set(RANK) - parts == set(), "LAYERS names a part that no longer exists"


def test_imports_go_down_the_layers_only():
    bad = []
    for module, path in _modules().items():
        src = _part(module)
        for line, target in _imports(path, module):
            dst = _part(target)
            if dst in ROOT_NAMES or dst is None or dst == src:
                continue
            if src is None:  # the root facade imports lazily from anything
                continue
            if RANK[dst] >= RANK[src]:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {src} imports {target}")
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_the_check_sees_function_level_imports(tmp_path):
    src = "def f():\n    from fedkd_mpi.runtime.job import build\n"
    p = tmp_path / "x.py"
    p.write_text(src)
    assert _imports(p, "fedkd_mpi.data.x") == [(2, "fedkd_mpi.runtime.job")]


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_over_the_limit(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(PKG.parent)} has {n} lines (limit {MAX_LINES})"
