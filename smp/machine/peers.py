"""Who talks to the machine server, and how the server names what they sent.

A *peer* is one ZeroMQ identity that said HELLO: a CPU (its id ``0..ncpus-1``) or the
launcher (``-1``). The server (``smp.machine.server``) keeps one :class:`Peer` per
identity; an identity that never said hello is a *stranger* and gets no record, only a
bounded number of error replies.

A message refused before its handler ran raises :class:`Rejected`, whose ``kind`` is the
key under which the server counts it (``rejected`` in its report: ``version``, ``hello``,
``args``, ``range``, ``unknown_op``, ...). Errors quote what the peer sent, cut short
(:func:`short`), and name the operation (:func:`opname`).
"""

from __future__ import annotations

from typing import Any

from smp.hw.protocol import Op, ProtocolError


class Rejected(ProtocolError):
    """A message refused before it reached a handler; ``kind`` is the statistics key."""

    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind


class Peer:
    __slots__ = ("ident", "role", "cpu", "pid", "final", "gone", "requests")

    def __init__(self, ident: bytes, role: str, cpu: int, pid: int) -> None:
        self.ident = ident
        self.role = role                        # "cpu" or "launcher"
        self.cpu = cpu                          # -1: the launcher
        self.pid = pid
        self.final: dict[str, Any] | None = None     # its final counters (REPORT final)
        self.gone = False                       # it said BYE
        self.requests = 0


def short(x: Any) -> str:
    """``x`` as an error message quotes it: its repr, at most 60 characters."""
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


_OPNAMES = {int(o): o.name for o in Op}      # Op(op).name costs an enum call per request


def opname(op: Any) -> str:
    """The operation's name, or ``op N`` for a number the protocol does not know."""
    try:
        name = _OPNAMES.get(op)
    except TypeError:                            # unhashable: no operation's number
        name = None
    return name if name is not None else f"op {op!r}"


__all__ = ["Peer", "Rejected", "opname", "short"]
