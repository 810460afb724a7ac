"""Lock-order checking (FreeBSD's WITNESS, 2002 rules) and deadlock detection.

The server sees every lock grant of every CPU in its true order, so it can do what
``subr_witness.c`` does inside one kernel: learn the order in which lock *classes* (lock
names: all proc locks are "process lock") are taken, starting from the static order of
the time, and report a **lock order reversal** the first time a thread takes two classes
in the order opposite to one already seen. It reports each reversal once, in WITNESS's
words: the 1st and 2nd lock with their types and where each was taken, and where the
established order was learned. The order is transitive, as ``isitmydescendant()`` walks
WITNESS's tree: after A -> B and B -> C (by any threads), C -> A is a reversal of
A -> B -> C though no two threads took the same two locks, and the report names where
each step of that order was first seen. The order is checked, and learned, when a thread is granted
a lock and already when it must wait for one (so a reversal that deadlocks at once is
reported too).

The static order it starts from, and the locks its rules make exceptions for, are the
kernel's: it registers them at boot (``register_order``), by lock name, as
``subr_witness.c``'s ``order_lists`` are part of the kernel. The rules are the checker's.

The 2002 rules (docs/FREEBSD.md, section B):

1. a blocking sleep lock taken with a spin lock held panics (the lock table does that);
2. try-locks are never order-checked and add no edge;
3. recursion on a lock that is not recursable and share->excl panic (the lock table);
   a second shared hold of an sx is not a recursion it reports (5.0's sx was
   LO_RECURSABLE: kernel/kern/kern_sx.py);
4. a second lock of the same name warns "acquiring duplicate lock of same type" unless
   the lock is DUPOK;
5. a reversal is reported, not a panic;
6. taking a sleepable lock (sx) while holding a non-sleepable mutex is a reversal too,
   except for the exempt locks (Giant, in 2002);
7. sleeping with a non-sleepable lock other than an exempt one and the interlock warns
   "sleeping with X locked"; a lock taken back after a sleep adds no order edge.

Locks flagged ``LF_NOWITNESS`` are not checked (the kernel so flags its lockmgr locks:
WITNESS did not know them in 2002).

**Deadlock**: each time a thread is queued on a lock, the wait-for graph (thread -> lock
it waits for -> owners of that lock -> locks they wait for ...) is followed from it; a
path back to the thread is a deadlock, reported with every edge (thread, lock, where it
was taken or requested). A spin lock held longer than a bound is reported too.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

from smp.hw.protocol import LF_DUPOK, LF_NOWITNESS, LK_RW, LK_SLEEP, LK_SPIN


@dataclasses.dataclass
class Finding:
    detector: str
    summary: str
    sites: list[str]
    detail: str = ""
    key: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"detector": self.detector, "summary": self.summary, "sites": self.sites,
                "detail": self.detail, "key": self.key or self.summary}


class Witness:
    """The lock order graph over lock names, learned and static."""

    def __init__(self, report: Callable[[Finding], None]) -> None:
        self.report = report
        self.edges: dict[str, dict[str, tuple[str, str]]] = collections.defaultdict(dict)
        self.reported: set[Any] = set()
        self.paths: dict[tuple[str, str], list[str] | None] = {}
        self.exempt: frozenset[str] = frozenset()

    def register_order(self, chains: list[list[str]], exempt: list[str]) -> None:
        """The kernel's static order (each chain: names in the order they are taken) and
        the locks exempt from rules 6 and 7."""
        for order in chains:
            for a, b in zip(order, order[1:]):
                self.edges[str(a)][str(b)] = ("static order", "static order")
        self.paths.clear()
        self.exempt = frozenset(str(x) for x in exempt)

    def _path(self, a: str, b: str) -> list[str] | None:
        """A path a -> ... -> b in the order graph, if any (remembered until the graph
        gains an edge: every acquire with locks held asks)."""
        key = (a, b)
        if key in self.paths:
            return self.paths[key]
        path = self.paths[key] = self._search(a, b)
        return path

    def _search(self, a: str, b: str) -> list[str] | None:
        prev: dict[str, str | None] = {a: None}
        q = collections.deque([a])
        while q:
            x = q.popleft()
            if x == b:
                path = [b]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            for y in self.edges.get(x, {}):
                if y not in prev:
                    prev[y] = x
                    q.append(y)
        return None

    def checkorder(self, new: Any, new_site: str, held: list[tuple[Any, str]],
                   trylock: bool, pickup: bool) -> None:
        """A thread that holds ``held`` [(Lock, site)...] takes ``new`` (a Lock) at
        ``new_site``: the checks, and the order learned. Called at the grant, and
        before that when the thread must wait for the lock (as FreeBSD's
        ``witness_checkorder`` later did: a reversal that deadlocks at once is still
        reported); each finding once."""
        if new.flags & LF_NOWITNESS or trylock or pickup:
            return
        for old, old_site in held:
            if old.flags & LF_NOWITNESS or old is new:
                continue
            if old.name == new.name:
                if not (new.flags & LF_DUPOK):
                    self._once(("dup", new.name), Finding(
                        "witness", f"acquiring duplicate lock of same type: \"{new.name}\"",
                        [old_site, new_site],
                        f" 1st {new.name} @ {old_site}\n 2nd {new.name} @ {new_site}"))
                continue
            if new.kind == LK_RW and old.kind == LK_SLEEP and old.name not in self.exempt:
                self._once(("sleepable", old.name, new.name), Finding(
                    "witness", f"lock order reversal: sleepable {new.name} ({new.cls}) acquired "
                    f"while holding non-sleepable {old.name}", [old_site, new_site],
                    f" 1st {old.name} ({old.cls}) @ {old_site}\n"
                    f" 2nd {new.name} ({new.cls}) @ {new_site}"))
            back = self._path(new.name, old.name)
            if back is not None:
                steps = [(a, b, self.edges[a][b]) for a, b in zip(back, back[1:])]
                if len(steps) == 1:
                    a, b, est = steps[0]
                    learned = f", first seen\n 1st {a} @ {est[0]}\n 2nd {b} @ {est[1]}"
                else:       # a cycle through other locks: where each step was learned
                    learned = ", each step first seen" + "".join(
                        f"\n {a} -> {b}: " + ("static order" if est[0] == "static order"
                                               else f"1st {a} @ {est[0]}, 2nd {b} @ {est[1]}")
                        for a, b, est in steps)
                self._once(("lor",) + tuple(sorted((old.name, new.name))), Finding(
                    "witness", f"lock order reversal: {old.name} -> {new.name} "
                    f"(established: {' -> '.join(back)}): 1st @ {old_site}, "
                    f"2nd @ {new_site}",
                    [old_site, new_site, *(s for _, _, est in steps for s in est)],
                    f"lock order reversal\n"
                    f" 1st {old.name} ({old.cls}) @ {old_site}\n"
                    f" 2nd {new.name} ({new.cls}) @ {new_site}\n"
                    f"established order: {' -> '.join(back)}{learned}"))
                continue
            if new.name not in self.edges[old.name]:
                self.edges[old.name][new.name] = (old_site, new_site)
                self.paths.clear()

    def sleeping(self, held: list[tuple[Any, str]], site: str, tid: int = 0,
                 caller: str = "") -> None:
        """Thread ``tid`` goes to sleep (msleep @ ``site``, called @ ``caller``) still
        holding ``held`` (its interlock and Giant are already dropped; sched_lock is the
        sleep queue's own)."""
        for lk, lsite in held:
            if lk.kind == LK_SLEEP and lk.name not in self.exempt:
                self._once(("sleeping", lk.name, site, caller), Finding(
                    "witness", f"sleeping with \"{lk.name}\" locked"
                    + (f" @ {caller}" if caller else ""),
                    [lsite, site] + ([caller] if caller else []),
                    f"sleeping with \"{lk.name}\" locked from {lsite}, sleep @ {site}"
                    + (f" (thread {tid}" + (f", msleep called @ {caller})" if caller
                                            else ")") if tid else "")))

    def _once(self, key: Any, f: Finding) -> None:
        if key not in self.reported:
            self.reported.add(key)
            f.key = "|".join(str(k) for k in key)
            self.report(f)

    def order(self) -> dict[str, list[str]]:
        return {a: sorted(bs) for a, bs in sorted(self.edges.items())}


def find_deadlock(start: int, waiting_for: Callable[[int], tuple[Any, str] | None],
                  owners: Callable[[Any], list[tuple[int, str]]]
                  ) -> list[tuple[int, Any, str, str]] | None:
    """A cycle in the wait-for graph through thread ``start``, as edges
    (thread, lock it waits for, where it asked, where the next thread took it)."""
    def walk(tid: int, path: list[tuple[int, Any, str, str]],
             seen: set[int]) -> list[tuple[int, Any, str, str]] | None:
        w = waiting_for(tid)
        if w is None:
            return None
        lock, wsite = w
        for owner, osite in owners(lock):
            edge = (tid, lock, wsite, osite)
            if lock.kind == LK_SPIN:
                # A spin lock's owner never sleeps holding it: if it waits for a sleep
                # lock it is on its way to sleep and will hand the spin lock on. Only a
                # spinning owner can close a cycle through a spin lock.
                ow = waiting_for(owner)
                if ow is None or ow[0].kind != LK_SPIN:
                    continue
            if owner == start:
                return path + [edge]
            if owner in seen:
                continue
            seen.add(owner)
            found = walk(owner, path + [edge], seen)
            if found:
                return found
        return None
    return walk(start, [], {start})


__all__ = ["Finding", "Witness", "find_deadlock"]
