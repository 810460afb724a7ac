"""The house rules of the source tree (DESIGN.md, "Who imports whom" and decision 12).

Three floors, no arrow back up: ``smp/`` (the tools) may use ``kernel/`` and ``hw/``;
``kernel/`` may use ``hw/`` only through its machine-dependent layer ``kernel/machine/``
(the one door); ``hw/`` uses neither. And the machine and the tools know nothing of the
kernel but what it registers: no file of ``smp/`` or ``hw/`` names a kernel lock, a
kernel symbol or a field of a kernel structure. The kernel's names are taken from the
kernel itself (its structure declarations, its lock and symbol registrations), not from
a hand-kept list here.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Iterator

import pytest

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _modules(folder: str) -> Iterator[tuple[pathlib.Path, ast.Module]]:
    for p in sorted((ROOT / folder).rglob("*.py")):
        yield p, ast.parse(p.read_text(), str(p))


def _imports(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.lineno, node.module


def _top(name: str) -> str:
    return name.split(".")[0]


def test_only_the_machine_dependent_layer_of_the_kernel_imports_hw() -> None:
    bad = [f"{p.relative_to(ROOT)}:{line} imports {mod}"
           for p, tree in _modules("kernel") if "machine" not in p.relative_to(ROOT).parts
           for line, mod in _imports(tree) if _top(mod) == "hw"]
    assert not bad, "machine-independent kernel code must go through kernel/machine/: " \
        + "; ".join(bad)


def test_no_floor_imports_the_floor_above_it() -> None:
    bad = []
    for folder, above in (("kernel", {"smp"}), ("hw", {"smp", "kernel"})):
        bad += [f"{p.relative_to(ROOT)}:{line} imports {mod}"
                for p, tree in _modules(folder)
                for line, mod in _imports(tree) if _top(mod) in above]
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
    import kernel.conf  # noqa: F401  (declares every structure)
    from kernel.kern import subr_witness
    from kernel.sys.kstruct import KStruct
    from kernel.vm import vm_meter
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
