"""What a run found, classified: new failures, and known findings of the 2002 code.

A run's ``report.json`` can show trouble in four places: a panic (a failed KASSERT or
mtx_assert, a fatal trap, or a detector in the server that panics: deadlock, spin), the
invariant checks, the detectors' findings (lock order, unprotected accesses, watchdog,
the kernel's own), and problems of the machine itself (a dead process). ``classify``
turns all of them into one list of :class:`Failure`, each marked known when it matches an
entry of the registry ``known_findings.toml`` (explained in FINDINGS.md).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import tomllib
from typing import Any


@dataclasses.dataclass(frozen=True)
class KnownFinding:
    id: str
    detector: str
    match: re.Pattern[str]


@dataclasses.dataclass(frozen=True)
class Failure:
    detector: str
    summary: str
    sites: tuple[str, ...]
    known: str | None = None          # the id of the known finding it matches


def load_known() -> list[KnownFinding]:
    text = importlib.resources.files("smp.hunt").joinpath("known_findings.toml").read_text()
    out = []
    for e in tomllib.loads(text).get("finding", []):
        out.append(KnownFinding(str(e["id"]), str(e["detector"]), re.compile(str(e["match"]))))
    return out


def _match(known: list[KnownFinding], detector: str, summary: str) -> str | None:
    for k in known:
        if k.detector == detector and k.match.search(summary):
            return k.id
    return None


def classify(report: dict[str, Any], known: list[KnownFinding] | None = None) -> list[Failure]:
    """Everything wrong with a run, known findings marked."""
    known = load_known() if known is None else known
    out: list[Failure] = []
    panic = report.get("panic")
    if panic:
        detector = panic.get("detector") or "panic"
        msg = str(panic.get("message", ""))
        out.append(Failure(detector, msg, tuple(s for s in [panic.get("site")] if s),
                           _match(known, detector, msg)))
    for line in report.get("invariants") or []:
        out.append(Failure("invariant", str(line), (), _match(known, "invariant", str(line))))
    for f in report.get("findings") or []:
        det = str(f.get("detector", "?"))
        summary = str(f.get("summary", ""))
        out.append(Failure(det, summary, tuple(f.get("sites") or ()),
                           _match(known, det, summary)))
    for p in report.get("problems") or []:
        out.append(Failure("machine", str(p), ()))
    return out
