"""Known findings pinned to their statements (#14 item 3): F2 is known only at the two
statements of the seed that make it (swapout's TD_SET_SWAPPED and faultin's
TD_CLR_SWAPPED), wherever their lines move; the same fields touched without sched_lock by
any other statement of vm_glue.py are a new finding. No machine is started."""

from __future__ import annotations

import importlib.resources

import pytest

from smp.observe import findings
from smp.observe.findings import classify, load_known, statement_at, statements_of

SRC = importlib.resources.files("smp.kernel").joinpath("vm/vm_glue.py").read_text()


def _line(func: str, text: str) -> int:
    """The line of the first statement ``text`` inside function ``func`` of vm_glue.py."""
    funcs, stmts = statements_of(SRC)
    lo, hi = next((a, b) for a, b, name in funcs if name == func)
    return next(a for a, _, s in stmts if lo <= a <= hi and s == text)


def _lockkey(field: str, kind: str, line: int) -> dict:
    site = f"vm/vm_glue.py:{line}"
    return {"findings": [{"detector": "lockkey", "sites": [site],
                          "summary": f"unlocked {kind} of thread.{field} (j: needs sched "
                                     f"lock) @ {site} (vm_glue.c:1)"}]}


def test_every_pinned_statement_exists_in_the_kernel() -> None:
    for k in load_known():
        for path, func, stmt in k.where:
            funcs, stmts = statements_of(
                importlib.resources.files("smp.kernel").joinpath(path).read_text())
            spans = [(a, b) for a, b, name in funcs if name == func]
            assert spans, (k.id, func)
            assert any(s == stmt and any(a <= n <= b for a, b in spans)
                       for n, _, s in stmts), (k.id, func, stmt)


@pytest.mark.parametrize("func,stmt", [("swapout", "TD_SET_SWAPPED(td)"),
                                       ("faultin", "TD_CLR_SWAPPED(td)")])
@pytest.mark.parametrize("field,kind", [("td_state", "store"), ("td_inhibitors", "load"),
                                        ("td_inhibitors", "store")])
def test_f2_at_its_statements_is_known(func: str, stmt: str, field: str, kind: str) -> None:
    [f] = classify(_lockkey(field, kind, _line(func, stmt)))
    assert f.known == "F2"


@pytest.mark.parametrize("func,stmt", [
    ("faultin", "td.td_state == TDS.TDS_CAN_RUN"),        # faultin's setrunqueue test
    ("scheduler", "td.td_inhibitors == TDI.TDI_SWAPPED"),
])
def test_the_same_fields_elsewhere_in_vm_glue_are_new(func: str, stmt: str) -> None:
    field = "td_state" if "td_state" in stmt else "td_inhibitors"
    [f] = classify(_lockkey(field, "load", _line(func, stmt)))
    assert f.known is None and f.detector == "lockkey"


def test_a_site_off_any_statement_or_in_another_file_is_new() -> None:
    [f] = classify(_lockkey("td_state", "store", 1))                   # the docstring
    assert f.known is None
    r = _lockkey("td_state", "store", 1)
    r["findings"][0]["sites"] = ["sys/proc.py:1"]
    assert classify(r)[0].known is None
    r["findings"][0]["sites"] = []
    assert classify(r)[0].known is None


def test_the_pin_follows_a_statement_whose_line_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    """Three comment lines added above swapout: the old line is no longer F2, the new is."""
    old = _line("swapout", "TD_SET_SWAPPED(td)")
    moved = SRC.replace("\ndef swapout(", "\n# a\n# b\n# c\ndef swapout(", 1)
    monkeypatch.setitem(findings._parsed, "vm/vm_glue.py", statements_of(moved))
    assert statement_at(f"vm/vm_glue.py:{old + 3}") == ("vm/vm_glue.py", "swapout",
                                                        "TD_SET_SWAPPED(td)")
    assert classify(_lockkey("td_state", "store", old + 3))[0].known == "F2"
    assert classify(_lockkey("td_state", "store", old))[0].known is None


def test_a_site_annotated_with_its_c_line_reads_the_same() -> None:
    n = _line("faultin", "TD_CLR_SWAPPED(td)")
    assert statement_at(f"vm/vm_glue.py:{n} (vm_glue.c:496)") == statement_at(
        f"vm/vm_glue.py:{n}")


def test_a_lost_wakeup_made_by_swapout_is_f2_and_one_made_elsewhere_is_new() -> None:
    n = _line("swapout", "TD_SET_SWAPPED(td)")
    f = {"detector": "liveness", "summary": "lost wakeup: thread 40 (napper) of pid 9 "
         "(napper) inhibited as sleeping (td_inhibitors 0x6 (SLEEPING|SWAPPED)) on no sleep "
         f"queue; inhibitors last stored @ vm/vm_glue.py:{n}",
         "sites": [f"vm/vm_glue.py:{n}", "userland/libc.py:40"]}
    assert classify({"findings": [f]})[0].known == "F2"
    f["sites"] = ["kern/kern_synch.py:120", "userland/libc.py:40"]
    assert classify({"findings": [f]})[0].known is None


def test_a_detectors_panic_is_one_failure_even_with_its_c_lines_named() -> None:
    """A deadlock panics the machine and is a finding too: the same report, once, also
    when the finding's sites were annotated with their C lines and the panic's not."""
    from smp.observe.summary import detector_findings
    msg = ('deadlock: thread 2 waits for sleep mutex "Giant" (asked @ vm/vm_glue.py:600), '
           'held by thread 1 (taken @ kern/kern_exit.py:47)')
    sources = {"vm/vm_glue.py": ["vm_glue.c", list(range(1, 900))]}
    report = {"panic": {"message": msg, "detector": "deadlock", "site": "vm/vm_glue.py:600",
                        "op": 77},
              "findings": [{"detector": "deadlock", "summary": msg.replace(
                  "vm/vm_glue.py:600", "vm/vm_glue.py:600 (vm_glue.c:600)"), "op": 77},
                  {"detector": "witness", "summary": "lock order reversal: a -> b"}],
              "policy": {"sources": sources}}
    fails = classify(report, [])
    assert [(f.detector, f.op, f.panic) for f in fails] == [("deadlock", 77, True),
                                                            ("witness", None, False)]
    assert [f.detector for f in detector_findings(report)] == ["witness"]


def test_report_json_says_which_findings_are_known() -> None:
    """report.json's findings carry the known finding's id, so that a script reading it
    tells the known from the new without the campaign's classification."""
    known = _lockkey("td_inhibitors", "load", _line("swapout", "TD_SET_SWAPPED(td)"))
    new = _lockkey("td_state", "load", _line("faultin", "td.td_state == TDS.TDS_CAN_RUN"))
    found = known["findings"] + new["findings"]
    findings.tag_known(found)
    assert [f.get("known") for f in found] == ["F2", None]


def test_f2s_lost_update_itself_is_known() -> None:
    """When F2's race happens (a wakeup's store between swapout's unlocked load and its
    store), the lost update is reported; at swapout's statement it is F2, known."""
    site = f"vm/vm_glue.py:{_line('swapout', 'TD_SET_SWAPPED(td)')}"
    summary = (f"lost update of thread.td_inhibitors (loaded unlocked @ {site}, stored @ "
               f"{site}; thread 9's store @ kern/kern_synch.py:143 between them is lost)")
    [f] = classify({"findings": [{"detector": "lockkey", "summary": summary,
                                  "sites": [site, site, "kern/kern_synch.py:143"]}]})
    assert f.known == "F2"
