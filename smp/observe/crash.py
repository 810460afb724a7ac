"""``crash.txt``: a panicked machine's dump, in the shapes a FreeBSD developer reads.

In order, each part as FreeBSD prints its own:

1. what ``vpanic()`` prints: ``panic: <message>`` (once), ``cpuid = N``, ``time = T`` (here
   simulated seconds), then ``KDB: stack backtrace:`` and the panicking thread's trace,
   innermost frame first, as ddb's ``func() at func+0x1c5/frame ...``: here ``func() at
   file:line``, kernel frames only (the simulator's frames, the CPU trampoline and the
   greenlet switches, are left out; the full Python trace is at the end);
2. ``db> show alllocks``: every thread that holds a lock, with its locks newest first, as
   WITNESS's ``witness_list_locks()`` prints them: ``exclusive sleep mutex Giant r = 0
   (0x10400) locked @ kern/kern_synch.py:56`` (mode, class, name, recursion, address,
   where it was taken);
3. ``db> show allchains``: for each lock that threads are blocked on, its owner, what that
   owner is blocked on in turn (a cycle is a deadlock), and the waiting threads, as ddb's
   lock chains (grouped by lock);
4. ``db> alltrace``: every thread's kernel trace, as ``Tracing tid N``;
5. ``db> ps``: every process (zombies too), its parent, state, wait message, flags and
   holds, and its thread's state and inhibitors (named), under the field names the
   kernel registered;
6. each CPU's last operations on the machine (the server keeps 32 a CPU), with the value
   each load or call was answered with: how the CPUs got here, for a race;
7. the panicking thread's full Python trace, simulator frames included.

The input is report.json's ``panic`` (message, cpu, tid, thread, site, stack, sim_time)
and ``threads`` (each thread's cpu, tid, name, stack and the locks it ``held`` and was
``waiting`` for: lock, mode, class, recurse, addr, site).
"""

from __future__ import annotations

import re
from typing import Any

from smp.machine.sites import annotate_all
from smp.observe.summary import panic_message

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
_KERNEL = re.compile(r"(?:^|[/\\])kernel[/\\](.+)$")


def kernel_frames(stack: list[str]) -> list[tuple[str, str]]:
    """``(function, file:line)`` of the kernel's frames in a Python stack (outermost
    first, as given), the file relative to the kernel's tree; frames of the simulator
    (``hw``, ``smp``) and anonymous ones (``<lambda>``) are left out."""
    out = []
    for entry in stack:
        m = _FRAME.search(entry)
        if m is None:
            continue
        path, line, func = m.groups()
        k = _KERNEL.search(path)
        if k is None or func.startswith("<"):
            continue
        out.append((func, f"{k.group(1).replace(chr(92), '/')}:{line}"))
    return out


def backtrace(stack: list[str]) -> list[str]:
    """ddb's trace of a stack: innermost first, ``func() at file:line``; a stack with no
    Python frames (a panic raised in the server) is given as it is."""
    frames = kernel_frames(stack)
    if frames:
        return [f"{func}() at {where}" for func, where in reversed(frames)]
    return [line.strip() for entry in stack for line in str(entry).splitlines()
            if line.strip()]


def thread_title(t: dict[str, Any]) -> str:
    """``show alllocks``' heading of a thread: ``Process %d (%s) thread %p (%d)`` when the
    thread's process is known, else its tid and name."""
    where = f" on cpu {t.get('cpu')}" if t.get("cpu") is not None else ""
    if t.get("pid") is not None:
        return (f"Process {t['pid']} ({t.get('comm') or t.get('name')}) thread "
                f"{t.get('tid')}{where}")
    return f"Thread {t.get('tid')} ({t.get('name') or '?'}){where}"


def lock_line(h: dict[str, Any]) -> str:
    """One lock as ``witness_list_lock()`` prints it: ``%s %s %s r = %d (%p) locked @
    %s:%d`` (exclusive/shared, class, name, recursion, address, file:line), and the
    machine's operation it was taken at (``smp replay --until`` goes there)."""
    mode = "shared" if h.get("mode") == "shared" else "exclusive"
    cls = f" {h['class']}" if h.get("class") else ""
    addr = f" ({h['addr']:#x})" if isinstance(h.get("addr"), int) else ""
    op = f" (operation {h['op']})" if h.get("op") else ""
    return (f"{mode}{cls} {h.get('lock')} r = {int(h.get('recurse') or 0)}{addr} "
            f"locked @ {h.get('site')}{op}")


def show_alllocks(threads: list[dict[str, Any]]) -> list[str]:
    lines = []
    for t in threads:
        if t.get("held"):
            lines.append(thread_title(t))
            lines += [lock_line(h) for h in reversed(t["held"])]   # newest first
    return lines or ["(no thread holds a lock)"]


def _owners(threads: list[dict[str, Any]], lock: dict[str, Any]) -> list[dict[str, Any]]:
    """The threads holding the lock ``lock`` waits for (by address, else by name)."""
    def same(h: dict[str, Any]) -> bool:
        if isinstance(h.get("addr"), int) and isinstance(lock.get("addr"), int):
            return bool(h["addr"] == lock["addr"])
        return bool(h.get("lock") == lock.get("lock"))
    return [t for t in threads if any(same(h) for h in t.get("held") or [])]


def _lock_ref(w: dict[str, Any]) -> str:
    """``"Giant" (sleep mutex 0x10400)``."""
    what = " ".join(x for x in (str(w.get("class") or ""),
                                f"{w['addr']:#x}" if isinstance(w.get("addr"), int) else "")
                    if x)
    return f"\"{w.get('lock')}\"" + (f" ({what})" if what else "")


def _who(t: dict[str, Any]) -> str:
    return f"thread {t.get('tid')} ({t.get('name') or '?'}, cpu {t.get('cpu')})"


def show_allchains(threads: list[dict[str, Any]]) -> list[str]:
    """Lock chains, one per lock that threads are blocked on (ddb's ``show allchains``,
    grouped by lock so that twenty waiters on Giant read as one chain): the lock, its
    owner, what that owner is blocked on in turn (to the end of the chain, or round a
    cycle: a deadlock), then the threads waiting for it and where they asked."""
    lines: list[str] = []
    order: list[Any] = []
    waiters: dict[Any, list[dict[str, Any]]] = {}
    for t in threads:
        w = t.get("waiting")
        if not w:
            continue
        key = w.get("addr") if isinstance(w.get("addr"), int) else w.get("lock")
        if key not in waiters:
            order.append(key)
            waiters[key] = []
        waiters[key].append(t)
    for n, key in enumerate(order, 1):
        w = waiters[key][0]["waiting"]
        lines.append(f"chain {n}: {_lock_ref(w)}")
        seen: set[Any] = set()
        lock: dict[str, Any] | None = w
        while lock is not None:
            owners = _owners(threads, lock)
            if not owners:
                lines.append("  held by no thread: a wake-up is on its way")
                break
            owner = owners[0]
            if owner.get("tid") in seen:
                lines.append(f"  held by {_who(owner)}: a cycle, the chain is a deadlock")
                break
            seen.add(owner.get("tid"))
            nxt = owner.get("waiting")
            if not nxt:
                lines.append(f"  held by {_who(owner)}, not blocked on a lock")
                break
            lines.append(f"  held by {_who(owner)}, blocked on {_lock_ref(nxt)} "
                         f"@ {nxt.get('site')}")
            lock = nxt
        for t in waiters[key]:
            lines.append(f"  waiting: {_who(t)} @ {t['waiting'].get('site')}")
    return lines or ["(no thread is blocked on a lock)"]


def alltrace(threads: list[dict[str, Any]],
             woken: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """``db> alltrace``: every thread's kernel trace; and, where the liveness detector
    knows it (``woken``), who last took the thread off a sleep queue: where, by whom, at
    which operation (a thread run when it should not have been was made runnable
    there)."""
    lines = []
    for t in threads:
        lines.append(f"Tracing tid {t.get('tid')} ({t.get('name') or '?'}) on cpu "
                     f"{t.get('cpu')}:")
        lines += backtrace(t.get("stack") or []) or ["(no kernel frames)"]
        w = woken_line((woken or {}).get(str(t.get("tid"))) or {})
        if w:
            lines.append(w)
    return lines


def woken_line(w: dict[str, Any]) -> str:
    """``(last woken @ site by thread T, operation N)``, or ``(last timed out @ site,
    operation N)``: the thread the timeout's callout ran on is nobody's doing. A thread
    asleep now says this sleep first: ``(asleep @ site for 9.7 s, no timeout; before
    that, last woken ...)``."""
    now = ""
    a = w.get("asleep")
    if a:
        timo = f"timeout {a['timeout']} ticks" if a.get("timeout") else "no timeout"
        now = f"asleep @ {a.get('site')} for {a.get('s')} s, {timo}"
    if not w.get("site"):
        return f"({now})" if now else ""
    how = w.get("how") or "woken"
    by = f" by thread {w.get('by')}" if how == "woken" else ""
    op = f", operation {w['op']}" if w.get("op") else ""
    return f"({now + '; before that, ' if now else ''}last {how} @ {w.get('site')}{by}{op})"


def _bits(v: Any, names: dict[str, int]) -> str:
    if not isinstance(v, int) or isinstance(v, bool):
        return "-" if v is None else str(v)
    shown = "|".join(n for n, b in names.items() if v & b)
    return f"{v:#x}" + (f" ({shown})" if shown else "")


def _named(v: Any, names: dict[str, str]) -> str:
    return "-" if v is None else names.get(str(v), str(v))


def show_ps(procs: list[dict[str, Any]] | None, policy: dict[str, Any]) -> list[str]:
    """``db> ps``: every process on the lists the kernel registered for its table (smp
    top's; the zombies too): pid, its parent's, the object (``proc#369``, as findings
    name it; ddb's paddr), the CPU it is on or last ran on, its state as top shows it,
    its wait message, its two flag words, its hold count, its first thread's state and
    inhibitors (named), the command (``<comm>``: swapped out). The columns are titled
    with the kernel's field names."""
    if procs is None:
        return ["(no process table: the kernel published none)"]
    reg = policy.get("procs") or {}
    bits = (policy.get("liveness") or {}).get("inhibitor_bits") or {}
    tds = reg.get("thread_states") or {}
    field = {**(reg.get("fields") or {}), **(reg.get("thread_fields") or {})}
    sbits = reg.get("flag_bits") or {}
    lines = [f"  pid  ppid  {'proc':<10} cpu  state    {field.get('wchan', 'wchan'):<9} "
             f"{field.get('pflag', 'flag'):<7}  {field.get('flags', 'flags'):<24} "
             f"{field.get('holds', 'holds'):<6} "
             f"{field.get('tdstate', 'state'):<13} {field.get('inhibitors', 'inhibitors'):<20} "
             f"comm"]
    for p in sorted(procs, key=lambda p: int(p.get("pid") or 0)):
        cpu = p.get("cpu")
        comm = str(p.get("comm") or "?")
        sflag = p.get("flags")
        ppid = p.get("ppid")
        lines.append(f"{p.get('pid', '?'):>5}  {'-' if ppid is None else ppid:>4}  "
                     f"{str(p.get('addr') or '-'):<10} "
                     f"{'-' if not isinstance(cpu, int) or cpu < 0 else cpu:>3}  "
                     f"{str(p.get('state') or '-'):<8} {str(p.get('wchan') or '-'):<9} "
                     f"{_bits(p.get('pflag'), {}):<7}  "
                     f"{_bits(sflag, sbits):<24} {_named(p.get('holds'), {}):<6} "
                     f"{_named(p.get('tdstate'), tds):<13} "
                     f"{_bits(p.get('inhibitors'), bits):<20} "
                     + (f"<{comm}>" if p.get("swapped") else comm))
    return lines


def recent_lines(recent: dict[str, list[Any]]) -> list[str]:
    """Each CPU's last operations (report.json ``recent``), oldest first: number,
    operation, site, thread, simulated time, arguments and, for a request that waited
    for one, the value it was answered with."""
    lines: list[str] = []
    for cpu, ops in sorted(recent.items(), key=lambda kv: int(kv[0])):
        lines.append(f"  cpu {cpu} (its last {len(ops)}):")
        for n, op, site, tid, t, args, *value in ops:
            got = f" -> {value[0]}" if value and value[0] != "" else ""
            lines.append(f"      {n}  {op:<10} {site}  tid {tid}  {int(t) / 1e9:.6f} s  "
                         f"{args}{got}")
    return lines


def how_they_got_here(report: dict[str, Any], more: str = "") -> list[str]:
    """``db> ps`` and each CPU's last operations: the end of crash.txt and of a replay's
    dump.txt (``more``: what the heading adds)."""
    lines = ["", "db> ps", *show_ps(report.get("procs"), report.get("policy") or {})]
    if report.get("recent"):
        lines += ["", "the last operations of each CPU, oldest first (operation number, op, "
                  f"site, thread, simulated time, arguments -> the value answered{more}):",
                  *recent_lines(report["recent"])]
    return lines


def crash_text(report: dict[str, Any]) -> str:
    """crash.txt of a report with a ``panic``."""
    p = report["panic"]
    threads = list(report.get("threads") or [])
    stack = list(p.get("stack") or [])
    me = next((t for t in threads if t.get("tid") == p.get("tid")
               and t.get("cpu") == p.get("cpu")), None)
    if not kernel_frames(stack) and me is not None and kernel_frames(me.get("stack") or []):
        stack = list(me["stack"])
    lines = [f"panic: {panic_message(p)}", f"cpuid = {p.get('cpu')}"]
    if p.get("sim_time") is not None:
        lines.append(f"time = {float(p['sim_time']):.3f} (simulated s)")
    lines.append("KDB: stack backtrace:")
    lines += backtrace(stack) or ["(no stack)"]
    who = f"tid {p.get('tid')} ({p.get('thread') or '?'})" if p.get("tid") else "no thread"
    site = f" at {p['site']}" if p.get("site") else ""
    source = " (raised by the machine server)" if p.get("source") == "server" else ""
    lines.append(f"[ thread {who} on cpu {p.get('cpu')}{site}{source} ]")
    lines += ["", "db> show alllocks", *show_alllocks(threads)]
    lines += ["", "db> show allchains", *show_allchains(threads)]
    lines += ["", "db> alltrace",
              *alltrace(threads, (report.get("liveness") or {}).get("woken"))]
    lines += how_they_got_here(report)
    # the sites of a port name their C line too (what the kernel registered)
    lines = annotate_all(lines, (report.get("policy") or {}).get("sources"))
    lines += ["", "Python trace of the panicking thread (simulator frames included):"]
    for entry in stack:
        lines += [f"  {part.strip()}" if not part.startswith("    ") else f"  {part}"
                  for part in str(entry).splitlines()]
    return "\n".join(lines) + "\n"


__all__ = ["crash_text", "backtrace", "woken_line", "how_they_got_here", "kernel_frames",
           "show_alllocks", "lock_line", "recent_lines", "show_ps"]
