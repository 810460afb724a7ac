"""Typed kernel structures that live in server memory, read and written like C structs.

A structure is declared once with :class:`KStruct`: each field's name (FreeBSD's, prefix
and all), its kind, the lock key that protects it (the letters of ``sys/proc.h``: ``(c)``
the proc lock, ``(j)`` sched_lock, ``(d)`` allproc_lock, ``(m)`` Giant, ...) and its
default. The kernel registers every declaration with the server at boot (``DEFTYPE``);
the server never imports this module.

A :class:`KObj` is a pointer to such a record. Reading a field is one load from the server
and writing one is one posted store, so ported code reads as the C does::

    if (p.p_sflag & PS_INMEM) == 0:        # if ((p->p_sflag & PS_INMEM) == 0)
        p.p_lock += 1                      # ++p->p_lock  (a load, then a store)

Pointer fields come back as :class:`KObj` (or ``None`` for NULL). Embedded locks and list
heads come back as their *address* without any load, as ``&p->p_mtx`` costs nothing in C:
``mtx_lock(p.p_mtx)``. :meth:`KObj.addr` gives the address of any field, for sleep
channels such as ``&p->p_sflag``.

Nothing is cached: every access goes to the server, every time (DESIGN.md decision 1).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from smp.kernel.machine import memory
from smp.kernel.machine.cpu import register
from smp.kernel.machine.memory import F_LIST, F_LOCK, F_MAP, FIELD_BITS

# a field's load or store is made by the code that names the field, not here
__site_transparent__ = True

# embedded fields: an address, no value (locks of each class, list heads, hash tables)
EMBEDDED = ("mtx", "sx", "lockmgr", "list", "map")
_WIRE_KIND = {"mtx": F_LOCK, "sx": F_LOCK, "lockmgr": F_LOCK, "list": F_LIST, "map": F_MAP}


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    kind: str             # "int", "str", "any", "ptr:<struct>", or one of EMBEDDED
    lock: str             # lock key letter(s), "" for none
    default: Any
    index: int
    const: bool = False   # set once at creation, never changed: a CPU may remember it

    @property
    def target(self) -> str | None:
        return self.kind[4:] if self.kind.startswith("ptr:") else None


def F(name: str, kind: str = "int", lock: str = "", default: Any = None,
      const: bool = False) -> tuple[Any, ...]:
    """One field of a :class:`KStruct` declaration. ``const`` marks a field written once,
    at creation, and never again (a page's frame number): a CPU may keep what it read,
    as a C compiler may keep a value it knows cannot change. Handles are never reused,
    so the remembered value can never belong to another object."""
    if default is None and kind == "int":
        default = 0
    if default is None and kind.startswith("ptr:"):
        default = 0
    return (name, kind, lock, default, const)


class KStruct:
    """The declaration of one kernel structure."""

    registry: dict[str, "KStruct"] = {}

    def __init__(self, name: str, fields: list[tuple[Any, ...]], doc: str = "") -> None:
        self.name = name
        self.doc = doc
        self.fields: dict[str, Field] = {}
        for i, (fname, kind, lock, default, const) in enumerate(fields):
            if fname in self.fields:
                raise ValueError(f"struct {name}: field {fname} declared twice")
            self.fields[fname] = Field(fname, kind, lock, default, i, const)
        if len(self.fields) > 1 << FIELD_BITS:
            raise ValueError(f"struct {name}: too many fields")
        KStruct.registry[name] = self

    def wire_decl(self) -> list[list[Any]]:
        return [[f.name, _WIRE_KIND.get(f.kind, f.kind), f.lock, f.default]
                for f in self.fields.values()]

    def new(self, **init: Any) -> "KObj":
        """Allocate one record in server memory (fields at their defaults)."""
        values = {k: _raw(v) for k, v in init.items()}
        for k in values:
            if k not in self.fields:
                raise AttributeError(f"struct {self.name} has no field {k}")
        return KObj(memory.obj_new(self.name, values), self)

    def at(self, handle: int) -> "KObj | None":
        return KObj(handle, self) if handle else None


# What each lock key letter means, for the server's unprotected-access check: a lock
# name (any lock of that name held will do), "self" (the object's own embedded lock), or
# "store": a lock name that stores need and loads do not (statistics read lazily, changed
# under a lock). Keys not listed are not checked: (a) touched only by curproc or parent
# at fork/wait, (b) set at creation, (k) curthread only, (n) lazy, unlocked; and none.
LOCK_KEYS: dict[str, tuple[str, str]] = {
    "c": ("self", ""),                          # the proc lock, p_mtx
    "l": ("self", ""),                          # a map's own lock
    "o": ("self", ""),                          # a lock load object's own lo_mtx
    "z": ("self", ""),                          # the proc zone's own lock
    "d": ("name", "allproc"),
    "e": ("name", "proctree"),
    "j": ("name", "sched lock"),
    "m": ("name", "Giant"),
    "q": ("name", "vm page queue mutex"),
    "f": ("name", "vm page queue free mutex"),
    "Q": ("store", "vm page queue mutex"),      # read lazily, changed under the lock
    "F": ("store", "vm page queue free mutex"),
}


def register_all() -> None:
    """Declare every structure, and what its lock keys mean, to the server (once, at
    boot, from the BSP)."""
    for st in KStruct.registry.values():
        memory.deftype(st.name, st.wire_decl())
    register("lock_keys", {k: list(v) for k, v in LOCK_KEYS.items()})


def _raw(v: Any) -> Any:
    if isinstance(v, KObj):
        return v.handle
    if v is None:
        return 0
    return v


_MISSING = object()
_const_cache: dict[tuple[int, str], Any] = {}


class KObj:
    """A pointer to a kernel structure in server memory."""

    __slots__ = ("handle", "struct")

    def __init__(self, handle: int, struct: KStruct) -> None:
        object.__setattr__(self, "handle", handle)
        object.__setattr__(self, "struct", struct)

    def __getattr__(self, name: str) -> Any:
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        f = self.struct.fields.get(name)
        if f is None:
            raise AttributeError(f"struct {self.struct.name} has no field {name}")
        if f.kind in EMBEDDED:
            return (self.handle << FIELD_BITS) | f.index
        if f.const:
            key = (self.handle, name)
            v = _const_cache.get(key, _MISSING)
            if v is _MISSING:
                v = _const_cache[key] = memory.load(self.handle, name)
        else:
            v = memory.load(self.handle, name)
        target = f.target
        if target is not None:
            return KObj(v, KStruct.registry[target]) if v else None
        return v

    def __setattr__(self, name: str, value: Any) -> None:
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        f = self.struct.fields.get(name)
        if f is None or f.kind in EMBEDDED:
            raise AttributeError(f"struct {self.struct.name}: cannot store {name}")
        memory.store(self.handle, name, _raw(value))

    def load(self, *names: str) -> list[Any]:
        """Several plain fields in one request (no pointer wrapping)."""
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        return memory.loadn(self.handle, list(names))

    def load_racy(self, *names: str) -> list[Any]:
        """Loads the code makes without the fields' lock *on purpose* (FreeBSD later
        marked such reads as atomic loads); exempt from the lock-key check. Each use
        says why next to it."""
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        return memory.load_racy(self.handle, list(names))

    def update_racy(self, **values: Any) -> None:
        """Stores made without the fields' lock on purpose (see load_racy)."""
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        memory.store_racy(self.handle, {k: _raw(v) for k, v in values.items()})

    def update(self, **values: Any) -> None:
        """Several stores in one posted request."""
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        memory.storen(self.handle, {k: _raw(v) for k, v in values.items()})

    def inc(self, name: str, delta: int = 1) -> None:
        """``obj->name += delta`` under the field's lock, with nobody waiting for the
        result: one posted request instead of a load and a store."""
        __tracebackhide__ = True   # a field access: an instruction, not a frame
        memory.add_posted(self.handle, name, delta)

    def addr(self, name: str) -> int:
        """``&obj->name``: the field's address (a sleep channel, a lock, a list head)."""
        return (self.handle << FIELD_BITS) | self.struct.fields[name].index

    @property
    def chan(self) -> int:
        """``obj`` itself used as a sleep channel (``wakeup(&proc0)``)."""
        return self.handle << FIELD_BITS

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KObj) and other.handle == self.handle

    def __hash__(self) -> int:
        return self.handle

    def __repr__(self) -> str:
        return f"<struct {self.struct.name} #{self.handle}>"

    def __str__(self) -> str:
        """As the machine's reports name objects: ``vm_map_entry#1411`` (a panic message
        that says ``{entry}`` names what ``smp replay --watch`` takes)."""
        return f"{self.struct.name}#{self.handle}"

    def free(self) -> None:
        memory.obj_free(self.handle)


# -- lists: FreeBSD's queue(3) macros over server-side list heads ----------------------------
def TAILQ_INSERT_TAIL(head: int, elm: KObj) -> None:
    memory.list_insert_tail(head, elm.handle)


def TAILQ_INSERT_HEAD(head: int, elm: KObj) -> None:
    memory.list_insert_head(head, elm.handle)


def TAILQ_REMOVE(head: int, elm: KObj) -> None:
    memory.list_remove(head, elm.handle)


def TAILQ_FIRST(head: int, struct: KStruct) -> KObj | None:
    return struct.at(memory.list_first(head))


def TAILQ_NEXT(head: int, elm: KObj) -> KObj | None:
    return elm.struct.at(memory.list_next(head, elm.handle))


def TAILQ_FOREACH(head: int, struct: KStruct) -> Iterator[KObj]:
    """Walk a list one ``next`` load at a time, as the C macro does; the caller holds the
    list's lock, exactly as in C."""
    elm = TAILQ_FIRST(head, struct)
    while elm is not None:
        yield elm
        elm = TAILQ_NEXT(head, elm)


def TAILQ_ITEMS(head: int, struct: KStruct) -> list[KObj]:
    """The whole list in one request (the caller holds the list's lock; equivalent to a
    walk that nothing can change under it)."""
    return [KObj(h, struct) for h in memory.list_items(head)]


def HASH_LOOKUP(table: int, key: Any, struct: KStruct) -> KObj | None:
    return struct.at(memory.map_get(table, key))


def HASH_INSERT(table: int, key: Any, elm: KObj) -> None:
    memory.map_set(table, key, elm.handle)


def HASH_REMOVE(table: int, key: Any) -> None:
    memory.map_del(table, key)


# LIST_* (singly linked in FreeBSD) share the implementation; the names stay for the reader.
LIST_INSERT_HEAD = TAILQ_INSERT_HEAD
LIST_REMOVE = TAILQ_REMOVE
LIST_FIRST = TAILQ_FIRST
LIST_NEXT = TAILQ_NEXT
LIST_FOREACH = TAILQ_FOREACH
