"""Lock profiling: how often each lock is taken, how long it is held, and who waits for it.

After FreeBSD's LOCK_PROFILING (``kern/subr_lock.c``: ``lock_profile_obtain_lock_success``
and ``lock_profile_release_lock``, read out with ``sysctl debug.lock.prof.stats``). The
lock table (``smp.machine.locks``) decides who owns a lock; it tells this module each time
ownership changes hands, and this module only counts. So the two can be read apart:
ownership is the machine's semantics, profiling is an observer of it, and nothing here can
change who gets a lock.

Two tables, as FreeBSD keeps them:

* per lock *name* (all proc locks together, as WITNESS names them): acquisitions, how many
  were contested, the CPUs that took it, the longest hold, the total wait; with the lock's
  class and where it was last taken (``show witness``);
* per (name, acquisition site): LOCK_PROFILING's rows, ``max``, ``wait_max``, ``total``,
  ``wait_total``, ``count``, ``avg``, ``wait_avg``, ``cnt_hold`` (times someone waited while
  this site held the lock) and ``cnt_lock`` (times this site waited for it).

Times are microseconds of whatever clock the lock table runs on: the host's, or in
virtual time the machine's (``hw/clock.py``).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class SiteProfile:
    """One row of LOCK_PROFILING: a lock name acquired at one site."""
    max_hold_us: float = 0.0
    wait_max_us: float = 0.0
    total_hold_us: float = 0.0
    wait_total_us: float = 0.0
    count: int = 0
    cnt_hold: int = 0       # times someone had to wait while this site held the lock
    cnt_lock: int = 0       # times this site had to wait for the lock


@dataclasses.dataclass
class NameStats:
    acquires: int = 0
    contested: int = 0
    cpus_seen: set[int] = dataclasses.field(default_factory=set)
    max_hold_us: float = 0.0
    wait_us_total: float = 0.0
    cls: str = ""                 # the lock class (WITNESS keeps one per name)
    last_site: str = ""           # where it was last acquired (`show witness`)


class LockProfile:
    """The two tables, fed by the lock table as ownership changes."""

    def __init__(self) -> None:
        self.by_name: dict[str, NameStats] = collections.defaultdict(NameStats)
        self.sites: dict[tuple[str, str], SiteProfile] = collections.defaultdict(SiteProfile)

    # -- what the lock table tells it ----------------------------------------------------
    def obtained(self, name: str, cls: str, cpu: int, site: str, waited_us: float) -> None:
        """A thread of ``cpu`` took lock ``name`` at ``site``, after waiting ``waited_us``
        (0: it did not wait)."""
        st = self.by_name[name]
        st.acquires += 1
        st.cpus_seen.add(cpu)
        st.cls = cls
        st.last_site = site
        prof = self.sites[(name, site)]
        prof.count += 1
        if waited_us > 0:
            st.contested += 1
            st.wait_us_total += waited_us
            prof.cnt_lock += 1
            prof.wait_total_us += waited_us
            prof.wait_max_us = max(prof.wait_max_us, waited_us)

    def recursed(self, name: str) -> None:
        """A recursive acquisition: counted, no hold of its own."""
        self.by_name[name].acquires += 1

    def released(self, name: str, site: str, hold_us: float, waited_on: bool) -> None:
        """The hold taken at ``site`` ended after ``hold_us``; ``waited_on``: somebody
        waited for the lock meanwhile."""
        st = self.by_name[name]
        st.max_hold_us = max(st.max_hold_us, hold_us)
        prof = self.sites[(name, site)]
        prof.total_hold_us += hold_us
        prof.max_hold_us = max(prof.max_hold_us, hold_us)
        if waited_on:
            prof.cnt_hold += 1

    # -- reports -----------------------------------------------------------------------
    def lock_report(self) -> list[dict[str, Any]]:
        """Per lock name, sorted by name."""
        rows = []
        for name, st in sorted(self.by_name.items()):
            rows.append({"name": name, "acquires": st.acquires, "contested": st.contested,
                         "cpus_seen": sorted(st.cpus_seen),
                         "max_hold_us": round(st.max_hold_us, 1),
                         "wait_us_total": round(st.wait_us_total, 1),
                         "class": st.cls, "last_acquired": st.last_site})
        return rows

    def profile_report(self) -> list[dict[str, Any]]:
        """LOCK_PROFILING's table, most contended first."""
        rows = []
        for (name, site), p in self.sites.items():
            rows.append({"name": name, "site": site, "max": round(p.max_hold_us, 1),
                         "wait_max": round(p.wait_max_us, 1),
                         "total": round(p.total_hold_us, 1),
                         "wait_total": round(p.wait_total_us, 1), "count": p.count,
                         "avg": round(p.total_hold_us / p.count, 2) if p.count else 0.0,
                         "wait_avg": round(p.wait_total_us / p.count, 2) if p.count else 0.0,
                         "cnt_hold": p.cnt_hold, "cnt_lock": p.cnt_lock})
        rows.sort(key=lambda r: (-r["wait_total"], -r["count"]))
        return rows


__all__ = ["LockProfile", "NameStats", "SiteProfile"]
