"""What the machine server tells the world: the stats stream, the report, the dump.

Three readers, three forms (``hw/__init__.py``'s device protocol, at the machine's scale):

* **the stats stream** (a ZeroMQ PUB socket, ``run.stats_interval``): the CPUs' samples as
  they come (checked first: ``smp.machine.ops.bad_sample``), and the server's own
  :meth:`Publisher.sample` every interval: messages, the lock table, LOCK_PROFILING's top
  rows, memory, swap, kernel memory, the kernel's counters, its process table and its page
  counts. The launcher records it (``stats.jsonl``); ``smp top`` and the exporters watch
  it. A slow or absent subscriber costs nothing: PUB drops at its high-water mark.
* **the report** (``CTL_REPORT``, once, at the end of a run): everything the run's
  ``report.json`` says of the shared half of the machine: the schedule, the locks and
  their profile, memory, the findings, the panic, each CPU's final counters, what each
  thread held and waited for, and the dead CPUs with the locks they held.
* **the dump** (``CTL_DUMP``): each device's state as text, for people.

The process table and the page counts are read from the kernel objects and fields the
kernel registered at boot (``POLICY procs`` and ``vmstats``, DESIGN.md decision 12): the
server names no kernel structure.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Protocol

import zmq

from smp.hw.physmem import PhysMem, SwapDevice
from smp.hw.protocol import field_addr, pack
from smp.machine.hangs import Hangs
from smp.machine.inflight import Inflight
from smp.machine.liveness import Liveness
from smp.machine.lockcheck import LockKeyChecker
from smp.machine.locks import LockTable
from smp.machine.objects import ObjectError, ObjectStore
from smp.machine.peers import Peer
from smp.machine.sequencer import Sequencer
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Witness

PUB_HWM = 1000                 # stats messages queued per subscriber before PUB drops


class _Server(Protocol):
    """What the stream and the reports read of the server (``smp.machine.server.Server``)."""
    mem: PhysMem
    swap: SwapDevice
    kmem: ObjectStore
    locks: LockTable
    sleepq: SleepQueues
    witness: Witness | None
    lockkeys: LockKeyChecker | None
    policy: dict[str, Any]
    findings: list[dict[str, Any]]
    cpus: dict[int, Peer]
    dead: set[int]
    started_at: float | None
    panic: dict[str, Any] | None
    halting: str | None
    messages: int
    bad_messages: int
    rejected: collections.Counter[str]
    errors: int
    unroutable: int
    silenced: int
    seq: Sequencer
    live: Liveness
    hangs: Hangs | None
    inflight: Inflight | None


class Publisher:
    """The server's stats stream and its reports."""

    def __init__(self, srv: _Server, endpoint: str | None, interval: float) -> None:
        self.srv = srv
        self.endpoint = endpoint
        self.interval = interval
        self.pub: zmq.Socket[Any] | None = None
        self.next_stats = 0.0
        self.published = 0

    # -- the stats stream --------------------------------------------------------------
    def open(self, ctx: zmq.Context[Any]) -> None:
        if self.endpoint:
            self.pub = ctx.socket(zmq.PUB)
            self.pub.setsockopt(zmq.LINGER, 0)
            self.pub.setsockopt(zmq.SNDHWM, PUB_HWM)
            self.pub.bind(self.endpoint)

    def close(self) -> None:
        if self.pub is not None:
            self.pub.close(0)

    def tick(self, now: float) -> None:
        """The server's own sample, every interval once the machine has started."""
        if self.pub is not None and self.srv.started_at is not None and now >= self.next_stats:
            self.next_stats = now + self.interval
            self.publish(b"server", self.sample())

    def publish(self, topic: bytes, payload: Any) -> None:
        """PUB: CPUs' samples as they come, the server's own every interval. A slow or
        absent subscriber costs nothing (PUB drops at its high-water mark)."""
        if self.pub is not None:
            try:
                self.pub.send_multipart([topic, pack(payload)], flags=zmq.NOBLOCK)
                self.published += 1
            except zmq.ZMQError:
                pass

    def sample(self) -> dict[str, Any]:
        srv = self.srv
        return {"wall": time.time(), "messages": srv.messages,
                "counters": srv.policy.get("counters") or {}, "procs": self._procs(),
                "bad_messages": srv.bad_messages, "errors": srv.errors,
                "locks": srv.locks.profile.lock_report(),
                "lock_profile": srv.locks.profile.profile_report()[:20],
                "memory": vars(srv.mem.statistics()), "swap": srv.swap.statistics(),
                "kmem": vars(srv.kmem.statistics()), "vm": self._vmmeter()}

    def _procs(self, most: int = 256) -> list[dict[str, Any]] | None:
        """The process table as ps shows it, read from the kernel objects and fields the
        kernel registered (``procs``); None until it has."""
        kmem = self.srv.kmem
        reg = self.srv.policy.get("procs")
        if not isinstance(reg, dict):
            return None
        try:
            handles = [h for lst in [reg["list"], *(reg.get("also") or [])]
                       for h in kmem.listhead(int(lst)).items()][:most]
        except (ObjectError, KeyError, TypeError, ValueError):
            return None
        fields = reg.get("fields") or {}
        tfields = reg.get("thread_fields") or {}
        states = reg.get("states") or {}
        res_field, res_bit = (reg.get("resident") or [None, 0])
        decl = None
        out = []
        for h in handles:
            obj = kmem.objs.get(h)
            if obj is None:
                continue
            row = {role: obj.get(f) for role, f in fields.items()}
            row["addr"] = kmem.name(h)                          # as reports name it
            if reg.get("parent") and "pid" in fields:      # the parent's pid
                parent = kmem.objs.get(obj.get(reg["parent"]) or 0)
                row["ppid"] = parent.get(fields["pid"]) if parent else None
            if tfields and reg.get("threads"):
                decl = decl or kmem.types.get(kmem.otype[h])
                idx = decl.order.index(reg["threads"]) if decl else -1
                tl = kmem.lists.get(field_addr(h, idx)) if idx >= 0 else None
                first = kmem.objs.get(tl.head) if tl is not None and tl.head else None
                for role, f in tfields.items():
                    row[role] = first.get(f) if first else None
            status = _status(reg.get("status"), row)
            if status is None:
                row["state"] = states.get(str(row.get("state")), row.get("state"))
            else:
                row["state"], asleep = status
                if not asleep:                    # a wait message left from a past sleep
                    row["wchan"] = None
            if res_field:
                row["swapped"] = not (int(row.get(res_field) or 0) & int(res_bit))
            out.append(row)
        return out

    def _vmmeter(self) -> dict[str, int]:
        """The machine's page counts (free, pages, free_target, ...), read from the kernel
        object and fields the kernel registered (``vmstats``): what the swap plot and the
        exporters show."""
        kmem = self.srv.kmem
        reg = self.srv.policy.get("vmstats")
        if not isinstance(reg, dict):
            return {}
        obj = kmem.objs.get(kmem.lookup(str(reg.get("symbol"))))
        if obj is None:
            return {}
        fields = reg.get("fields") or {}
        return {role: obj[f] for role, f in fields.items()
                if isinstance(obj.get(f), int)}

    # -- the report and the dump -------------------------------------------------------
    def report(self) -> dict[str, Any]:
        srv = self.srv
        locks, live = srv.locks, srv.live
        # the liveness detector's end-of-run look first: what it finds is in "findings"
        hangs = srv.hangs.at_end() if srv.hangs is not None else None
        return {
            "liveness": hangs,
            "inflight": srv.inflight.statistics() if srv.inflight is not None else None,
            "schedule": srv.seq.report(),
            "recent": srv.seq.recent_ops(),
            "procs": self._procs(),
            "locks": locks.profile.lock_report(),
            "lock_profile": locks.profile.profile_report()[:50],
            "memory": vars(srv.mem.statistics()),
            "swap": srv.swap.statistics(),
            "kmem": vars(srv.kmem.statistics()),
            "objects_by_type": srv.kmem.count_by_type(),
            "field_sums": srv.kmem.field_sums(),
            "symbols": srv.kmem.symbol_values(),
            "server": {"messages": srv.messages, "bad_messages": srv.bad_messages,
                       "rejected": dict(sorted(srv.rejected.items())),
                       "errors": srv.errors, "unroutable": srv.unroutable,
                       "silenced": srv.silenced,
                       "heartbeats": live.heartbeats, "stalls": live.stalls,
                       "lines": locks.line_report(),
                       "unresponsive": {str(c): s for c, s in sorted(live.lost.items())},
                       "starved": {str(c): n for c, n in sorted(live.starved.items())},
                       "rss_mb": rss_mb(), "rss_peak_mb": rss_mb("VmHWM")},
            "dead_cpus": self.dead_cpus(),
            "cpus": {c: p.final for c, p in sorted(srv.cpus.items())},
            "cpu_pids": {c: p.pid for c, p in sorted(srv.cpus.items())},
            "panic": srv.panic,
            "findings": srv.findings,
            "witness_order": srv.witness.order() if srv.witness is not None else {},
            "policy": srv.policy,
            "lock_names": {str(h): n for h, n in locks.names.items()},
            "lockkey_checks": srv.lockkeys.checked if srv.lockkeys is not None else 0,
            "halt_reason": srv.halting,
            "thread_locks": {tid: {"held": locks.held_by(tid),
                                   "waiting": locks.waiting_for(tid)}
                             for tid in locks.threads},
        }

    def dead_cpus(self) -> dict[int, dict[str, Any]]:
        """For every CPU the launcher declared dead or the server found unresponsive: its
        pid and the locks its threads held (and waited for) when it went."""
        srv = self.srv
        locks, lost = srv.locks, srv.live.lost
        out: dict[int, dict[str, Any]] = {}
        for cpu in sorted(srv.dead | set(lost)):
            peer = srv.cpus.get(cpu)
            held, waiting = [], []
            for tid, t in sorted(locks.threads.items()):
                if t.cpu != cpu:
                    continue
                held += [{"tid": tid, **h} for h in locks.held_by(tid)]
                w = locks.waiting_for(tid)
                if w is not None:
                    waiting.append({"tid": tid, **w})
            out[cpu] = {"pid": peer.pid if peer else None, "held": held, "waiting": waiting,
                        "unresponsive_s": lost.get(cpu)}
        return out

    def dumpstate(self) -> str:
        srv = self.srv
        return "\n".join([srv.mem.dumpstate(), srv.swap.dumpstate(), srv.kmem.dumpstate(),
                          srv.locks.dumpstate(), srv.sleepq.dumpstate()])


def held_locks_line(cpu: int, info: dict[str, Any]) -> str:
    """One line for the run's problems: what a dead CPU's threads held."""
    held = ", ".join(f"{h['lock']} ({'shared' if h['mode'] == 'shared' else 'excl'}, "
                     f"thread {h['tid']} @ {h['site']})" for h in info.get("held", []))
    return f"cpu{cpu}'s threads held: {held or 'no locks'}"


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident set (``VmHWM``: its peak) in MiB, from /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _status(rules: Any, row: dict[str, Any]) -> tuple[str, bool] | None:
    """A process's STATE as top shows it, from the rules the kernel registered with its
    process table (``procs.status``): the first ``[field, test, value, shown]`` that holds
    of the row (test ``==``, ``in``, or ``&``: a bit of ``value`` set); ``shown`` may name
    the row's fields (``CPU{cpu}``, ``{wchan:.6}``; a rule that would show nothing, a
    field empty, is passed over, as top's SSLEEP without a wait message falls through to
    "SLEEP"). With it, whether the process sleeps (its state is its wait channel's).
    None if no rule holds, or the rules are not rules (the kernel's registration is
    checked here, not trusted: the server must go on)."""
    if not isinstance(rules, list):
        return None
    shown_row = {k: "" if v is None else str(v) for k, v in row.items()}
    try:
        for field, test, value, shown in rules:
            v = row.get(field)
            if not isinstance(v, int):
                continue
            if (v == value if test == "==" else v in value if test == "in"
                    else test == "&" and bool(v & int(value))):
                text = str(shown).format(**shown_row)
                if text:
                    return text, "{wchan" in str(shown)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        pass
    return None


__all__ = ["Publisher", "held_locks_line", "rss_mb"]
