"""The house rules of the source tree (DESIGN.md, "Who imports whom" and decision 12).

Three floors, no arrow back up: ``smp/`` (the tools) may use ``kernel/`` and ``hw/``;
``kernel/`` may use ``hw/`` only through its machine-dependent layer ``kernel/machine/``
(the one door); ``hw/`` uses neither. The folders are imported by their installed names,
``smp.kernel``, ``smp.hw`` and ``smp.configs`` (smp/__init__.py says why), never by their
bare ones; a floor is told by its name's prefix, so ``smp.kernel.x`` is the kernel's floor,
not the tools'. And the machine and the tools know nothing of the
kernel but what it registers: no file of ``smp/`` or ``hw/`` names a kernel lock, a
kernel symbol or a field of a kernel structure. The kernel's names are taken from the
kernel itself (its structure declarations, its lock and symbol registrations), not from
a hand-kept list here.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import re
from typing import Iterator

import pytest

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).resolve().parent.parent


FLOORS = ("kernel", "hw", "configs")      # the folders beside smp/, imported as smp.<folder>


def _modules(folder: str) -> Iterator[tuple[pathlib.Path, ast.Module]]:
    """The modules of one floor's folder; ``smp``'s without the links smp/kernel, smp/hw
    and smp/configs (their modules are the other floors')."""
    for p in sorted((ROOT / folder).rglob("*.py")):
        if not any((ROOT / folder / d).is_symlink()
                   for d in p.relative_to(ROOT / folder).parents):
            yield p, ast.parse(p.read_text(), str(p))


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """Every absolute import, as the dotted names it brings in (``from smp import hw``
    brings in ``smp.hw``)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                yield node.lineno, f"{node.module}.{a.name}"


def _floor(name: str) -> str:
    """The floor a module name is on: ``kernel``, ``hw`` or ``configs`` for
    ``smp.kernel...`` and so on, ``smp`` for the rest of smp (a library: its own name)."""
    parts = name.split(".")
    if parts[0] == "smp" and len(parts) > 1 and parts[1] in FLOORS:
        return parts[1]
    return parts[0]


def test_the_floors_are_imported_by_their_installed_names() -> None:
    """One module identity: no ``import kernel`` (``hw``, ``configs``) beside
    ``smp.kernel``, which would load a second copy of every module it reaches."""
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for folder in ("smp", *FLOORS, "tests", "benchmarks")
           for p, tree in _modules(folder)
           for line, mod in _imports(tree) if mod.split(".")[0] in FLOORS]
    assert not bad, "import smp.kernel (smp.hw, smp.configs), not the bare name: " \
        + "; ".join(bad)
    for folder in FLOORS:
        assert (ROOT / "smp" / folder).resolve() == ROOT / folder, f"smp/{folder}"
        spec = importlib.util.find_spec(folder)
        if spec is not None and spec.origin == str(ROOT / folder / "__init__.py"):
            # this tree is on sys.path (else the name may be anybody's, or nobody's)
            with pytest.raises(ImportError, match=f"import smp.{folder}, not {folder}"):
                importlib.import_module(folder)


def test_only_the_machine_dependent_layer_of_the_kernel_imports_hw() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p, tree in _modules("kernel") if "machine" not in p.relative_to(ROOT).parts
           for line, mod in _imports(tree) if _floor(mod) == "hw"]
    assert not bad, "machine-independent kernel code must go through kernel/machine/: " \
        + "; ".join(bad)


def test_no_floor_imports_the_floor_above_it() -> None:
    bad = []
    for folder, above in (("kernel", {"smp"}), ("hw", {"smp", "kernel"})):
        bad += [f"{p.relative_to(ROOT)}:{line} imports {mod}"
                for p, tree in _modules(folder)
                for line, mod in _imports(tree) if _floor(mod) in above]
    assert not bad, "; ".join(bad)


# the tools' own floors, top down: a floor may use the ones below it, never one above
TOOL_FLOORS = ("smp.cli", "smp.hunt", "smp.run", "smp.observe", "smp.machine")


@pytest.mark.parametrize("floor", TOOL_FLOORS[1:])
def test_no_tool_uses_one_above_it(floor: str) -> None:
    """``smp/machine`` (the server and the CPU processes) is the tools' ground floor;
    above it ``observe`` (reports, findings, views of a run), ``run`` (config, launcher),
    ``hunt`` (campaigns) and the command line: each uses the floors below, never the
    other way round (README, "How it is built")."""
    above = TOOL_FLOORS[:TOOL_FLOORS.index(floor)]
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p, tree in _modules(floor.replace(".", "/"))
           for line, mod in _imports(tree) if mod.startswith(above)]
    assert not bad, "; ".join(bad)


# -- the kernel's names, from the kernel ---------------------------------------------------
def _call_strings(tree: ast.Module, funcs: dict[str, int]) -> Iterator[str]:
    """The string arguments at position ``funcs[name]`` of every call to ``name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            pos = funcs.get(name)
            if pos is not None and len(node.args) > pos:
                arg = node.args[pos]
                for c in ast.walk(arg):
                    if isinstance(c, ast.Constant) and isinstance(c.value, str):
                        yield c.value


def kernel_names() -> dict[str, set[str]]:
    """Every lock name, symbol and structure field the kernel registers with the machine:
    lock names as its mtx_init/sx_init/lockinit calls give them, symbols as it publishes
    them, fields as its structures declare them, and the names of its registered policy."""
    import smp.kernel.conf  # noqa: F401  (declares every structure)
    from smp.kernel.kern import subr_witness
    from smp.kernel.sys.kstruct import KStruct
    from smp.kernel.vm import vm_meter
    locks: set[str] = set(subr_witness.EXEMPT) | {subr_witness.SCHED_LOCK}
    for chain in subr_witness.ORDER_LISTS:
        locks.update(chain)
    symbols: set[str] = set()
    for _, tree in _modules("kernel"):
        locks.update(_call_strings(tree, {"mtx_init": 1, "sx_init": 1, "lockinit": 2}))
        symbols.update(_call_strings(tree, {"symbol": 0}))
    # fields named after FreeBSD's struct prefixes (p_, td_, v_, ...): the unprefixed ones
    # of this port ("queue", "start") are words any text may use
    fields = {f for st in KStruct.registry.values() for f in st.fields if "_" in f}
    fields.update(vm_meter.VMSTATS.values())
    return {"lock": locks, "symbol": symbols, "field": fields}


def _strings(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """The string constants of a module that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docs.add(id(body[0].value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            yield node.lineno, node.value


def test_the_kernel_registers_names_the_checks_can_find() -> None:
    names = kernel_names()
    assert {"Giant", "sched lock", "allproc", "process lock"} <= names["lock"]
    assert {"cnt", "kernel_map"} <= names["symbol"]
    assert {"p_sflag", "td_state", "v_free_count"} <= names["field"]


def test_the_machine_and_the_tools_name_nothing_of_the_kernel() -> None:
    names = kernel_names()
    whole = {k: re.compile(r"(?<![\w])(" + "|".join(sorted(map(re.escape, v), key=len,
                                                          reverse=True)) + r")(?![\w])")
             for k, v in names.items()}
    bad = []
    for folder in ("smp", "hw"):
        for p, tree in _modules(folder):
            for line, s in _strings(tree):
                for kind, rx in whole.items():
                    m = rx.search(s) if kind != "symbol" else (s if s in names[kind] else None)
                    if m:
                        what = m.group(1) if kind != "symbol" else s
                        bad.append(f"{p.relative_to(ROOT)}:{line} names kernel {kind} {what!r}")
    assert not bad, "; ".join(bad)
