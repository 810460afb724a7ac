"""Unprotected shared accesses: each field's lock key, checked at every load and store.

Every field of a kernel structure is declared with the key of the lock that protects it
(``sys/proc.h`` style: ``(c)`` the proc lock, ``(j)`` sched_lock, ``(m)`` Giant ...). The
kernel tells the server at boot what each key letter means (``DEFKEYS``): a lock *name*
("sched lock": any lock of that name held by the thread will do), or ``self``: the
object's own embedded lock (a proc's ``p_mtx``, a map's ``lock``), or ``store``: a lock
name that only stores need (a statistic read lazily everywhere but changed under a lock,
as ``cnt.v_free_count``). A store needs its lock exclusive (a field an sx lock protects
is read under it shared, changed under it exclusive). Keys with no meaning (``b`` set at creation, ``n`` lazily
unlocked, none) are not checked.

An access by a thread that does not hold the required lock is reported once per
(field, site, load or store), with the object, the thread, the site and the locks it
held, in the spirit of KCSAN. Atomic operations are exempt, and so are the accesses the
kernel marks as intentionally unlocked (``LOADR``/``STORER``, as FreeBSD later marked such
reads with atomic loads); FINDINGS.md lists the ones the seed makes and why.

Initialisation: as in Eraser (Savage et al., 1997), an object is private to the thread
that created it until another thread touches it; accesses before that are not checked,
so a constructor filling in a new object needs no locks.

**Lost updates.** An unlocked load is remembered until the same thread stores the field:
if another thread stored it in between, that store is lost (the read-modify-write wrote
back a value computed from the old one), and the report says so, with the three
accesses and their operations: the race happened, it is not only possible.
"""

from __future__ import annotations

from typing import Any, Callable

from smp.machine.locks import LockTable
from smp.hw.protocol import EXCL, F_LOCK, field_addr
from smp.machine.objects import ObjectStore
from smp.machine.witness import Finding


class LockKeyChecker:
    def __init__(self, kmem: ObjectStore, locks: LockTable,
                 report: Callable[[Finding], None]) -> None:
        self.kmem = kmem
        self.locks = locks
        self.report = report
        self.keys: dict[str, tuple[str, str]] = {}
        self.private: dict[int, int] = {}          # handle -> creating tid, until shared
        self.self_lock: dict[str, int] = {}        # type -> index of its first lock field
        self.reported: set[tuple[str, str, str, str]] = set()
        self.checked = 0
        self.ops: Callable[[], int] = lambda: 0     # the machine's operation count
        # (object, field) -> thread -> its unlocked load not yet followed by its store:
        # (site, operation, the store of another thread since: site, thread, operation,
        # the value it loaded)
        self.pending: dict[tuple[int, str], dict[int, list[Any]]] = {}
        # (thread, object) -> field -> the lost update its store being handled makes: the
        # value it loaded, where, and the other thread's store it loses (thread, site,
        # operation); taken by the server after the store (the hold ledger's: a count
        # that a lost update left higher or lower than its raises)
        self.stale: dict[tuple[int, int], dict[str, tuple[int, str, int, str, int]]] = {}

    def define_keys(self, table: dict[str, list[str]]) -> None:
        self.keys = {k: (v[0], v[1]) for k, v in table.items()}

    def created(self, h: int, tid: int) -> None:
        if tid:
            self.private[h] = tid

    def _self_index(self, tname: str) -> int:
        idx = self.self_lock.get(tname)
        if idx is None:
            decl = self.kmem.types[tname]
            idx = next((i for i, f in enumerate(decl.order)
                        if decl.fields[f][0] == F_LOCK), -1)
            self.self_lock[tname] = idx
        return idx

    def access(self, tid: int, site: str, h: int, fields: list[str], kind: str) -> None:
        if not tid or not self.keys:
            return
        owner = self.private.get(h)
        if owner is not None:
            if owner == tid:
                return
            del self.private[h]                     # now shared: checked from here on
        tname = self.kmem.otype.get(h)
        if tname is None:
            return                                  # a bad handle: the access itself fails
        decl = self.kmem.types[tname]
        t = self.locks.threads.get(tid)
        held = t.held if t is not None else []
        for f in fields:
            spec = decl.fields.get(f)
            if spec is None:
                continue
            if kind == "store" and (h, f) in self.pending:
                self._stored(tid, site, h, f, tname)
            key = spec[1]
            need = self.keys.get(key)
            if need is None or (need[0] == "store" and kind != "store"):
                continue                            # a "store" key: loads are lazy
            self.checked += 1
            if need[0] == "self":
                idx = self._self_index(tname)
                if idx < 0:
                    continue
                want = field_addr(h, idx)
                ok = any(a == want for a, _, _ in held)
                what = f"its own {decl.order[idx]}"
            else:
                # a store needs the lock exclusive: a field an sx protects is read under
                # it shared and changed under it exclusive (allproc's LIST_REMOVE)
                modes = [m for a, m, _ in held
                         if a in self.locks.locks and self.locks.locks[a].name == need[1]]
                ok = bool(modes) and (kind == "load" or EXCL in modes)
                what = need[1] if ok or not modes else f"{need[1]} exclusive, held shared"
            if ok:
                continue
            if kind == "load":
                self._loaded(tid, site, h, f)
            rkey = (tname, f, site, kind)
            if rkey in self.reported:
                continue
            self.reported.add(rkey)
            names = [f"{self.locks.locks[a].name if a in self.locks.locks else hex(a)} @ {s}"
                     for a, _, s in held]
            self.report(Finding(
                "lockkey", f"unlocked {kind} of {tname}.{f} ({key}: needs {what}) @ {site}",
                [site], f"{kind} of {tname}#{h}.{f} by thread {tid} @ {site} without {what}; "
                f"held: {', '.join(names) or 'nothing'}", f"lockkey|{tname}.{f}|{site}|{kind}"))


    def _loaded(self, tid: int, site: str, h: int, f: str) -> None:
        """An unlocked load: remembered until this thread stores the field."""
        if len(self.pending) > PENDING_KEPT:        # loads never stored back: forget
            del self.pending[next(iter(self.pending))]
        self.pending.setdefault((h, f), {})[tid] = [site, self.ops(), None,
                                                    self.kmem.objs.get(h, {}).get(f)]

    def _stored(self, tid: int, site: str, h: int, f: str, tname: str) -> None:
        """A store of a field some thread loaded unlocked: the other loaders' values
        are stale now; this thread's own read-modify-write lost a store if one came
        between its load and this store."""
        waiting = self.pending[(h, f)]
        mine = waiting.pop(tid, None)
        op = self.ops()
        for other in waiting.values():
            if other[2] is None:
                other[2] = (site, tid, op)
        if not waiting:
            del self.pending[(h, f)]
        if mine is None or mine[2] is None:
            return
        lsite, lop, (osite, otid, oop), value = mine
        if isinstance(value, int) and not isinstance(value, bool):
            if len(self.stale) > PENDING_KEPT:      # (a list head's, never taken)
                self.stale.clear()
            self.stale.setdefault((tid, h), {})[f] = (value, lsite, otid, osite, oop)
        rkey = (tname, f, f"{lsite}|{osite}|{site}", "lost")
        if rkey in self.reported:
            return
        self.reported.add(rkey)
        self.report(Finding(
            "lockkey", f"lost update of {tname}.{f} (loaded unlocked @ {lsite}, stored @ "
            f"{site}; thread {otid}'s store @ {osite} between them is lost)",
            [lsite, site, osite],
            f"thread {tid} loaded {tname}#{h}.{f} without its lock @ {lsite} (operation "
            f"{lop}), thread {otid} stored it @ {osite} (operation {oop}), then thread "
            f"{tid} stored it @ {site} (operation {op}): its value came from before "
            f"thread {otid}'s store, which is lost",
            f"lockkey|{tname}.{f}|lost|{lsite}|{osite}"))


PENDING_KEPT = 50_000       # fields loaded unlocked and not yet stored back, remembered


__all__ = ["LockKeyChecker"]
