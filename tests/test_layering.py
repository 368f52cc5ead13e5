"""The package's import layering, read from the source with ``ast`` (nothing is imported, so a broken module cannot
hide its arrows): no import cycle between modules, and no arrow up the floors.

Floors, bottom to top: ``vssm.ops`` < ``vssm.layers`` < ``vssm.models`` < ``vssm.engine`` / ``vssm.seg``;
``vssm.convert`` sits on ``vssm.ops`` beside the layers, ``vssm.data`` at the side; ``tools/`` is above everything and
nothing in ``vssm`` imports it. ``import vssm`` from inside the package is an arrow to ``vssm.models`` (the package
``__init__`` imports the zoo).

Every import counts: module level, inside functions and ``try`` blocks, relative ones resolved against the importing
module's package; ``from package import name`` is an arrow to ``package.name`` where that is a module, else to the
package; importing ``a.b.c`` also runs ``a`` and ``a.b``, so those count too (except the importer's own enclosing
packages, which Python has already started).
"""
import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("vssm", "tools")  # top-level folders whose modules are read

# importer floor -> floors it must not import (``vssm`` itself counts as ``vssm.models``, see ``floor_of``)
FORBIDDEN = {
    "vssm.ops": ("vssm.layers", "vssm.models", "vssm.engine", "vssm.convert", "vssm.seg", "vssm.data", "vssm.export"),
    "vssm.layers": ("vssm.models", "vssm.engine", "vssm.seg", "vssm.export"),
    "vssm.convert": ("vssm.models", "vssm.engine", "vssm.layers", "vssm.export"),
    "vssm.models": ("vssm.engine", "vssm.seg", "vssm.export"),
    "vssm.engine": ("vssm.export",),
    "vssm.seg": ("vssm.export",),
    "vssm.data": ("vssm.export", "vssm.engine", "vssm.seg", "vssm.models", "vssm.layers", "vssm.ops"),
}
FORBIDDEN_FROM_ANY_VSSM = ("tools",)


@dataclass(frozen=True)
class Arrow:
    """``source`` imports ``target`` at ``path``:``line``."""
    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target}"


def discover(root: Path, tops: Iterable[str] = SCANNED) -> Dict[str, Path]:
    """Module name -> file for every ``.py`` file under ``root/<top>`` (``pkg/__init__.py`` is module ``pkg``)."""
    modules = {}
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _package_of(module: str, path: Path) -> str:
    """The package a relative import in ``module`` starts from."""
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, path: Path, node: ast.AST, modules: Dict[str, Path]) -> List[str]:
    """Module names (of ``modules``) that one import statement makes ``module`` run."""
    targets = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
        # a script folder without __init__.py (tools/) is on sys.path when its scripts run: ``import x`` may be a
        # sibling script
        folder = module.rpartition(".")[0]
        if folder and not (path.parent / "__init__.py").exists():
            names += [f"{folder}.{name}" for name in names if f"{folder}.{name}" in modules]
        targets += names
    else:
        assert isinstance(node, ast.ImportFrom)
        if node.level:
            base = _package_of(module, path).split(".")
            base = base[:len(base) - (node.level - 1)]
            if not base:
                return []
            stem = ".".join(base + ([node.module] if node.module else []))
        else:
            stem = node.module or ""
        for alias in node.names:
            sub = f"{stem}.{alias.name}"
            targets.append(sub if sub in modules else stem)
    resolved = []
    own_packages = {".".join(module.split(".")[:i]) for i in range(1, len(module.split(".")))}
    for target in targets:
        parts = target.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a, a.b and a.b.c
            name = ".".join(parts[:i])
            explicit = i == len(parts)
            if name in modules and name != module and (explicit or name not in own_packages):
                resolved.append(name)
    return resolved


def read_arrows(root: Path, tops: Iterable[str] = SCANNED) -> List[Arrow]:
    """Every import arrow between the modules under ``root/<top>``, with the file and line of the statement."""
    modules = discover(root, tops)
    arrows = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                rel = path.relative_to(root).as_posix()
                arrows += [Arrow(module, target, rel, node.lineno)
                           for target in dict.fromkeys(_resolve(module, path, node, modules))]
    return arrows


def floor_of(module: str, importer: bool) -> Optional[str]:
    """``vssm.<floor>`` / ``tools`` of a module; ``vssm`` itself, as a target, is ``vssm.models``."""
    parts = module.split(".")
    if parts[0] == "tools":
        return "tools"
    if parts[0] != "vssm":
        return None
    if len(parts) == 1:
        return None if importer else "vssm.models"
    return ".".join(parts[:2])


def upward_arrows(arrows: Iterable[Arrow]) -> List[Arrow]:
    """Arrows that run up the floors (see ``FORBIDDEN``), or from anything in ``vssm`` into ``tools``."""
    bad = []
    for arrow in arrows:
        if arrow.source.split(".")[0] != "vssm":
            continue
        source, target = floor_of(arrow.source, True), floor_of(arrow.target, False)
        if target is None or source == target:
            continue
        if target in FORBIDDEN.get(source, ()) or target in FORBIDDEN_FROM_ANY_VSSM:
            bad.append(arrow)
    return bad


@dataclass
class CycleGroup:
    """Modules that import each other round (a strongly connected group), the shortest loop through the first of
    them and every arrow inside the group."""
    modules: List[str]
    loop: List[Arrow]
    arrows: List[Arrow]

    def __str__(self) -> str:
        loop = " -> ".join([self.loop[0].source] + [a.target for a in self.loop])
        return f"{', '.join(self.modules)}: {loop}\n" + "\n".join(f"    {a}" for a in self.arrows)


def cycles(arrows: Iterable[Arrow]) -> List[CycleGroup]:
    """Every strongly connected group of modules (Tarjan), with its shortest loop and its internal arrows."""
    arrows = list(arrows)
    graph: Dict[str, Dict[str, Arrow]] = {}
    for arrow in arrows:
        graph.setdefault(arrow.source, {}).setdefault(arrow.target, arrow)
        graph.setdefault(arrow.target, {})
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    groups: List[List[str]] = []

    def connect(node: str) -> None:  # recursive Tarjan: the module graph is small
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    found = []
    for group in sorted(groups):
        members, start = set(group), group[0]
        # breadth-first from ``start`` inside the group back to ``start``: the shortest loop through it
        previous: Dict[str, Tuple[str, Arrow]] = {}
        frontier, seen, closing = [start], {start}, None
        while closing is None:
            following = []
            for node in frontier:
                for nxt, arrow in sorted(graph[node].items()):
                    if nxt == start:
                        closing = arrow
                        break
                    if nxt in members and nxt not in seen:
                        seen.add(nxt)
                        previous[nxt] = (node, arrow)
                        following.append(nxt)
                if closing is not None:
                    break
            frontier = following
        loop = [closing]
        node = closing.source
        while node != start:
            node, arrow = previous[node]
            loop.append(arrow)
        inside = sorted((a for a in arrows if a.source in members and a.target in members),
                        key=lambda a: (a.path, a.line, a.target))
        found.append(CycleGroup(group, loop[::-1], inside))
    return found


# the package as it is ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def arrows() -> List[Arrow]:
    return read_arrows(REPO)


def test_the_scan_sees_the_package(arrows):
    """Guards against a silently empty scan: the floors and the tools are there, and known arrows are found."""
    modules = discover(REPO)
    assert {"vssm", "vssm.ops", "vssm.layers", "vssm.models", "vssm.convert"} <= set(modules)
    assert any(m.startswith("tools.") for m in modules)
    assert any(a.source == "vssm" and a.target == "vssm.models" for a in arrows)
    assert any(a.source.startswith("vssm.models.") and a.target.startswith("vssm.layers") for a in arrows)


def test_no_import_cycles(arrows):
    found = cycles(arrows)
    assert not found, "import cycles (modules: shortest loop, then every arrow inside the group):\n" + "\n".join(
        str(group) for group in found)


def test_no_arrow_up_the_floors(arrows):
    bad = upward_arrows(arrows)
    assert not bad, "imports up the floors (ops < layers < models < engine / seg; convert on ops; nothing in vssm " \
                    "imports tools; `import vssm` = vssm.models):\n" + "\n".join(f"    {a}" for a in bad)


# the checker on small synthetic packages ---------------------------------------------------------------------------


def write_tree(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "vssm/__init__.py": "from . import ops\nfrom . import models\n",
    "vssm/ops/__init__.py": "from .scan import scan\n",
    "vssm/ops/scan.py": "import torch\nfrom .common import helper\n\ndef scan():\n    return helper()\n",
    "vssm/ops/common.py": "def helper():\n    return 1\n",
    "vssm/layers/__init__.py": "from .mixer import Mixer\n",
    "vssm/layers/mixer.py": "from vssm.ops import scan\nfrom ..ops.common import helper\n",
    "vssm/models/__init__.py": "from .vim import *\n",
    "vssm/models/vim.py": "from ..layers import Mixer\nfrom vssm.ops import scan\n",
    "vssm/convert/__init__.py": "from ..ops import common\n",
    "vssm/engine/__init__.py": "import vssm\nfrom vssm.models import vim\n",
    "tools/train.py": "import vssm\nfrom vssm.engine import train\nimport benchmark\n",
    "tools/benchmark.py": "import vssm.models.vim\n",
}


def test_checker_passes_a_clean_tree(tmp_path):
    arrows = read_arrows(write_tree(tmp_path, CLEAN))
    assert cycles(arrows) == [] and upward_arrows(arrows) == []
    found = {(a.source, a.target) for a in arrows}
    assert {("vssm.layers.mixer", "vssm.ops"), ("vssm.layers.mixer", "vssm.ops.common"),
            ("vssm.models.vim", "vssm.layers"), ("vssm.convert", "vssm.ops.common"), ("vssm.engine", "vssm"),
            ("tools.train", "tools.benchmark"), ("tools.benchmark", "vssm.models.vim"),
            ("tools.benchmark", "vssm.models")} <= found
    assert ("vssm.ops.scan", "vssm.ops") not in found  # a module's own package is already running


def test_checker_finds_a_cycle_with_file_and_line(tmp_path):
    """scan -> selective -> triton.kernel -> scan, closed by an import inside a function and a relative one."""
    files = dict(CLEAN)
    files["vssm/ops/scan.py"] = "from .selective import selective\n\ndef scan():\n    return selective()\n"
    files["vssm/ops/selective.py"] = "import torch\n\ndef selective():\n    from .triton import kernel\n"
    files["vssm/ops/triton/__init__.py"] = ""
    files["vssm/ops/triton/kernel.py"] = "import math\nfrom ..scan import scan\n"
    (group,) = cycles(read_arrows(write_tree(tmp_path, files)))
    assert group.modules == ["vssm.ops.scan", "vssm.ops.selective", "vssm.ops.triton.kernel"]
    assert [str(a) for a in group.loop] == [
        "vssm/ops/scan.py:1: vssm.ops.scan -> vssm.ops.selective",
        "vssm/ops/selective.py:4: vssm.ops.selective -> vssm.ops.triton.kernel",
        "vssm/ops/triton/kernel.py:2: vssm.ops.triton.kernel -> vssm.ops.scan",
    ]
    assert "vssm.ops.scan -> vssm.ops.selective -> vssm.ops.triton.kernel -> vssm.ops.scan" in str(group)
    assert "vssm/ops/selective.py:4: vssm.ops.selective -> vssm.ops.triton.kernel" in str(group)


def test_checker_finds_a_cycle_through_a_package_init(tmp_path):
    """``from vssm.ops import name`` (not a submodule) in a module that ``vssm/ops/__init__.py`` imports."""
    files = dict(CLEAN)
    files["vssm/ops/common.py"] = "def helper():\n    from vssm.ops import make_scan\n"
    (group,) = cycles(read_arrows(write_tree(tmp_path, files)))
    assert {(a.source, a.target) for a in group.loop} == {
        ("vssm.ops", "vssm.ops.scan"), ("vssm.ops.scan", "vssm.ops.common"), ("vssm.ops.common", "vssm.ops")}


def test_checker_finds_every_upward_arrow(tmp_path):
    files = dict(CLEAN)
    files["vssm/ops/scan.py"] = "def scan():\n    from ..layers.mixer import Mixer\n    import vssm.data\n"
    files["vssm/layers/mixer.py"] = "from vssm.ops import scan\ntry:\n    import vssm\nexcept ImportError:\n    pass\n"
    files["vssm/convert/__init__.py"] = "def load_official():\n    from vssm.models import vim\n"
    files["vssm/models/vim.py"] = "from ..engine import train\nfrom tools import benchmark\n"
    files["vssm/data/__init__.py"] = ""
    bad = sorted(str(a) for a in upward_arrows(read_arrows(write_tree(tmp_path, files))))
    assert bad == [
        "vssm/convert/__init__.py:2: vssm.convert -> vssm.models",
        "vssm/convert/__init__.py:2: vssm.convert -> vssm.models.vim",
        "vssm/layers/mixer.py:3: vssm.layers.mixer -> vssm",  # ``import vssm`` imports the models
        "vssm/models/vim.py:1: vssm.models.vim -> vssm.engine",
        "vssm/models/vim.py:2: vssm.models.vim -> tools.benchmark",
        "vssm/ops/scan.py:2: vssm.ops.scan -> vssm.layers",
        "vssm/ops/scan.py:2: vssm.ops.scan -> vssm.layers.mixer",
        "vssm/ops/scan.py:3: vssm.ops.scan -> vssm.data",
    ]
