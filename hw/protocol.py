"""The machine's one wire protocol: what travels between a CPU and the server.

PORT: STYLE.md puts the protocol in ``smp/protocol.py``; DESIGN.md puts "the one versioned
wire protocol and the CPU's side of it" in ``hw/``, and ``hw/`` may import nothing above
it. The CPU side needs the protocol, so it lives here and ``smp`` imports it.

Transport: every CPU (and the launcher) owns one DEALER socket connected to the server's
ROUTER. The routing identity names the peer: ``cpu3``, ``launcher``. Each message is ONE
ZeroMQ frame holding a msgpack array (a DEALER adds no empty delimiter, so the server sees
``[identity, payload]``)::

    peer -> server   [op, seq, tid, site, t, arg...]
    server -> peer   [Op.REPLY, seq, status, value, t, horizon, idle]   answer to seq != 0
                     [Op.EVENT, event, arg..., t]        asynchronous: grants, IPIs, halts

``op`` is an :class:`Op`; ``seq`` is 0 for a posted request (no reply: releases, stores,
wakeups of Decision 10) and the peer's own increasing number for one that waits. ``tid``
is the simulated thread on whose behalf the request is made (0: the CPU itself), ``site``
the kernel source line (``"vm/vm_glue.py:412"``) that made it, ``t`` the CPU's simulated
time when it made it (integer ns; 0 from the launcher). ``status`` is :data:`OK` or
:data:`ERR`, in which case ``value`` is the error text. A reply's and an event's ``t`` is
the simulated time at which what they report happened (a grant: the release that made
it; 0: no time), a reply's ``horizon`` the time up to which the CPU may run and its
``idle`` the time up to which it may jump while idle (``hw/clock.py``: virtual time).

Versioning: the first message of every peer is ``HELLO`` carrying :data:`VERSION`; a
server refuses any other version with an error reply and ignores the peer until it says
hello correctly. Each peer's channel is FIFO, so posted requests are applied in program
order, which keeps the machine sequentially consistent.

Errors: a request that waits gets ``[REPLY, seq, ERR, text]`` and the CPU's kernel treats
it as a fatal trap. A *posted* request that fails cannot be answered: from a CPU that said
hello it panics the whole machine (DESIGN.md decision 10). Anything else a peer sends that
is not this protocol (garbage, the wrong shape, an unknown op, no hello first) gets
``[REPLY, seq or 0, ERR, text]``, is counted by kind in the server's statistics, and
changes nothing. Liveness: the server sends every CPU ``Event.HEARTBEAT`` when it has had
nothing else to say for a while, and CPUs ``PING`` the server likewise; a silence longer
than the limits below means a dead or stopped peer.
"""

from __future__ import annotations

import enum
from typing import Any

import msgpack

VERSION = b"SMP4"

OK = 0
ERR = 1


class Op(enum.IntEnum):
    """Request kinds (peer -> server) and the two reply kinds (server -> peer)."""

    # session
    HELLO = 1          # (version, role, cpu, pid)              -> start info
    BYE = 2            # (reason)                               posted
    REPORT = 3         # (kind, payload)                        posted: stats, panic, final counters
    PING = 4           # ()                                     posted: "still here" (heartbeat)
    SYNC = 5           # (need, state, received)                posted: waiting for the horizon
    STUCK = 6          # (point, want, got, received)           posted: a replay waits for events
                       # (want -1: the record, cut short, has no reads past point)
    # physical memory and the kernel MMU
    PLOAD = 10         # (paddr, len)                           -> bytes
    PSTORE = 11        # (paddr, bytes)                         posted
    KLOAD = 12         # (kva, len)                             -> bytes, trap if unmapped
    KSTORE = 13        # (kva, bytes)                           posted, trap if unmapped
    KENTER = 14        # (kva, [frame...])                      posted: pmap_qenter
    KREMOVE = 15       # (kva, npages)                          posted: pmap_qremove
    PCOPY = 16         # (src_frame, dst_frame)                 posted
    PZERO = 17         # (frame)                                posted
    PSUM = 18          # (frame)                                -> crc32
    SWAPOUT = 19       # (frame, block)                         -> crc32 of the page written
    SWAPIN = 20        # (block, frame)                         -> crc32 of the page read
    KPROBE = 21        # (kva)                                  -> frame, or -1 if unmapped
    SWAPCOPY = 22      # (src_block, dst_block)                 -> crc32 of the page copied
    # typed kernel objects
    DEFTYPE = 30       # (type, [[field, kind, lockkey, default]...]) posted
    NEW = 31           # (type, {field: value})                 -> handle
    NEWN = 43          # (type, count, init[, index_field[, list]]) -> [handle...]
    FREE = 32          # (handle)                               posted
    LOAD = 33          # (handle, field)                        -> value
    LOADN = 34         # (handle, [field...])                   -> [value...]
    STORE = 35         # (handle, field, value)                 posted
    STOREN = 36        # (handle, {field: value})               posted
    ADD = 37           # (handle, field, delta)                 -> new value (atomic)
    CAS = 38           # (handle, field, old, new)              -> bool (atomic)
    SETBITS = 39       # (handle, field, bits)                  posted (atomic_set_int)
    CLRBITS = 40       # (handle, field, bits)                  posted (atomic_clear_int)
    ADDP = 44          # (handle, field, delta)                 posted add (no value wanted)
    SYMBOL = 41        # (name, handle)                         posted: name a global object
    LOOKUP = 42        # (name)                                 -> handle (0 if unknown)
    COUNT = 45         # (type, [[field, op, value]...])        -> objects matching (op: eq, clear)
    LOADR = 46         # (handle, [field...])                   -> [value...]: an intended race
    STORER = 47        # (handle, {field: value})               posted: an intended race
    DEFKEYS = 48       # ({key: [how, lockname]})               posted: what each lock key means
    POLICY = 70        # (kind, payload)                        posted: the kernel's policy (below)
    # lists: the kernel's TAILQ/LIST heads, kept in server memory
    LIST_INSERT_HEAD = 50   # (list, elem)                      posted
    LIST_INSERT_TAIL = 51   # (list, elem)                      posted
    LIST_REMOVE = 52        # (list, elem)                      posted
    LIST_FIRST = 53         # (list)                            -> elem or 0
    LIST_NEXT = 54          # (list, elem)                      -> elem or 0
    LIST_ITEMS = 55         # (list)                            -> [elem...]
    LIST_LEN = 56           # (list)                            -> int
    LIST_SEARCH = 49        # (list, lo, hi, value)             -> first elem with
                            #                                      lo <= value < hi, or 0
    # maps: the kernel's hash tables (vm_page_buckets), key -> handle, in server memory
    MAP_GET = 57            # (map, key)                        -> value or 0
    MAP_SET = 58            # (map, key, value)                 posted
    MAP_DEL = 59            # (map, key)                        posted
    # locks
    LOCK_INIT = 60     # (lock, kind, class, name, flags)      posted; lock is a field address
    LOCK_DESTROY = 61  # (lock)                                 posted
    ACQUIRE = 62       # (lock, mode, flags)                    -> GRANTED | GRANTED_LINE |
                       #                                           QUEUED | BUSY
    RELEASE = 63       # (lock, mode)                           posted
    HANDOFF = 64       # (lock, to_tid)                         posted: spin lock passes to a thread
    SLEEP = 65         # (chan, interlock[, timo, caller])      posted: queue and drop interlock
    WAKEUP = 66        # (chan, one[, caller])                  -> [tid...] taken off the channel
    UNSLEEP = 67       # (chan, tid)                            -> bool: tid was still asleep
    IPI = 68           # (cpu, kind, args)                      posted: routed to that CPU
    RELINQUISH = 69    # (lock)                                 posted: give a lock's line back
    # control (the launcher)
    CTL_START = 80     # (t0)                                   -> None
    CTL_HALT = 81      # (reason)                               -> None
    CTL_REPORT = 82    # ()                                     -> server report
    CTL_DUMP = 83      # ()                                     -> server state text
    CTL_FINAL = 84     # ()                                     -> None: final-check IPI to all
    # server -> peer
    REPLY = 100
    EVENT = 101


class Event(enum.IntEnum):
    """Asynchronous server -> CPU messages."""

    START = 1          # (t0_monotonic)
    GRANT = 2          # (tid, lock)        a queued acquire was granted
    IPI = 3            # (from_cpu, kind, args)
    HALT = 4           # (reason)           stop running threads, send final report, exit
    PANIC = 5          # (cpu, message)     another CPU panicked: stop and dump
    CHECKED = 6        # (ncpus)            (to the launcher) every CPU ran its final check
    WAKE = 7           # (tid, lock)        a sleep lock was released: try again
    STALLED = 8        # (cpu, seconds)     (to the launcher) a CPU has gone silent
    HEARTBEAT = 9      # (ops)              server -> CPU: "still here", every HEARTBEAT_S,
                       #                    with the operations handled so far
    RECALL = 10        # (lock)             another CPU wants the lock: give its line back
    FINAL = 11         # ()                 the run ends: check the machine once more
    HORIZON = 12       # (horizon, idle)    how far this CPU may now run, and jump idle
    END = 13           # (t)                (to the launcher) every CPU reached the end
    STOP = 14          # (reason)           stop where you are (a replay's --until)
    DONE = 15          # (ok, message)      (to the launcher) the replay ended
    WRITE_FAILED = 16  # (message)          (to the launcher) the record or a trace could not
                       #                    be written (a full disk): stop the run

# Control messages change nothing in the machine: they are not recorded or ordered, and
# a replay does not count them among the events a CPU takes (hw/record.py).
CONTROL_OPS = frozenset({Op.PING, Op.SYNC, Op.STUCK})
CONTROL_EVENTS = frozenset({Event.HEARTBEAT, Event.HORIZON, Event.STOP})

# SYNC states: why a CPU waits (the server's horizon counts it accordingly)
SYNC_RUN = 0          # running, at the horizon: counts at its time
SYNC_IDLE = 1         # idle until its next timer event (need): counts at that time, and
                      # goes only when no other CPU can act before it (the idle limit)
SYNC_SPIN = 2         # spinning for a grant: counts not at all (the release has the time)


# Liveness (heartbeats both ways). The server sends every CPU a HEARTBEAT event every
# HEARTBEAT_S; a CPU that has sent nothing for HEARTBEAT_S posts a PING. A CPU that hears
# nothing at all from the server for SERVER_SILENCE_S takes the server for dead and exits;
# the server reports a CPU silent for PEER_LOST_S to the launcher (Event.STALLED), which
# ends the run naming it as unresponsive. A request gives up after LIVENESS_S without its
# reply although the server is heard from (alive, but it does not answer: a server bug);
# in a replay, LIVENESS_S without its reply while the machine handled no operation (a
# replayed request waits its turn, which may take the other CPUs long on a busy host).
# A CPU started on the server's own host knows the server's process: once the server has
# been silent for SERVER_SILENCE_S it looks at that process, and one that lives and is not
# stopped (the host did not run it: two busy loops and two machines on two cores once held
# a server's loop back for over 2 s) is waited for, up to SERVER_STARVED_S of silence;
# the server waits as long for a silent CPU of its host (smp.machine.liveness).
HEARTBEAT_S = 0.25
SERVER_SILENCE_S = 1.25
SERVER_STARVED_S = 10.0
PEER_LOST_S = 3.0
LIVENESS_S = 10.0

# Kernel memory: the address layout, declared here once (the server's object store and the
# kernel's structures follow it). An object is a handle (a positive integer, never reused;
# 0 is NULL); a field's address is (handle << FIELD_BITS) | its index, so a lock, a list
# head or a sleep channel is named by address, as in C. A field's kind is a value kind, or
# "ptr:<type>", or an embedded kind: a lock word, a list head, a hash table, which have an
# address and no value to load.
FIELD_BITS = 8
VALUE_KINDS = ("int", "str", "any")
F_LOCK, F_LIST, F_MAP = "lock", "list", "map"
EMBEDDED_KINDS = (F_LOCK, F_LIST, F_MAP)


def field_addr(handle: int, index: int) -> int:
    """The address of field ``index`` of object ``handle``."""
    return (handle << FIELD_BITS) | index


def field_kind_ok(kind: Any) -> bool:
    return isinstance(kind, str) and (kind in VALUE_KINDS or kind in EMBEDDED_KINDS
                                      or (kind.startswith("ptr:") and len(kind) > 4))


# Frames larger than this get an error reply (and the server's socket refuses frames larger
# than MAX_FRAME_HARD outright: ZeroMQ drops the connection of a peer that sends one).
MAX_FRAME = 16 << 20
MAX_FRAME_HARD = 64 << 20

# A frame may carry several requests, packed back to back: the posted requests a CPU has
# buffered (stores, releases, ...) and at most one call, last (hw.bus). At most MAX_BATCH.
MAX_BATCH = 256

# ACQUIRE answers
GRANTED = 0
QUEUED = 1
BUSY = 2
GRANTED_LINE = 3      # granted, and the lock's line stays with this CPU (hw.bus: lines)

# The machine's lock kinds (the server's semantics; the kernel maps its lock classes onto
# them and gives each lock its class name for reports):
LK_SPIN = "spin"      # one owner; waiters spin and are handed the lock in turn
LK_SLEEP = "sleep"    # one owner; a release wakes the first waiter, who tries again
LK_RW = "rw"          # shared or exclusive; waiters sleep; readers wait only for a writer
LOCK_KINDS = (LK_SPIN, LK_SLEEP, LK_RW)

# lock flags
LF_RECURSE = 0x1      # the owner may take it again
LF_DUPOK = 0x2        # two locks of the same name may be held (no duplicate warning)
LF_NOWITNESS = 0x4    # not order-checked
LF_NOSHREC = 0x8      # no shared recursion

# acquire modes
EXCL = 0
SHARED = 1

# ACQUIRE flags
AF_TRY = 0x1          # a try-lock: BUSY instead of QUEUED, never order-checked
AF_PICKUP = 0x2       # a lock taken back after a sleep: no lock-order edge (WITNESS rule 7)
AF_LINE = 0x4         # posted: taken on the strength of the CPU's line (no reply wanted)

_packer = msgpack.Packer(use_bin_type=True)


def pack(msg: list[Any] | tuple[Any, ...]) -> bytes:
    """Encode one message."""
    return _packer.pack(msg)


def unpack(frame: bytes) -> Any:
    """Decode one message; raises ValueError (or a msgpack error) on garbage."""
    return msgpack.unpackb(frame, raw=False, strict_map_key=False, use_list=True)


def unpack_all(frame: bytes) -> list[Any]:
    """Decode a frame of one or more messages packed back to back; raises ValueError (or
    a msgpack error) on garbage anywhere in it, or on more than MAX_BATCH messages."""
    try:
        return [unpack(frame)]                   # the common case: one message
    except msgpack.ExtraData as e:
        first, rest = e.unpacked, e.extra
    up = msgpack.Unpacker(raw=False, strict_map_key=False, use_list=True,
                          max_buffer_size=max(len(rest), 1))
    up.feed(rest)
    out, end = [first], 0
    for msg in up:
        out.append(msg)
        end = up.tell()                          # the end of the last whole message
        if len(out) > MAX_BATCH:
            raise ValueError(f"more than {MAX_BATCH} messages in one frame")
    if end != len(rest):
        raise ValueError(f"truncated message at byte {len(frame) - len(rest) + end}")
    return out


class ProtocolError(Exception):
    """A message that does not follow this protocol."""
