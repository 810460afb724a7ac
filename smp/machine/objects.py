"""Kernel memory: the typed kernel objects and list heads that every CPU shares.

docs/DESIGN.md decision 2: ``struct proc``, ``struct thread`` and the rest are typed records in
server memory, addressed by handle. The kernel declares each type once (its fields, their
defaults and the lock key that protects each, after ``sys/proc.h``) and registers it at boot
with a ``DEFTYPE`` message; the server does not import the kernel. A handle is a positive
integer, never reused within a run, so a stale pointer is recognisable; 0 is NULL.

Addresses. Fields have an address as in C: ``(handle << 8) | field_index``
(:func:`field_addr`). Locks, list heads and sleep channels are named by address, so
``&p->p_mtx`` or ``&p->p_sflag`` costs no load, exactly as address arithmetic in C. A
field of kind ``list`` is a list head (a TAILQ): an ordered set of handles kept here.
Walking one is ``LIST_FIRST`` then ``LIST_NEXT`` per element, one request each, as the C
walks ``le_next`` pointers, so a list changed under an unlocked walker changes under it
here too.

The store does no locking of its own; which lock protects a field is recorded for the
detectors of later work (``field_lock``), not enforced here.
"""

from __future__ import annotations

import dataclasses
from typing import Any


from smp.hw.protocol import F_LIST, F_LOCK, F_MAP, FIELD_BITS, field_addr, field_kind_ok


class ObjectError(Exception):
    """A bad handle, an unknown type or field, a list misuse."""


class KmemExhausted(ObjectError):
    """Kernel memory is full: its bound (``limit`` live objects) would be passed."""


COUNT_OPS = ("eq", "clear")
FREED_KEPT = 100_000        # frees remembered, for "use after free ... freed @" (the latest)


@dataclasses.dataclass(frozen=True)
class TypeDecl:
    name: str
    fields: dict[str, tuple[str, str, Any]]     # field -> (kind, lock key, default)
    order: tuple[str, ...]                      # field index -> name


@dataclasses.dataclass(frozen=True)
class ObjectStatistics:
    types: int
    live_objects: int
    allocated: int
    freed: int
    lists: int
    loads: int
    stores: int
    atomics: int


class _List:
    """An ordered set of handles with O(1) insert, remove and next (a TAILQ)."""

    __slots__ = ("next", "prev", "head", "tail")

    def __init__(self) -> None:
        self.next: dict[int, int] = {}
        self.prev: dict[int, int] = {}
        self.head = 0
        self.tail = 0

    def insert_head(self, h: int) -> None:
        if h in self.next:
            raise ObjectError(f"list insert: element {h} is already on the list")
        self.next[h] = self.head
        self.prev[h] = 0
        if self.head:
            self.prev[self.head] = h
        else:
            self.tail = h
        self.head = h

    def insert_tail(self, h: int) -> None:
        if h in self.next:
            raise ObjectError(f"list insert: element {h} is already on the list")
        self.next[h] = 0
        self.prev[h] = self.tail
        if self.tail:
            self.next[self.tail] = h
        else:
            self.head = h
        self.tail = h

    def remove(self, h: int) -> None:
        if h not in self.next:
            raise ObjectError(f"list remove: element {h} is not on the list")
        n, p = self.next.pop(h), self.prev.pop(h)
        if p:
            self.next[p] = n
        else:
            self.head = n
        if n:
            self.prev[n] = p
        else:
            self.tail = p

    def after(self, h: int) -> int:
        try:
            return self.next[h]
        except KeyError:
            raise ObjectError(f"list next: element {h} is not on the list") from None

    def items(self) -> list[int]:
        out, h = [], self.head
        while h:
            out.append(h)
            h = self.next[h]
        return out


class ObjectStore:
    """Every shared kernel object of one machine."""

    def __init__(self) -> None:
        self.types: dict[str, TypeDecl] = {}
        self.objs: dict[int, dict[str, Any]] = {}
        self.otype: dict[int, str] = {}
        self.lists: dict[int, _List] = {}
        self.maps: dict[int, dict[Any, int]] = {}
        self.symbols: dict[str, int] = {}
        self.next_handle = 1
        self.freed = 0
        self.freed_by: dict[int, str] = {}     # handle -> who freed it (the latest FREED_KEPT)
        self.loads = self.stores = self.atomics = 0
        self.limit: int | None = None          # most live objects (None: no bound)

    def reserve(self, n: int, tname: str) -> None:
        """Room for ``n`` more objects of ``tname``, or KmemExhausted (nothing made)."""
        if self.limit is not None and len(self.objs) + n > self.limit:
            raise KmemExhausted(f"kernel memory exhausted: {n} more {tname} objects would "
                                f"pass its bound of {self.limit} live objects "
                                f"({len(self.objs)} live)")

    # -- types and allocation --------------------------------------------------------
    def deftype(self, name: str, fields: list[list[Any]]) -> None:
        if len(fields) > 1 << FIELD_BITS:
            raise ObjectError(f"type {name}: more than {1 << FIELD_BITS} fields")
        for f in fields:
            if not isinstance(f, list) or len(f) != 4 or not field_kind_ok(f[1]):
                raise ObjectError(f"type {name}: field {f!r} is not [name, kind, lock key, "
                                  f"default] with a known kind")
        decl = TypeDecl(name, {f: (kind, key, default) for f, kind, key, default in fields},
                        tuple(f for f, _, _, _ in fields))
        old = self.types.get(name)
        if old is not None and old != decl:
            raise ObjectError(f"type {name} declared twice, differently")
        self.types[name] = decl

    def new(self, tname: str, init: dict[str, Any] | None) -> int:
        decl = self.types.get(tname)
        if decl is None:
            raise ObjectError(f"new: unknown type {tname!r}")
        self.reserve(1, tname)
        h = self.next_handle
        self.next_handle += 1
        self.otype[h] = tname
        obj = {f: d for f, (_, _, d) in decl.fields.items()}
        if init:
            for f, v in init.items():
                if f not in obj:
                    raise ObjectError(f"new {tname}: no field {f!r}")
                obj[f] = v
        self.objs[h] = obj
        return h

    def free(self, h: int, by: str = "") -> list[int]:
        """Free an object (``by``: where, who, when, as a report says it); returns the
        addresses of its embedded locks (to destroy). Freeing it again is a double free,
        which names the first free, as memguard does."""
        if isinstance(h, int) and h not in self.objs and 0 < h < self.next_handle:
            first = self.freed_by.get(h)
            raise ObjectError(f"double free: object {h} ({self.otype.get(h, '?')}) freed "
                              f"again; first freed" + (f" @ {first}" if first else ""))
        self._obj(h)
        decl = self.types[self.otype[h]]
        on = [a for a, lst in self.lists.items() if h in lst.next]   # (frees are rare)
        if on:
            raise ObjectError(f"free of {self.name(h)} still on "
                              + ", ".join(self.describe(a) for a in on[:3])
                              + ": the list keeps a freed element")
        del self.objs[h]
        self.freed += 1
        if by:
            self.freed_by[h] = by
            if len(self.freed_by) > FREED_KEPT:
                del self.freed_by[next(iter(self.freed_by))]
        locks = []
        for i, f in enumerate(decl.order):
            kind = decl.fields[f][0]
            if kind == F_LIST:
                self.lists.pop(field_addr(h, i), None)
            elif kind == F_MAP:
                self.maps.pop(field_addr(h, i), None)
            elif kind == F_LOCK:
                locks.append(field_addr(h, i))
        return locks

    def resolve(self, addr: int) -> tuple[int, str, str]:
        """(handle, field, kind) of a field address; ObjectError if it names nothing."""
        if not isinstance(addr, int) or addr <= 0:
            raise ObjectError(f"bad address {addr!r}")
        h, i = addr >> FIELD_BITS, addr & ((1 << FIELD_BITS) - 1)
        self._obj(h)
        decl = self.types[self.otype[h]]
        if i >= len(decl.order):
            raise ObjectError(f"address {addr:#x}: {decl.name} has no field {i}")
        f = decl.order[i]
        return h, f, decl.fields[f][0]

    def describe(self, addr: int) -> str:
        """A field address as reports name it (``&proc#349.p_sflag``; a freed object's
        too), or the number in hex."""
        if isinstance(addr, int) and not isinstance(addr, bool) and addr > 0:
            h, i = addr >> FIELD_BITS, addr & ((1 << FIELD_BITS) - 1)
            decl = self.types.get(self.otype.get(h, ""))
            if decl is not None and i < len(decl.order):
                return f"&{self.name(h)}.{decl.order[i]}"
        return f"{addr:#x}" if isinstance(addr, int) else repr(addr)

    def name(self, h: Any) -> str:
        """An object as reports name it (``proc#349``; a freed one's too), or ``h``."""
        t = self.otype.get(h) if isinstance(h, int) and not isinstance(h, bool) else None
        return f"{t}#{h}" if t is not None else repr(h)

    def channel(self, chan: Any) -> str:
        """A sleep channel as the kernel would print it: the field it is the address
        of (``&proc#349.p_sflag``), the object itself at its first field's address
        (``&proc#1``: ``wakeup(&proc0)``), or the channel itself."""
        if isinstance(chan, int) and not isinstance(chan, bool) and chan > 0 \
                and chan & ((1 << FIELD_BITS) - 1) == 0 and chan >> FIELD_BITS in self.otype:
            return f"&{self.name(chan >> FIELD_BITS)}"
        return self.describe(chan) if isinstance(chan, int) else repr(chan)

    def type_of(self, h: int) -> str:
        self._obj(h)
        return self.otype[h]

    def field_lock(self, h: int, field: str) -> str:
        return str(self.types[self.otype[h]].fields[field][1])

    def _obj(self, h: int) -> dict[str, Any]:
        try:
            return self.objs[h]
        except (KeyError, TypeError):
            if isinstance(h, int) and 0 < h < self.next_handle:
                by = self.freed_by.get(h)
                raise ObjectError(f"use after free: object {h} ({self.otype.get(h, '?')}) "
                                  f"was freed" + (f" @ {by}" if by else "")) from None
            raise ObjectError(f"bad handle {h!r}") from None

    def _field(self, h: int, field: str) -> dict[str, Any]:
        obj = self._obj(h)
        if field not in obj:
            raise ObjectError(f"{self.otype[h]} {h} has no field {field!r}")
        return obj

    # -- loads, stores, atomics ------------------------------------------------------
    def load(self, h: int, field: str) -> Any:
        self.loads += 1
        return self._field(h, field)[field]

    def loadn(self, h: int, fields: list[str]) -> list[Any]:
        obj = self._obj(h)
        self.loads += len(fields)
        try:
            return [obj[f] for f in fields]
        except KeyError as e:
            raise ObjectError(f"{self.otype[h]} {h} has no field {e.args[0]!r}") from None

    def store(self, h: int, field: str, value: Any) -> None:
        self.stores += 1
        self._field(h, field)[field] = value

    def storen(self, h: int, values: dict[str, Any]) -> None:
        obj = self._obj(h)
        for f in values:
            if f not in obj:
                raise ObjectError(f"{self.otype[h]} {h} has no field {f!r}")
        self.stores += len(values)
        obj.update(values)

    def add(self, h: int, field: str, delta: int) -> int:
        obj = self._field(h, field)
        self.atomics += 1
        obj[field] += delta
        return int(obj[field])

    def cas(self, h: int, field: str, old: Any, new: Any) -> bool:
        obj = self._field(h, field)
        self.atomics += 1
        if obj[field] == old:
            obj[field] = new
            return True
        return False

    def setbits(self, h: int, field: str, bits: int) -> None:
        self.atomics += 1
        self._field(h, field)[field] |= bits

    def clrbits(self, h: int, field: str, bits: int) -> None:
        self.atomics += 1
        self._field(h, field)[field] &= ~bits

    # -- named globals ----------------------------------------------------------------
    def symbol(self, name: str, h: int) -> None:
        self._obj(h)
        self.symbols[name] = h

    def lookup(self, name: str) -> int:
        return self.symbols.get(name, 0)

    # -- lists ------------------------------------------------------------------------
    def listhead(self, addr: int) -> _List:
        lst = self.lists.get(addr)
        if lst is None:
            h, f, kind = self.resolve(addr)
            if kind != F_LIST:
                raise ObjectError(f"{self.otype[h]}#{h}.{f} is not a list head")
            lst = self.lists[addr] = _List()
        return lst

    def list_insert(self, addr: int, h: int, head: bool = False) -> None:
        """Put ``h`` on the list at ``addr`` (first, or last); a freed object is refused."""
        lst = self.listhead(addr)
        if h not in self.objs:
            self._obj(h)                           # names a use after free, or a bad handle
        if h in lst.next:                          # (a swap block released twice)
            raise ObjectError(f"list insert: {self.name(h)} is already on "
                              f"{self.describe(addr)}")
        if head:
            lst.insert_head(h)
        else:
            lst.insert_tail(h)

    def list_remove(self, addr: int, h: int) -> None:
        """Take ``h`` off the list at ``addr``; one not on it is refused, both named."""
        lst = self.listhead(addr)
        if h not in lst.next:
            raise ObjectError(f"list remove: {self.name(h)} is not on {self.describe(addr)}")
        lst.remove(h)

    def list_search(self, addr: int, lo: str, hi: str, value: Any) -> int:
        """The first element whose ``lo`` field <= ``value`` < its ``hi`` field: a walk of
        a sorted list (vm_map_lookup_entry) done where the list is, as one access."""
        lst = self.listhead(addr)
        h = lst.head
        while h:
            obj = self._obj(h)
            self.loads += 2
            if obj[lo] <= value < obj[hi]:
                return h
            if obj[lo] > value:
                return 0
            h = lst.next[h]
        return 0

    # -- maps -------------------------------------------------------------------------
    def maphead(self, addr: int) -> dict[Any, int]:
        m = self.maps.get(addr)
        if m is None:
            h, f, kind = self.resolve(addr)
            if kind != F_MAP:
                raise ObjectError(f"{self.otype[h]}#{h}.{f} is not a map")
            m = self.maps[addr] = {}
        return m

    def map_del(self, addr: int, key: Any) -> None:
        try:
            del self.maphead(addr)[key]
        except KeyError:
            raise ObjectError(f"map {self.describe(addr)}: no key {key!r}") from None

    # -- the device protocol -----------------------------------------------------------
    def statistics(self) -> ObjectStatistics:
        return ObjectStatistics(len(self.types), len(self.objs), self.next_handle - 1,
                                self.freed, len(self.lists), self.loads, self.stores,
                                self.atomics)

    def count_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.objs:
            t = self.otype[h]
            out[t] = out.get(t, 0) + 1
        return dict(sorted(out.items()))

    def count(self, tname: str, conds: list[list[Any]]) -> int:
        """How many live objects of ``tname`` match every condition: ``[field, "eq", v]``
        (field == v) or ``[field, "clear", bits]`` (field & bits == 0). For the kernel's
        invariant checker, which holds the locks that make the answer consistent."""
        decl = self.types.get(tname)
        if decl is None:
            raise ObjectError(f"count: unknown type {tname!r}")
        for c in conds:              # every condition checked first: an unknown operator
            if (not isinstance(c, list) or len(c) != 3 or c[1] not in COUNT_OPS
                    or c[0] not in decl.fields or (c[1] == "clear" and type(c[2]) is not int)):
                raise ObjectError(f"count {tname}: bad condition {c!r} (a condition is "
                                  f"[field, op, value], op one of {', '.join(COUNT_OPS)}, "
                                  f"clear with an int)")
        n = 0
        for h, obj in self.objs.items():
            if self.otype[h] != tname:
                continue
            for f, op, v in conds:
                x = obj[f]
                if (op == "eq" and x != v) or (op == "clear" and x & v):
                    break
            else:
                n += 1
        self.loads += n
        return n

    def field_sums(self) -> dict[str, dict[str, int]]:
        """For each type, the sum of each integer field over its live objects (for
        end-of-run conservation checks, which need no knowledge of the kernel here)."""
        out: dict[str, dict[str, int]] = {}
        for h, obj in self.objs.items():
            sums = out.setdefault(self.otype[h], {})
            for f, v in obj.items():
                if type(v) is int and -(1 << 40) < v < (1 << 40):   # counters, not limits
                    sums[f] = sums.get(f, 0) + v
        return out

    def symbol_values(self) -> dict[str, dict[str, Any]]:
        return {name: dict(self.objs[h]) for name, h in self.symbols.items()
                if h in self.objs}

    def dumpstate(self) -> str:
        s = self.statistics()
        counts = ", ".join(f"{t} {n}" for t, n in self.count_by_type().items())
        return (f"kernel memory: {s.live_objects} objects ({counts}); {s.loads} loads, "
                f"{s.stores} stores, {s.atomics} atomics")
