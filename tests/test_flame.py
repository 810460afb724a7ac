"""Lock contention as a flame graph, from a synthetic report's ``lock_wait_stacks`` (the
kernel fills that field; its format is in smp/observe/flame.py), and the other ways
``smp report`` prints a finished run's tables."""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

import pytest

from smp.cli import main
from smp.observe.flame import FlameError, folded, stacks, svg, tree

pytestmark = pytest.mark.quick

WAITS = [
    {"lock": "Giant", "stack": ["fork_exit", "prog_hog", "touch", "vm_fault", "mtx_lock"],
     "count": 3, "wait_s": 0.25},
    {"lock": "Giant", "stack": ["fork_exit", "prog_hog", "touch", "vm_fault", "mtx_lock"],
     "count": 1, "wait_s": 0.05},
    {"lock": "Giant", "stack": ["fork_exit", "vm_daemon", "swapout_procs", "mtx_lock"],
     "count": 2, "wait_s": 0.1},
    {"lock": "sched lock", "stack": ["fork_exit", "schedcpu_thread", "mtx_lock_spin"],
     "count": 40, "wait_s": 0.000004},
    {"lock": "allproc", "stack": ["fork_exit", "prog_forker", "fork1; odd frame",
                                  "sx_xlock"], "count": 1, "wait_s": 0.002},
    {"lock": "lockobj", "stack": ["lockload_thread", "mtx_lock"], "count": 0, "wait_s": 0.0},
]

# Brendan Gregg's folded format (stackcollapse-*.pl output, what flamegraph.pl and
# speedscope's "collapsed stack" importer read): "frame;frame;frame value", root first.
FOLDED = [
    "Giant;fork_exit;prog_hog;touch;vm_fault;mtx_lock 300000",
    "Giant;fork_exit;vm_daemon;swapout_procs;mtx_lock 100000",
    "allproc;fork_exit;prog_forker;fork1, odd frame;sx_xlock 2000",
    "sched lock;fork_exit;schedcpu_thread;mtx_lock_spin 4",
]


def test_folded_golden() -> None:
    assert folded(WAITS) == FOLDED
    for line in folded(WAITS):
        assert re.fullmatch(r"[^;\n]+(;[^;\n]+)* \d+", line), line


def test_folded_by_count() -> None:
    assert folded(WAITS, "count") == [
        "Giant;fork_exit;prog_hog;touch;vm_fault;mtx_lock 4",
        "Giant;fork_exit;vm_daemon;swapout_procs;mtx_lock 2",
        "allproc;fork_exit;prog_forker;fork1, odd frame;sx_xlock 1",
        "sched lock;fork_exit;schedcpu_thread;mtx_lock_spin 40"]


def test_the_tree_sums_each_lock_and_path() -> None:
    root = tree(FOLDED)
    assert root.value == 402004
    assert root.children["Giant"].value == 400000
    assert root.children["Giant"].children["fork_exit"].children["vm_daemon"].value == 100000


def test_a_report_without_stacks_says_so() -> None:
    with pytest.raises(FlameError, match="no lock_wait_stacks"):
        stacks({"locks": []})


def test_svg_is_a_flame_graph_with_searchable_frame_names(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "lock_waits.svg"
    svg(FOLDED, str(path), "Lock waits: default.toml, seed 1")
    text = path.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for frame in ("Giant", "fork_exit", "prog_hog", "vm_daemon"):
        assert f">{frame}<" in text, frame                 # text, not glyph paths
    assert "Lock waits: default.toml, seed 1" in text


def _run_dir(tmp_path: pathlib.Path, **extra: Any) -> pathlib.Path:
    from test_shapes import REPORT
    rdir = tmp_path / "run"
    rdir.mkdir()
    (rdir / "report.json").write_text(json.dumps({**REPORT, **extra}))
    return rdir


def test_smp_report_format_folded_and_smp_flame(tmp_path: pathlib.Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    rdir = _run_dir(tmp_path, lock_wait_stacks=WAITS)
    assert main(["report", str(rdir), "--format", "folded"]) == 0
    assert capsys.readouterr().out.splitlines() == FOLDED
    assert main(["flame", str(rdir)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(rdir / "lock_waits.folded"), str(rdir / "lock_waits.svg")]
    assert (rdir / "lock_waits.folded").read_text().splitlines() == FOLDED
    assert "<svg" in (rdir / "lock_waits.svg").read_text()


def test_smp_flame_with_no_lock_waits_exits_2_and_makes_no_file(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A run whose threads never waited: one line, exit 2, and no empty
    lock_waits.folded beside it (it was written, named on stdout, then refused)."""
    rdir = _run_dir(tmp_path, lock_wait_stacks=[])
    assert main(["flame", str(rdir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"smp flame: {rdir}: no lock waits with a stack to draw "
                                 f"(no thread of the run waited for a lock)\n"), err
    assert sorted(p.name for p in rdir.iterdir()) == ["report.json"]


def test_smp_report_folded_without_stacks_exits_2(tmp_path: pathlib.Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    rdir = _run_dir(tmp_path)
    assert main(["report", str(rdir), "--format", "folded"]) == 2
    assert "no lock_wait_stacks" in capsys.readouterr().err


def test_smp_report_table_locks_without_csv_prints_the_table(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 16: ``--table locks`` without ``--format csv`` printed the summary instead."""
    rdir = _run_dir(tmp_path)
    assert main(["report", str(rdir), "--table", "locks"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "lock                     acquires contested cpus max hold ms wait s",
        "Giant                         355       121    2       224.1  26.23",
        "sched lock                   1971      1022    2        56.3   1.62",
        "vm page queue free mutex      323         0    2         9.4   0.00"]
    assert main(["report", str(rdir), "--table", "series"]) == 2
    assert "needs --format csv" in capsys.readouterr().err
    assert main(["report", str(rdir), "--format", "csv", "--table", "locks"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == \
        "name,acquires,contested,cpus_seen,max_hold_us,wait_us_total"


def test_the_report_merges_the_cpus_lock_wait_stacks() -> None:
    """Each CPU's final report may carry ``lock_wait_stacks``; report.json has them
    merged (the same lock and stack summed), and none when no CPU recorded any."""
    from smp.observe.report import _lock_wait_stacks
    finals = {0: {"lock_wait_stacks": WAITS[:2]}, 1: {"lock_wait_stacks": WAITS[2:4]},
              2: {}}
    merged = _lock_wait_stacks(finals, {})["lock_wait_stacks"]
    assert merged[0] == {"lock": "Giant", "stack": ["fork_exit", "prog_hog", "touch",
                                                    "vm_fault", "mtx_lock"],
                         "count": 4, "wait_s": 0.3}
    assert len(merged) == 3 and folded(merged) == [FOLDED[0], FOLDED[1], FOLDED[3]]
    assert _lock_wait_stacks({0: {}, 1: None}, {}) == {}


@pytest.mark.parametrize("cmd", ["report", "flame", "witness", "plot"])
def test_a_run_dir_that_is_a_file_is_one_line_exit_2(tmp_path: pathlib.Path, cmd: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("")
    assert main([cmd, str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smp {cmd}: {tmp_path / 'afile'}/") and "cannot read it" in err, err
    assert err.count("\n") == 1, err


def test_an_output_that_cannot_be_written_is_one_line_exit_2(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    rdir = _run_dir(tmp_path, lock_wait_stacks=WAITS)
    (rdir / "lock_waits.folded").mkdir()
    assert main(["flame", str(rdir)]) == 2
    err = capsys.readouterr().err
    assert err == f"smp flame: {rdir / 'lock_waits.folded'}: cannot write it: Is a directory\n"


@pytest.mark.parametrize("cmd,bad", [
    ("witness", {"witness_order": {}, "locks": [1]}),
    ("witness", {"witness_order": {}, "policy": [1]}),
    ("flame", {"lock_wait_stacks": [1]}),
    ("flame", {"lock_wait_stacks": [{"lock": "Giant", "wait_s": "x"}]}),
    ("plot", {})])
def test_a_report_of_another_shape_is_one_line_exit_2(
        tmp_path: pathlib.Path, cmd: str, bad: dict[str, Any],
        capsys: pytest.CaptureFixture[str]) -> None:
    """A report.json (or stats.jsonl) that is JSON but not of the shape smp writes is
    said as `smp report` says it, not with a traceback."""
    rdir = _run_dir(tmp_path, **bad)
    (rdir / "stats.jsonl").write_text("[1]\n")
    assert main([cmd, str(rdir)]) == 2
    err = capsys.readouterr().err
    name = "stats.jsonl" if cmd == "plot" else "report.json"
    assert err.startswith(f"smp {cmd}: {rdir / name}: ") and "smp cannot read (" in err, err
    assert err.count("\n") == 1, err


def test_smp_flame_on_what_is_not_a_runs_report_says_so(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Not a run's report.json: said as such (not as a kernel that records no stacks,
    which is what a real report without them gets)."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "report.json").write_text("{}")
    assert main(["flame", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smp flame: {other / 'report.json'}: not a report of `smp run` "
                          f"(no ok, seed, "), err
    rdir = _run_dir(tmp_path)
    assert main(["flame", str(rdir)]) == 2
    assert "does not record the stacks of lock waits" in capsys.readouterr().err
