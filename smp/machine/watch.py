"""A watchpoint on a replay, as rr's: who touched this object, field or lock, and when
(``smp replay RUN_DIR --watch WHAT``).

The server sees every operation of the machine in the order it applies them, so a watch
attached to it (as the tracer of ``smp trace`` is: ``smp.machine.trace``; the server calls
both after it has handled an ordered request, and only if one is attached) sees every
access of the watched thing in the run, with its operation number (the number ``--until N``
takes), its CPU, its thread, its kernel site and, for a store, what it stored over what.
A replay allocates objects in the recorded order, so ``proc#12`` is the proc that the
recorded run's reports named so.

What can be watched (:func:`parse`; anything else is a usage error):

* ``TYPE#N.FIELD`` (or ``&TYPE#N.FIELD``, as reports print a field's address): every load
  and store of the field, atomics included, and, for a field that is a list head, a hash
  table, a lock or a sleep channel, every operation on it (an insert, an acquire, a
  sleep...);
* ``TYPE#N``: all of the above for every field of the object, plus its allocation, its
  free, and its insertion on and removal from any list;
* ``lock:NAME``: every lock of that name (``lock:Giant``; ``lock:process lock`` names every
  proc's): acquires (granted at once, contested: the thread waits, or a try-lock that
  failed), the grant to a waiter, releases, a spin lock handed on, and msleep's release of
  its interlock.

Old values come from the watch's own copy of the watched fields, taken at the object's
allocation and kept at every store the watch sees: every change to a field is an
operation of the server, so the copy is the field's value before the next one. Lines go
to the file as they come (past ``limit`` they are counted, not written); at the end the
file says, for each WHAT, how many accesses it matched or why it matched none (no such
object in the run, an object of another type, no such field, no lock of that name).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from smp.hw.protocol import AF_LINE, BUSY, FIELD_BITS, GRANTED, GRANTED_LINE, QUEUED, Op
from smp.machine.files import RunFile
from smp.machine.objects import ObjectStore
from smp.machine.peers import short
from smp.machine.sites import annotate

WATCH_FILE = "watch.txt"
USAGE = ("a watch is TYPE#N (an object: every access of it, its allocation and free, its "
         "moves on and off lists), TYPE#N.FIELD or &TYPE#N.FIELD (one field), or "
         "lock:NAME (every lock of that name: acquires, waits, releases), objects and "
         "fields as reports name them (proc#12, &proc#12.FIELD)")

_OBJ = re.compile(r"&?([A-Za-z_]\w*)#([1-9]\d*)(?:\.([A-Za-z_]\w*))?")
_MASK = (1 << FIELD_BITS) - 1

# by what they do to the object in args[0]
_LOADS = frozenset({Op.LOAD, Op.LOADN, Op.LOADR})
_STORES = {Op.STORE: "store", Op.STOREN: "store", Op.STORER: "store (racy)",
           Op.ADD: "atomic add", Op.ADDP: "add", Op.CAS: "cas", Op.SETBITS: "setbits",
           Op.CLRBITS: "clrbits"}
# on the field at the address args[0]
_ON_FIELD = {Op.LIST_INSERT_HEAD: "list insert head", Op.LIST_INSERT_TAIL: "list insert tail",
             Op.LIST_REMOVE: "list remove", Op.LIST_FIRST: "list first",
             Op.LIST_NEXT: "list next", Op.LIST_ITEMS: "list items", Op.LIST_LEN: "list len",
             Op.LIST_SEARCH: "list search", Op.MAP_GET: "map get", Op.MAP_SET: "map set",
             Op.MAP_DEL: "map del", Op.LOCK_INIT: "lock init", Op.LOCK_DESTROY: "lock destroy",
             Op.ACQUIRE: "acquire", Op.RELEASE: "release", Op.HANDOFF: "handoff",
             Op.SLEEP: "sleep", Op.WAKEUP: "wakeup", Op.UNSLEEP: "unsleep"}
_INSERTS = {Op.LIST_INSERT_HEAD: "put on list", Op.LIST_INSERT_TAIL: "put on list",
            Op.LIST_REMOVE: "taken off list"}
_ON_CHANNEL = frozenset({Op.SLEEP, Op.WAKEUP, Op.UNSLEEP})
_ON_LOCK = frozenset({Op.LOCK_INIT, Op.LOCK_DESTROY})
_HELD = frozenset({Op.ACQUIRE, Op.RELEASE, Op.HANDOFF})
_LOCK_OPS = frozenset({Op.ACQUIRE, Op.RELEASE, Op.HANDOFF, Op.SLEEP})


@dataclasses.dataclass(frozen=True)
class Spec:
    """One WHAT: an object (``field`` None: all of it) or a field of one, or locks by name."""
    text: str
    tname: str = ""
    handle: int = 0
    field: str | None = None
    lock: str | None = None


def parse(what: str) -> Spec:
    """A WHAT as the command line gives it, or ValueError saying what is allowed."""
    w = what.strip()
    if w.startswith("lock:"):
        name = w[5:].strip()
        if not name:
            raise ValueError(f"--watch {what!r}: no lock name after 'lock:'; {USAGE}")
        return Spec(w, lock=name)
    m = _OBJ.fullmatch(w)
    if m is None:
        raise ValueError(f"--watch {what!r}: not an object, a field or a lock; {USAGE}")
    if w.startswith("&") and m.group(3) is None:
        raise ValueError(f"--watch {what!r}: &TYPE#N is the address of a field: name it "
                         f"(&{m.group(1)}#{m.group(2)}.FIELD), or watch the object "
                         f"({m.group(1)}#{m.group(2)}); {USAGE}")
    return Spec(w.lstrip("&"), m.group(1), int(m.group(2)), m.group(3))


def named(text: str) -> list[str]:
    """The objects and fields a report's text names as reports name them (``vm_page#812``,
    ``&proc#12.p_lock``), each once, in order, as ``--watch`` takes them."""
    out: list[str] = []
    for m in _OBJ.finditer(text):
        w = m.group(0).lstrip("&")
        if w not in out:
            out.append(w)
    return out


class Watch:
    """The watched accesses of one replay, written to ``path`` as they happen."""

    def __init__(self, path: str, whats: list[str], kmem: ObjectStore,
                 lock_names: dict[int, str], ops: Callable[[], int],
                 thread_name: Callable[[int], str] = lambda tid: "",
                 sources: Callable[[], dict[str, Any] | None] = lambda: None,
                 mark: Callable[[int, str, int], None] | None = None,
                 failed: Callable[[str], None] = lambda error: None,
                 limit: int = 1_000_000) -> None:
        self.specs = [parse(w) for w in whats]
        self.kmem = kmem
        self.names = lock_names              # the lock table's: address -> name, live
        self.ops = ops                       # the number of the operation being handled
        self.thread_name = thread_name
        self.sources = sources               # the kernel's C lines of its sites, once known
        self.mark = mark                     # smp trace --watch: a mark on the timeline
        self.limit = limit
        self.events = 0
        self.dropped = 0
        self.matched = [0] * len(self.specs)
        # handle -> [(spec index, field or None)], and lock name -> [spec index]
        self.objects: dict[int, list[tuple[int, str | None]]] = {}
        self.lock_specs: dict[str, list[int]] = {}
        for i, s in enumerate(self.specs):
            if s.lock is not None:
                self.lock_specs.setdefault(s.lock, []).append(i)
            else:
                self.objects.setdefault(s.handle, []).append((i, s.field))
        self.typed: set[int] = set()         # handles whose watches' types are checked
        self.shadow: dict[int, dict[str, Any]] = {}    # handle -> field -> value now
        self.pending: list[str] = []         # grants made while an operation was handled
        self.out = RunFile(path, failed)     # given up once a write fails
        self._write(f"# smp watch: {', '.join(s.text for s in self.specs)}\n"
                    f"# operation, cpu, thread, what it did, @ kernel site\n")

    # -- what the server tells it ------------------------------------------------------
    def request(self, cpu: int, tid: int, op: int, site: str, t: int, args: list[Any],
                value: Any) -> None:
        """An ordered operation was handled (``value``: its reply, if any)."""
        if self.objects:
            self._objects(cpu, tid, op, site, t, args, value)
        if op in _LOCK_OPS:
            self._locks(cpu, tid, op, site, t, args, value)
        if self.pending:
            for line in self.pending:
                self._line(line)
            self.pending.clear()

    def granted(self, cpu: int, tid: int, lock: int, t: int) -> None:
        """A queued acquire was handed the lock (written after the operation that did)."""
        hits = self._lock_hits(lock)
        if hits:
            self.pending.append(self._fmt(self.ops(), cpu, tid, "granted",
                                          f"{self._lock(lock)} (after waiting)", "", hits))
            if self.mark is not None:
                self.mark(cpu, f"watch: granted {self._lock(lock)}", t)

    def close(self) -> None:
        """The end: what each WHAT matched, or why it matched nothing."""
        for line in self.pending:
            self._line(line)
        self.pending.clear()
        lines = ["", f"# {self.events} accesses"
                 + (f" ({self.dropped} more not written: the watch's limit)"
                    if self.dropped else "")]
        for s, note in zip(self.specs, self.verdicts()):
            lines.append(f"# {s.text}: {note}")
        self._write("\n".join(lines) + "\n")
        self.out.close()

    @property
    def error(self) -> str | None:
        """Why the file was given up (a write failed), if it was."""
        return self.out.error

    def flush(self) -> None:
        self.out.flush()

    def verdicts(self) -> list[str]:
        """For each WHAT: how many accesses it matched, or why it matched none."""
        return [f"{n} accesses" if n else f"NOTHING MATCHED: {self._why_not(s)}"
                for s, n in zip(self.specs, self.matched)]

    def statistics(self) -> dict[str, Any]:
        return {"path": self.out.path, "events": self.events, "dropped": self.dropped,
                "watches": [{"what": s.text, "matched": n, "note": note}
                            for s, n, note in zip(self.specs, self.matched,
                                                  self.verdicts())]}

    # -- objects and fields ------------------------------------------------------------
    def _objects(self, cpu: int, tid: int, op: int, site: str, t: int, args: list[Any],
                 value: Any) -> None:
        objects = self.objects
        if op == Op.NEW or op == Op.NEWN:
            for h in (value if op == Op.NEWN and isinstance(value, list) else [value]):
                watched = self._watched(h) if type(h) is int and h in objects else None
                if watched:
                    self._alloc(cpu, tid, site, t, h, watched)
            return
        a0 = args[0] if args else None
        if type(a0) is not int:
            return
        if op in _STORES or op in _LOADS or op == Op.FREE:
            watched = self._watched(a0) if a0 in objects else None
            if watched:
                self._on_object(cpu, tid, op, site, t, a0, args, value, watched)
            return
        kind = _ON_FIELD.get(op)
        if kind is None or op in _HELD:         # (acquires, releases: see _locks)
            return
        watched = self._watched(a0 >> FIELD_BITS) if a0 >> FIELD_BITS in objects else None
        if watched is not None:
            field = self._field_of(a0)
            hits = [i for i, f in watched if f is None or f == field]
            if hits:
                where = (self.kmem.channel(a0) if op in _ON_CHANNEL
                         else self._lock(a0) if op in _ON_LOCK else self.kmem.describe(a0))
                self._emit(cpu, tid, site, t, kind, where, self._field_op(op, args, value),
                           hits)
        if op in _INSERTS and len(args) > 1 and type(args[1]) is int and args[1] in objects:
            watched = self._watched(args[1])
            hits = [i for i, f in watched or () if f is None]
            if hits:
                self._emit(cpu, tid, site, t, _INSERTS[op],
                           f"{self.kmem.name(args[1])} {'on' if op != Op.LIST_REMOVE else 'from'}"
                           f" {self.kmem.describe(a0)}", "", hits)

    def _watched(self, h: int) -> list[tuple[int, str | None]]:
        """The watches of handle ``h`` (in ``objects``) that name its type: proc#12 is not
        thread#12 (decided once, when the handle is first seen)."""
        if h not in self.typed:
            t = self.kmem.otype.get(h)
            self.objects[h] = [(i, f) for i, f in self.objects[h]
                               if self.specs[i].tname == t]
            self.typed.add(h)
        return self.objects[h]

    def _on_object(self, cpu: int, tid: int, op: int, site: str, t: int, h: int,
                   args: list[Any], value: Any, watched: list[tuple[int, str | None]]) -> None:
        name = self.kmem.name(h)
        if op == Op.FREE:
            hits = [i for i, f in watched if f is None]
            if hits:
                self._emit(cpu, tid, site, t, "free", name, "", hits)
            self.shadow.pop(h, None)
            return
        if op in (Op.LOAD, Op.STORE, Op.ADD, Op.ADDP, Op.CAS, Op.SETBITS, Op.CLRBITS):
            fields = [args[1]] if len(args) > 1 else []
        elif op == Op.STOREN or op == Op.STORER:
            fields = list(args[1]) if len(args) > 1 and isinstance(args[1], dict) else []
        else:
            fields = list(args[1]) if len(args) > 1 and isinstance(args[1], list) else []
        if op in _LOADS:
            values = [value] if op == Op.LOAD else (list(value) if isinstance(value, list)
                                                    else [])
            kind = "load (racy)" if op == Op.LOADR else "load"
            for k, f in enumerate(fields):
                hits = [i for i, w in watched if w is None or w == f]
                if hits:
                    v = values[k] if k < len(values) else "?"
                    self._emit(cpu, tid, site, t, kind, f"{name}.{f}", f"= {short(v)}", hits)
            return
        obj = self.kmem.objs.get(h)
        shadow = self.shadow.setdefault(h, {})
        for f in fields:
            hits = [i for i, w in watched if w is None or w == f]
            if not hits or obj is None or f not in obj:
                continue
            new = obj[f]
            old = shadow.get(f, _UNKNOWN)
            shadow[f] = new
            what = f"{short(old)} -> {short(new)}"
            if op == Op.CAS and len(args) > 3 and not value:
                what = f"failed: {short(new)} is not {short(args[2])}"
            self._emit(cpu, tid, site, t, _STORES[op], f"{name}.{f}", what, hits)

    def _alloc(self, cpu: int, tid: int, site: str, t: int, h: int,
               watched: list[tuple[int, str | None]]) -> None:
        obj = self.kmem.objs.get(h) or {}
        self.shadow[h] = dict(obj)
        hits = [i for i, f in watched if f is None]
        if hits:
            self._emit(cpu, tid, site, t, "alloc", self.kmem.name(h), "", hits)
        for i, f in watched:                 # a field's first value: set by whom, where
            if f is not None and obj.get(f) is not None:     # (a lock, a list: none)
                self._emit(cpu, tid, site, t, "alloc", f"{self.kmem.name(h)}.{f}",
                           f"= {short(obj[f])}", [i])

    def _field_of(self, addr: int) -> str | None:
        decl = self.kmem.types.get(self.kmem.otype.get(addr >> FIELD_BITS, ""))
        i = addr & _MASK
        return decl.order[i] if decl is not None and i < len(decl.order) else None

    def _field_op(self, op: int, args: list[Any], value: Any) -> str:
        """What an operation on a list, map, lock or channel did, in a few words."""
        kmem = self.kmem
        if op in _INSERTS or op == Op.LIST_NEXT:
            el = kmem.name(args[1]) if len(args) > 1 else "?"
            return el + (f" -> {kmem.name(value) if value else 'NULL'}"
                         if op == Op.LIST_NEXT else "")
        if op == Op.LIST_FIRST:
            return f"-> {kmem.name(value) if value else 'NULL'}"
        if op in (Op.LIST_LEN, Op.LIST_SEARCH, Op.MAP_GET):
            return f"-> {short(kmem.name(value) if op == Op.LIST_SEARCH and value else value)}"
        if op == Op.ACQUIRE:
            return _acquired(args, value)
        if op == Op.HANDOFF:
            return f"to thread {args[1]}" if len(args) > 1 else ""
        if op == Op.WAKEUP:
            return f"woke {short(value)}"
        if op == Op.UNSLEEP:
            return f"thread {args[1] if len(args) > 1 else '?'}" + ("" if value else
                                                                     " (not asleep)")
        if op in (Op.MAP_SET, Op.MAP_DEL):
            return short(args[1:])
        return ""

    # -- locks by name -----------------------------------------------------------------
    def _lock_hits(self, lock: Any) -> list[int]:
        """The watches of a lock: by its name, or as a field of a watched object."""
        hits = list(self.lock_specs.get(self.names.get(lock, ""), ())) \
            if self.lock_specs else []
        if type(lock) is int and lock >> FIELD_BITS in self.objects:
            watched = self._watched(lock >> FIELD_BITS)
            if watched:
                field = self._field_of(lock)
                hits += [i for i, f in watched if f is None or f == field]
        return hits

    def _locks(self, cpu: int, tid: int, op: int, site: str, t: int, args: list[Any],
               value: Any) -> None:
        """Acquires, releases and handoffs of a lock watched by name or as a field, and
        msleep's release of its interlock."""
        if not args:
            return
        if op == Op.SLEEP:                   # msleep drops its interlock
            lock = args[1] if len(args) > 1 else 0
            hits = self._lock_hits(lock) if lock else []
            if hits:
                self._emit(cpu, tid, site, t, "release", self._lock(lock),
                           f"(msleep on {self.kmem.channel(args[0])})", hits)
            return
        hits = self._lock_hits(args[0])
        if not hits:
            return
        if op == Op.ACQUIRE:
            self._emit(cpu, tid, site, t, "acquire", self._lock(args[0]),
                       _acquired(args, value), hits)
        elif op == Op.RELEASE:
            self._emit(cpu, tid, site, t, "release", self._lock(args[0]), "", hits)
        elif op == Op.HANDOFF:
            self._emit(cpu, tid, site, t, "handoff", self._lock(args[0]),
                       f"to {self._who(args[1])}" if len(args) > 1 else "", hits)

    def _lock(self, lock: Any) -> str:
        name = self.names.get(lock)
        where = self.kmem.describe(lock) if type(lock) is int else short(lock)
        return f'"{name}" ({where})' if name else where

    # -- output ------------------------------------------------------------------------
    def _who(self, tid: Any) -> str:
        name = self.thread_name(tid) if type(tid) is int and tid else ""
        return f"thread {tid}" + (f" ({name})" if name else "")

    def _fmt(self, n: int, cpu: int, tid: int, kind: str, what: str, how: str,
             hits: list[int], site: str = "") -> str:
        for i in hits:
            self.matched[i] += 1
        return (f"op {n:>8}  cpu {cpu}  {self._who(tid):<28} {kind:<12} {what}"
                + (f" {how}" if how else "") + (f" @ {site}" if site else ""))

    def _emit(self, cpu: int, tid: int, site: str, t: int, kind: str, what: str, how: str,
              hits: list[int]) -> None:
        text = self._fmt(self.ops(), cpu, tid, kind, what, how, hits,
                         annotate(site, self.sources()))
        self._line(text)
        if self.mark is not None:
            self.mark(cpu, f"watch: {kind} {what} {how}".rstrip(), t)

    def _line(self, text: str) -> None:
        if self.events >= self.limit:
            self.dropped += 1
            return
        self.events += 1
        self._write(text + "\n")

    def _write(self, text: str) -> None:
        self.out.write(text)

    def _why_not(self, s: Spec) -> str:
        """Why a WHAT matched nothing in the run (so far as it went)."""
        kmem = self.kmem
        if s.lock is not None:
            names = sorted(set(self.names.values()))
            if s.lock not in names:
                return (f"no lock is named {s.lock!r} in this run (its locks: "
                        f"{', '.join(names[:20])}{', ...' if len(names) > 20 else ''})"
                        if names else f"no lock is named {s.lock!r}: this run made none")
            return f"the locks named {s.lock!r} were never taken or released"
        t = kmem.otype.get(s.handle)
        if t is None:
            return (f"no object #{s.handle} was allocated in the {self.ops()} operations "
                    f"replayed (they allocated #1 to #{kmem.next_handle - 1})")
        if t != s.tname:
            return f"object #{s.handle} is a {t} ({t}#{s.handle}), not a {s.tname}"
        decl = kmem.types.get(t)
        if s.field is not None and decl is not None and s.field not in decl.fields:
            return (f"a {t} has no field {s.field!r} (its fields: "
                    f"{', '.join(decl.order)})")
        return f"{s.text} was never accessed"


class _Unknown:
    def __repr__(self) -> str:
        return "?"


_UNKNOWN = _Unknown()


def _acquired(args: list[Any], value: Any) -> str:
    """What an ACQUIRE's reply says happened."""
    line = len(args) > 2 and isinstance(args[2], int) and args[2] & AF_LINE
    if line or value in (GRANTED, GRANTED_LINE):
        return "granted"
    if value == QUEUED:
        return "CONTESTED: waits"
    if value == BUSY:
        return "busy (try failed)"
    return short(value)


def watch_lines(path: str, head: int = 40, tail: int = 10) -> tuple[list[str], int]:
    """What a console shows of a watch file: its first ``head`` and last ``tail`` accesses
    (with a line saying how many lie between), then its verdicts; and the accesses' count."""
    with open(path) as f:
        lines = [line.rstrip("\n") for line in f]
    body = [ln for ln in lines if ln.startswith("op ")]
    verdicts = [ln[2:] for ln in lines if ln.startswith("# ") and ": " in ln
                and not ln.startswith("# smp watch:") and not ln.startswith("# operation,")]
    if len(body) > head + tail:
        body = body[:head] + [f"... {len(body) - head - tail} more ..."] + \
            body[-tail:]
    return body + verdicts, sum(1 for ln in lines if ln.startswith("op "))


__all__ = ["USAGE", "WATCH_FILE", "Spec", "Watch", "named", "parse", "watch_lines"]
