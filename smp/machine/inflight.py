"""Invariants in flight (``detector = "inflight"``): states that must never coexist,
checked at the moment of the store that makes them.

The kernel's own checks (``check_procs`` and the end-of-run invariants) run when the
machine is quiet and skip what is in flight; a race that leaves two states together for
a few instructions passes them. Here the server looks at every store of a watched field
and every change of the kernel MMU, as they happen, and reports the coexistence with
both sites: the store that made it and the last store of the other side, with the
operation that was and its thread, for ``smp replay --until`` (INVARIANTS' KASSERT placed
everywhere at once, with memguard's eye on pages).

What is watched is what the kernel registered at boot (``POLICY inflight``): the server
names nothing of the kernel. Three kinds of rules:

* ``exclusive``: bits of one field that must never be set together (a type, a field, a
  map of bit names to values). Checked at each store to the field; the report names the
  store that set the second bit and the last store that set the first.
* ``resident``: while a bit of a field is set, a range of kernel virtual pages named by
  another field of the same object (its address, a page count) must be mapped, and the
  pages behind it wired. Only objects on one of the ``live`` lists count (a reaped object
  is being torn down). Checked when the bit is set (the range must be there already),
  when a page of the range is unmapped, and when a page mapped there is unwired. The
  converse, if the rule names a ``done`` bit (the swap-out in progress): at the store
  that clears it with the resident bit clear, the range must be neither mapped nor wired
  (a second wiring, never undone, shows there).
* ``pages``: the physical page records (their type, the field holding the frame, the
  queue field and the value that means free, the wire count). A page freed while the
  kernel MMU still maps it is a *window*: counted and listed in the report
  (``inflight.windows``), not a finding, as long as nothing uses it (the 2002 code frees
  dying U-area and kernel-stack pages before it unmaps them; see FINDINGS.md). What uses
  the window is a finding, as memguard would catch it: the page allocated again while the
  old mapping stays (*reused while mapped*), an access through a mapping entered before
  the page was last freed (*use after free*), a free page entered into the MMU.

Cost: one dictionary lookup per store of kernel memory (the object's type), more only
for the watched fields; one per page of each MMU change and kernel access.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from smp.hw.physmem import PAGE_SHIFT, PhysMem
from smp.machine.objects import ObjectStore
from smp.machine.witness import Finding


class Mark(NamedTuple):
    """Where and when one side of a report happened: its site, the machine's operation
    (``smp replay --until`` goes there) and the thread."""

    site: str
    op: int = 0
    tid: int = 0

    def __str__(self) -> str:
        return f"{self.site} (operation {self.op}, thread {self.tid})" if self.site else "?"


NOWHERE = Mark("")


class Inflight:
    """The in-flight invariant checker of one machine; ``ops`` tells the machine's
    operation count, so that each report says when its other side happened."""

    def __init__(self, kmem: ObjectStore, mem: PhysMem,
                 report: Callable[[Finding], None],
                 ops: Callable[[], int] = lambda: 0) -> None:
        self.kmem = kmem
        self.mem = mem
        self.report = report
        self.ops = ops
        self.by_type: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}
        self.live: list[int] = []
        self.pages: dict[str, Any] | None = None
        self.vals: dict[tuple[int, str], Any] = {}              # last value seen
        self.setter: dict[tuple[int, str, int], Mark] = {}      # (h, field, bit) -> set
        self.ranges: dict[int, tuple[int, dict[str, Any]]] = {}  # vpn -> (object, rule)
        self.frame_page: dict[int, int] = {}                    # frame -> page handle
        self._built_at = -1                                     # next_handle at the build
        self.rmap: dict[int, dict[int, tuple[int, Mark]]] = {}  # frame -> vpn -> (seq, map)
        self.freed: dict[int, tuple[int, Mark]] = {}            # frame -> last (seq, free)
        self.unmapped: dict[int, Mark] = {}                     # vpn -> last unmap
        self.unwired: dict[int, Mark] = {}                      # frame -> last unwire
        self.wired: dict[int, Mark] = {}                        # frame -> last wire
        self.entered: dict[int, tuple[int, Mark]] = {}          # vpn -> last (frame, map)
        self.seq = 0
        self.checks = 0
        self.windows = 0
        self.window_sites: dict[tuple[str, str], int] = {}      # (free, map site) -> count
        self.reported: set[str] = set()

    # -- what the kernel registers -------------------------------------------------------
    def policy(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise TypeError("POLICY inflight: a map")
        by_type: dict[str, dict[str, list[tuple[str, dict[str, Any]]]]] = {}

        def watch(tname: str, field: str, kind: str, rule: dict[str, Any]) -> None:
            by_type.setdefault(str(tname), {}).setdefault(str(field), []).append((kind, rule))

        for r in payload.get("exclusive", []):
            rule = {"bits": {str(n): int(b) for n, b in r["bits"].items()}}
            rule["all"] = sum(rule["bits"].values())
            watch(r["type"], r["field"], "exclusive", {**r, **rule})
        for r in payload.get("resident", []):
            rule = dict(r, bit=int(r["bit"]), npages=int(r["npages"]))
            watch(r["type"], r["field"], "resident", rule)
            watch(r["type"], r["va"], "range", rule)
            if "done" in r:
                rule["done"] = int(r["done"])
        pg = payload.get("pages")
        if pg:
            self.pages = dict(pg)
            watch(pg["type"], pg["queue"], "queue", self.pages)
            watch(pg["type"], pg["wire"], "wire", self.pages)
        self.live = [int(a) for a in payload.get("live", [])]
        self.by_type = by_type

    # -- helpers -------------------------------------------------------------------------
    def _finding(self, key: str, summary: str, sites: list[str], detail: str) -> None:
        if key in self.reported:
            return
        self.reported.add(key)
        self.report(Finding("inflight", summary, [s for s in sites if s], detail,
                            f"inflight|{key}"))

    def _mark(self, site: str, tid: int) -> Mark:
        return Mark(site, self.ops(), tid)

    def _live(self, h: int) -> bool:
        lists = self.kmem.lists
        return any(h in lst.next for a in self.live if (lst := lists.get(a)) is not None)

    def _page(self, frame: int) -> dict[str, Any] | None:
        """The page record of a frame (an index built once the pages exist)."""
        pg = self.pages
        if pg is None:
            return None
        h = self.frame_page.get(frame)
        if h is None and self._built_at != self.kmem.next_handle:
            kmem, tname, ff = self.kmem, pg["type"], pg["frame"]
            self._built_at = kmem.next_handle
            self.frame_page = {kmem.objs[x][ff]: x for x, t in kmem.otype.items()
                               if t == tname and x in kmem.objs}
            h = self.frame_page.get(frame)
        if h is None:
            return None
        return self.kmem.objs.get(h)

    def _name(self, h: int) -> str:
        obj = self.kmem.objs.get(h) or {}
        ident = next((f"{k} {v}" for k, v in obj.items() if k.endswith("_pid")), "")
        return f"{self.kmem.otype.get(h, '?')}#{h}" + (f" ({ident})" if ident else "")

    # -- stores --------------------------------------------------------------------------
    def stored(self, tid: int, site: str, h: int, fields: list[str]) -> None:
        """After a store of ``fields`` of object ``h`` (any kind of store)."""
        rules = self.by_type.get(self.kmem.otype.get(h, ""))
        if rules is None:
            return
        obj = self.kmem.objs.get(h)
        if obj is None:
            return
        for field in fields:
            watched = rules.get(field)
            if watched is None:
                continue
            new = obj.get(field)
            old = self.vals.get((h, field))
            self.vals[(h, field)] = new
            self.checks += 1
            for kind, rule in watched:
                getattr(self, "_" + kind)(tid, site, h, field, old, new, rule)

    def _setters(self, at: Mark, h: int, field: str, old: Any, new: int,
                 bits: list[int]) -> None:
        for b in bits:
            if new & b and not (old or 0) & b:
                self.setter[(h, field, b)] = at

    def _exclusive(self, tid: int, site: str, h: int, field: str, old: Any, new: Any,
                   rule: dict[str, Any]) -> None:
        new = int(new or 0)
        bits: dict[str, int] = rule["bits"]
        before = {b: self.setter.get((h, field, b), NOWHERE) for b in bits.values()}
        self._setters(self._mark(site, tid), h, field, old, new, list(bits.values()))
        if new & rule["all"] != rule["all"] or (old is not None and
                                                 int(old) & rule["all"] == rule["all"]):
            return
        names = "|".join(bits)
        first = [n for n, b in bits.items() if (old or 0) & b]
        other = before.get(bits[first[0]], NOWHERE) if first else self._mark(site, tid)
        self._finding(
            f"exclusive|{field}|{names}|{site}|{other.site}",
            f"{field} has {names} together ({self._name(h)}): set @ {site}, "
            f"the other last set @ {other}", [site, other.site],
            f"thread {tid} stored {field} = {new:#x} in {self._name(h)} @ {site}, "
            f"which sets {names} at once; "
            + (f"{first[0]} was last set @ "
               f"{other if other.site else '? (before the watch began)'}"
               if first else "both set by this store"))

    def _resident(self, tid: int, site: str, h: int, field: str, old: Any, new: Any,
                  rule: dict[str, Any]) -> None:
        new = int(new or 0)
        self._setters(self._mark(site, tid), h, field, old, new, [rule["bit"]])
        done = rule.get("done", 0)
        if done and old is not None and int(old) & done and not new & (done | rule["bit"]):
            self._released(tid, site, h, field, rule)
        if not new & rule["bit"] or (old is not None and int(old) & rule["bit"]):
            return
        va = int(self.kmem.objs[h].get(rule["va"]) or 0)
        if not va or not self._live(h):
            return
        bad = self._range_bad(va, rule)
        if bad:
            vpn, why, other = bad
            self._finding(
                f"resident|{rule['name']}|{site}|{other.site}",
                f"{rule['name']} set with the {rule['what']} {why} ({self._name(h)}) @ "
                f"{site}; last {'unmapped' if 'mapped' in why else 'unwired'} @ "
                f"{other}", [site, other.site],
                f"thread {tid} set {rule['name']} in {field} of {self._name(h)} @ {site} "
                f"while page {vpn - (va >> PAGE_SHIFT)} of its {rule['what']} (va "
                f"{vpn << PAGE_SHIFT:#x}) is {why}; the other side's last store @ "
                f"{other if other.site else '? (none seen)'}")

    def _released(self, tid: int, site: str, h: int, field: str,
                  rule: dict[str, Any]) -> None:
        """The done bit cleared with the resident bit clear: the range must be gone."""
        va = int(self.kmem.objs[h].get(rule["va"]) or 0)
        if not va or not self._live(h):
            return
        pg = self.pages
        vpn0 = va >> PAGE_SHIFT
        for vpn in range(vpn0, vpn0 + rule["npages"]):
            frame, mapped = self.entered.get(vpn, (-1, NOWHERE))
            if vpn in self.mem.kpt:
                why, other = "still mapped", mapped
            else:
                page = self._page(frame) if frame >= 0 else None
                if pg is None or page is None or not page.get(pg["wire"]):
                    continue
                why, other = (f"still wired ({page.get(pg['wire'])} times)",
                              self.wired.get(frame, NOWHERE))
            done = str(rule.get("done_name", "the done bit"))
            self._finding(
                f"released|{rule['name']}|{site}|{other.site}",
                f"{done} cleared with {rule['name']} clear and the {rule['what']} "
                f"{why} ({self._name(h)}) @ {site}; last "
                f"{'mapped' if 'mapped' in why else 'wired'} @ {other}",
                [site, other.site],
                f"thread {tid} ended the swap-out of {self._name(h)} @ {site} (its "
                f"{field} has neither {rule['name']} nor {done}) while page "
                f"{vpn - vpn0} of its {rule['what']} (va {vpn << PAGE_SHIFT:#x}) is {why}; "
                f"the other side's last store @ {other if other.site else '? (none seen)'}")
            return

    def _range_bad(self, va: int, rule: dict[str, Any]) -> tuple[int, str, Mark] | None:
        vpn0 = va >> PAGE_SHIFT
        pg = self.pages
        for vpn in range(vpn0, vpn0 + rule["npages"]):
            frame = self.mem.kpt.get(vpn)
            if frame is None:
                return vpn, "not mapped", self.unmapped.get(vpn, NOWHERE)
            page = self._page(frame)
            if pg is not None and page is not None and not page.get(pg["wire"]):
                return vpn, "not wired", self.unwired.get(frame, NOWHERE)
        return None

    def _range(self, tid: int, site: str, h: int, field: str, old: Any, new: Any,
               rule: dict[str, Any]) -> None:
        """The object's range moved (its address field stored): index its pages."""
        n = rule["npages"]
        if old:
            for vpn in range(int(old) >> PAGE_SHIFT, (int(old) >> PAGE_SHIFT) + n):
                if self.ranges.get(vpn, (0,))[0] == h:
                    del self.ranges[vpn]
        if new:
            for vpn in range(int(new) >> PAGE_SHIFT, (int(new) >> PAGE_SHIFT) + n):
                self.ranges[vpn] = (h, rule)

    def _queue(self, tid: int, site: str, h: int, field: str, old: Any, new: Any,
               rule: dict[str, Any]) -> None:
        frame = int(self.kmem.objs[h].get(rule["frame"]) or 0)
        free = rule["free"]
        self.frame_page.setdefault(frame, h)
        if new == free and old != free:
            self.seq += 1
            self.freed[frame] = (self.seq, self._mark(site, tid))
            for vpn, (_, mapped) in self.rmap.get(frame, {}).items():
                self.windows += 1
                k = (site, mapped.site)
                self.window_sites[k] = self.window_sites.get(k, 0) + 1
        elif old == free and new != free:
            last = self.freed.get(frame)
            if last is None:
                return
            stale = [(vpn, m) for vpn, (seq, m) in self.rmap.get(frame, {}).items()
                     if seq < last[0]]
            if stale:
                vpn, mapped = stale[0]
                self._finding(
                    f"reused|{site}|{mapped.site}",
                    f"page (frame {frame:#x}) reused while the kernel still maps it: "
                    f"allocated @ {site}, mapped @ {mapped}", [site, mapped.site],
                    f"thread {tid} took page {h} (frame {frame:#x}) off the free queue @ "
                    f"{site}; it was freed @ {last[1]} while kernel va "
                    f"{vpn << PAGE_SHIFT:#x} mapped it (entered @ {mapped}), and that "
                    f"mapping is still there: two owners of one frame")

    def _wire(self, tid: int, site: str, h: int, field: str, old: Any, new: Any,
              rule: dict[str, Any]) -> None:
        frame = int(self.kmem.objs[h].get(rule["frame"]) or 0)
        if new and int(new) > int(old or 0):
            self.wired[frame] = self._mark(site, tid)
        if new or not old:
            return
        self.unwired[frame] = self._mark(site, tid)
        for vpn in self.rmap.get(frame, {}):
            self._resident_page(tid, site, vpn, "unwired")

    def _resident_page(self, tid: int, site: str, vpn: int, what: str) -> None:
        """A page of an object's range lost its mapping or its wiring."""
        r = self.ranges.get(vpn)
        if r is None:
            return
        h, rule = r
        obj = self.kmem.objs.get(h)
        if obj is None or not int(obj.get(rule["field"]) or 0) & rule["bit"]:
            return
        if not self._live(h):
            return
        other = self.setter.get((h, rule["field"], rule["bit"]), NOWHERE)
        self._finding(
            f"resident|{what}|{site}|{other.site}",
            f"{rule['what']} page {what} while {rule['name']} is set ({self._name(h)}) @ "
            f"{site}; {rule['name']} last set @ {other}", [site, other.site],
            f"thread {tid} {what} va {vpn << PAGE_SHIFT:#x} of the {rule['what']} of "
            f"{self._name(h)} @ {site} while its {rule['field']} has {rule['name']} "
            f"(last set @ {other if other.site else '? (at creation)'})")

    # -- the kernel MMU ------------------------------------------------------------------
    def kenter(self, tid: int, site: str, kva: int, frames: list[int]) -> None:
        """Before the MMU enters ``frames`` at ``kva``."""
        vpn0 = kva >> PAGE_SHIFT
        kpt = self.mem.kpt
        pg = self.pages
        at = self._mark(site, tid)
        for i, frame in enumerate(frames):
            vpn = vpn0 + i
            prev = kpt.get(vpn)
            if prev is not None:
                self.rmap.get(prev, {}).pop(vpn, None)
            self.seq += 1
            self.rmap.setdefault(frame, {})[vpn] = (self.seq, at)
            self.entered[vpn] = (frame, at)
            page = self._page(frame)
            if pg is not None and page is not None and page.get(pg["queue"]) == pg["free"]:
                last = self.freed.get(frame, (0, NOWHERE))[1]
                self._finding(
                    f"mapfree|{site}|{last.site}",
                    f"free page (frame {frame:#x}) entered in the kernel MMU @ {site}; "
                    f"freed @ {last if last.site else '? (free since boot)'}",
                    [site, last.site],
                    f"thread {tid} mapped kernel va {vpn << PAGE_SHIFT:#x} to frame "
                    f"{frame:#x} @ {site}, a page on the free queue (freed @ "
                    f"{last if last.site else '? (free since boot)'}): whoever allocates "
                    f"it next shares it")

    def kremove(self, tid: int, site: str, kva: int, npages: int) -> None:
        """Before the MMU removes ``npages`` mappings from ``kva``."""
        vpn0 = kva >> PAGE_SHIFT
        kpt = self.mem.kpt
        at = self._mark(site, tid)
        for vpn in range(vpn0, vpn0 + npages):
            frame = kpt.get(vpn)
            if frame is None:
                continue
            self.rmap.get(frame, {}).pop(vpn, None)
            self.unmapped[vpn] = at
            self._resident_page(tid, site, vpn, "unmapped")

    def kaccess(self, tid: int, site: str, kva: int, kind: str) -> None:
        """A kernel load or store through the MMU: a mapping entered before its page was
        last freed is a use after free."""
        vpn = kva >> PAGE_SHIFT
        frame = self.mem.kpt.get(vpn)
        if frame is None:
            return
        last = self.freed.get(frame)
        m = self.rmap.get(frame, {}).get(vpn)
        if last is None or m is None or m[0] > last[0]:
            return
        self._finding(
            f"uaf|{site}|{last[1].site}",
            f"{kind} through a stale kernel mapping (frame {frame:#x} freed @ {last[1]}) "
            f"@ {site}", [site, last[1].site],
            f"thread {tid}: {kind} of kernel va {kva:#x} @ {site}; the mapping was entered "
            f"@ {m[1]}, the page was freed after it @ {last[1]}: a use after free")

    def statistics(self) -> dict[str, Any]:
        top = sorted(self.window_sites.items(), key=lambda kv: -kv[1])[:10]
        return {"checks": self.checks, "windows": self.windows,
                "window_sites": [{"freed": f, "mapped": m, "count": c}
                                 for (f, m), c in top]}


__all__ = ["Inflight"]
