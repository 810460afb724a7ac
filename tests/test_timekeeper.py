"""The server's virtual-time bookkeeping (smp/machine/timekeeper.py), in-process: who may
go how far. The horizon bounds running CPUs to a quantum past the slowest; an idle CPU
jumps only once no other CPU can act before its next timer event. And the sequencer's
end of a run: the end-of-run check's grace, given a quantum at a time."""

from __future__ import annotations

from typing import Any

import pytest

from smp.hw.clock import NEVER
from smp.hw.protocol import SYNC_IDLE, SYNC_RUN, SYNC_SPIN, Event
from smp.machine.sequencer import Sequencer, TimeSpec
from smp.machine.timekeeper import TimeKeeper

pytestmark = pytest.mark.quick

MS = 1_000_000


def keeper(*times: int, quantum: int = 10 * MS, end: int = 1000 * MS) -> TimeKeeper:
    """Three CPUs (or one per time given), each having made a request at its time."""
    tk = TimeKeeper(len(times) or 3, quantum, end, enabled=True)
    for cpu, t in enumerate(times):
        tk.request(cpu, t)
    return tk


def test_a_running_cpu_may_run_a_quantum_past_the_slowest() -> None:
    tk = keeper(0, 0, 0)
    tk.request(0, 5 * MS)
    tk.request(1, 7 * MS)
    assert tk.horizon == 10 * MS                 # cpu 2 at 0 holds it back
    assert tk.sync(0, 12 * MS, SYNC_RUN) == []   # past the horizon: waits
    assert 0 in tk.request(2, 3 * MS)            # the slowest moves on: cpu 0 may go
    assert tk.horizon == 13 * MS and tk.limit(0) == 13 * MS


def test_an_idle_cpu_jumps_only_once_no_other_cpu_can_act_before_its_tick() -> None:
    tk = keeper(1 * MS, 2 * MS, 3 * MS)
    # cpu 1 idles until its tick at 10 ms: within the horizon (11 ms), but cpus 0 and 2
    # may still act before 10 ms (a wakeup for one of cpu 1's threads): it waits
    assert tk.sync(1, 10 * MS, SYNC_IDLE) == []
    assert tk.limit(1) == 1 * MS
    assert tk.request(0, 9 * MS) == []           # cpu 2 at 3 ms still may
    assert tk.limit(1) == 3 * MS
    assert tk.request(2, 10 * MS) == []          # cpu 0 at 9 ms still may
    assert tk.request(0, 10 * MS) == [1]         # nobody can act before 10 ms now
    assert tk.limit(1) == 10 * MS


def test_a_running_cpu_waiting_at_the_horizon_is_not_held_to_the_idle_limit() -> None:
    tk = keeper(0, 0, 0, quantum=10 * MS)
    assert tk.sync(1, 5 * MS, SYNC_RUN) == [1]   # within the horizon: at once


def test_the_slowest_cpu_idle_jumps_to_the_next_cpus_time() -> None:
    tk = keeper(20 * MS, 25 * MS, 15 * MS)
    out = tk.sync(2, 20 * MS, SYNC_IDLE)         # the others are at 20 and 25 ms
    assert out == [2] and tk.limit(2) == 20 * MS


def test_idle_cpus_with_ticks_due_together_all_go() -> None:
    tk = keeper(1 * MS, 1 * MS, 1 * MS)
    tk.sync(0, 10 * MS, SYNC_IDLE)
    tk.sync(1, 10 * MS, SYNC_IDLE)
    out = tk.sync(2, 10 * MS, SYNC_IDLE)
    assert sorted(out) == [0, 1, 2]


def test_a_spinning_cpu_holds_nobody_back() -> None:
    tk = keeper(1 * MS, 30 * MS, 1 * MS)
    tk.sync(0, NEVER, SYNC_SPIN)
    tk.sync(2, NEVER, SYNC_SPIN)
    assert tk.horizon == 40 * MS
    assert tk.sync(1, 35 * MS, SYNC_RUN) == [1]


def test_an_event_wakes_an_idle_cpu_at_its_time_and_it_holds_the_others_there() -> None:
    tk = keeper(4 * MS, 4 * MS, 4 * MS)
    tk.sync(1, 10 * MS, SYNC_IDLE)
    tk.sync(2, 10 * MS, SYNC_IDLE)
    tk.request(0, 6 * MS)
    tk.wake(2, 6 * MS)                           # cpu 0 woke a thread of cpu 2 at 6 ms
    assert tk.limit(1) == 6 * MS                 # cpu 1 still may not jump to 10 ms
    tk.sync(0, 10 * MS, SYNC_IDLE)
    assert 1 not in tk.request(2, 8 * MS)
    assert sorted(tk.sync(2, 10 * MS, SYNC_IDLE)) == [0, 1, 2]


def test_the_run_ends_when_every_cpu_waits_past_the_cap_and_not_before() -> None:
    tk = keeper(19 * MS, 19 * MS, 19 * MS, end=20 * MS)
    tk.sync(0, 30 * MS, SYNC_IDLE)
    tk.sync(1, 30 * MS, SYNC_IDLE)
    assert not tk.ended
    assert tk.sync(2, 30 * MS, SYNC_RUN) == [] and tk.ended
    assert tk.limit(0) <= 20 * MS                # nobody past the cap
    assert sorted(tk.extend(15 * MS)) == [0, 1, 2]


def test_a_departed_cpu_no_longer_holds_the_idle_ones() -> None:
    tk = keeper(1 * MS, 9 * MS, 9 * MS)
    assert tk.sync(1, 10 * MS, SYNC_IDLE) == []
    tk.sync(2, 10 * MS, SYNC_IDLE)
    assert sorted(tk.leave(0)) == [1, 2]


def test_disabled_keeps_no_limits() -> None:
    tk = TimeKeeper(2, 10 * MS, 1000 * MS, enabled=False)
    assert tk.request(0, 5 * MS) == [] and tk.sync(1, 900 * MS, SYNC_IDLE) == []
    assert tk.horizon == NEVER


class _Server:
    """What the sequencer uses of a server (smp/machine/sequencer.py's _Server), and what
    it told the launcher."""

    def __init__(self, ncpus: int) -> None:
        self.ncpus = ncpus
        self.cpus = dict.fromkeys(range(ncpus))
        self.checked: set[int] = set()
        self.told: list[tuple[Event, int]] = []

    def event_cpu_control(self, cpu: int, event: Event, *args: int) -> None:
        pass

    def event_launcher(self, event: Event, t: int) -> None:
        self.told.append((event, t))

    def all_checked(self) -> bool:
        return len(self.checked) >= len(self.cpus)


def ended_run(ncpus: int = 3) -> tuple[Sequencer, _Server]:
    """A machine whose CPUs all wait past its end (100 ms, quantum 10 ms): END told."""
    srv = _Server(ncpus)
    spec = TimeSpec(virtual=True, quantum_ns=10 * MS, end_ns=100 * MS)
    seq = Sequencer(srv, spec)                  # type: ignore[arg-type]
    wait_past(seq, 100 * MS)
    assert srv.told == [(Event.END, 100 * MS)]
    return seq, srv


def wait_past(seq: Sequencer, t: int) -> None:
    """Every CPU runs up to ``t`` and waits for the horizon just past it."""
    for cpu in range(seq.srv.ncpus):
        seq.horizon_to(seq.tk.request(cpu, t))
    for cpu in range(seq.srv.ncpus):
        seq.horizon_to(seq.tk.sync(cpu, t + 1, SYNC_RUN))


def test_the_end_of_run_check_ends_at_the_first_quantum_every_cpu_reaches_checked() -> None:
    seq, srv = ended_run()
    seq.extend(500 * MS)                        # the launcher's CTL_FINAL
    assert seq.tk.horizon == 110 * MS           # a quantum, not the whole grace
    srv.checked |= {0, 1}
    wait_past(seq, 110 * MS)                    # cpu 2 has not checked: a quantum more
    assert srv.told == [(Event.END, 100 * MS)] and seq.tk.horizon == 120 * MS
    srv.checked.add(2)
    wait_past(seq, 120 * MS)
    assert srv.told[-1] == (Event.END, 120 * MS)


def test_an_end_of_run_check_that_never_finishes_ends_after_the_whole_grace() -> None:
    seq, srv = ended_run()
    seq.extend(45 * MS)
    for t in (110, 120, 130, 140):
        wait_past(seq, t * MS)
        assert len(srv.told) == 1
    wait_past(seq, 145 * MS)                    # the last step is what is left: 5 ms
    assert srv.told[-1] == (Event.END, 145 * MS)


def test_cpus_idle_past_the_whole_grace_end_it_at_once() -> None:
    # every CPU idles until a tick far beyond the grace: each step ends at once, and the
    # steps follow one another in one call (a loop, not a recursion 50 deep)
    seq, srv = ended_run()
    seq.extend(500 * MS)
    for cpu in range(3):
        seq.horizon_to(seq.tk.sync(cpu, 2000 * MS, SYNC_IDLE))
    assert srv.told[-1] == (Event.END, 600 * MS)


def test_a_machine_ends_its_end_of_run_check_at_the_first_quantum_all_reach_checked() -> None:
    """The same through a real (in-process) server: the run's end, the launcher's
    CTL_FINAL (FINAL wakes every CPU, then the end is lifted a quantum), a CPU that has
    checked and one that has not yet, then both."""
    import itertools

    from smp.hw.protocol import VERSION, Op, pack, unpack
    from smp.machine.server import Server

    class Socket:
        def __init__(self) -> None:
            self.sent: list[bytes] = []

        def send(self, data: bytes, flags: int = 0) -> None:
            self.sent.append(bytes(data))

    srv = Server("inproc://unused", 2, 16 * 4096, 8,
                 timespec=TimeSpec(virtual=True, quantum_ns=10 * MS, end_ns=100 * MS))
    sock = srv.sock = Socket()                            # type: ignore[assignment]
    seqs = itertools.count(1)

    def req(ident: bytes, op: Op, *args: Any, t: int = 0) -> None:
        srv.handle(ident, pack([int(op), next(seqs), 0, "t.py:1", t, *args]))

    def ends() -> list[int]:
        told = [unpack(m) for who, m in zip(sock.sent, sock.sent[1:]) if who == b"L"]
        return [m[2] for m in told if m[:2] == [Op.EVENT, Event.END]]

    def wait_past(ident: bytes, t: int) -> None:
        req(ident, Op.SYNC, t + 1, SYNC_RUN, 10**6, t=t)   # (every event read)

    req(b"L", Op.HELLO, VERSION, "launcher", -1, 1)
    req(b"A", Op.HELLO, VERSION, "cpu", 0, 2)
    req(b"B", Op.HELLO, VERSION, "cpu", 1, 3)
    wait_past(b"A", 100 * MS)
    wait_past(b"B", 100 * MS)
    assert ends() == [100 * MS]
    req(b"L", Op.CTL_FINAL)
    req(b"A", Op.REPORT, "checked", None, t=104 * MS)
    wait_past(b"A", 110 * MS)
    wait_past(b"B", 110 * MS)                             # cpu 1 has not checked yet
    assert ends() == [100 * MS] and srv.seq.tk.horizon == 120 * MS
    req(b"B", Op.REPORT, "checked", None, t=115 * MS)
    wait_past(b"A", 120 * MS)
    wait_past(b"B", 120 * MS)
    assert ends() == [100 * MS, 120 * MS]
