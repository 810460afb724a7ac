"""Coverage (``debug.coverage``): the lines of the kernel a run ran, as gcov and lcov write
them, per run and summed over a campaign, and the same in a replay.

The machine tests run one small campaign of ``configs/stress.toml`` (two runs of real
server and CPU processes, side by side) and read its runs, its folder and a replay of one
run; the rest is pure logic.
"""

from __future__ import annotations

import json
import pathlib
import re

import pytest

import helpers
from smp.machine.linecount import LineCounter, kernel_root
from smp.observe.coverage import (Coverage, c_statements, code_lines, gcov, lcov, merge,
                                  ported, unpacked)
from smp.run.replay import compare

STRESS = str(helpers.REPO / "configs" / "stress.toml")
PORT = "vm/vm_glue.py"


# -- pure logic ----------------------------------------------------------------------------
@pytest.mark.quick
def test_lines_of_code_are_the_functions_bodies(tmp_path: pathlib.Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("import os\n"                          # 1  ran at import
                   "X = 1\n"                              # 2  ran at import
                   "def f(a):\n"                          # 3  the def: no line event
                   "    '''doc'''\n"                      # 4  a docstring: no code
                   "    b = len(a)\n"                     # 5
                   "    # a comment\n"                    # 6
                   "    return [b for _ in a]\n"          # 7
                   "class C:\n"                           # 8  ran at import
                   "    y = 2\n"                          # 9  ran at import
                   "    def g(self):\n"                   # 10
                   "        return (1 +\n"                # 11
                   "                2)\n"                 # 12
                   "def h():\n"                           # 13 its return None
                   "    '''only a docstring'''\n"         # 14
                   "def k():\n"                           # 15 a generator
                   "    yield 1\n"                        # 16
                   "def loop(n):\n"                       # 17
                   "    for i in range(n):\n"             # 18
                   "        max(i,\n"                     # 19 one call over two lines
                   "            n)\n")                    # 20
    assert code_lines(str(src)) == {5, 7, 11, 13, 16, 18, 19}
    # and those are the lines a LineCounter counts when every one of them runs, in a
    # greenlet as in the main one
    import greenlet
    import importlib.util
    spec = importlib.util.spec_from_file_location("m", src)
    assert spec is not None and spec.loader is not None
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    counter = LineCounter(str(tmp_path))
    counter.start()
    try:
        m.f([1, 2])
        greenlet.greenlet(lambda: (m.C().g(), m.h(), list(m.k()), m.loop(3))).switch()
        counter.uncounted(lambda: m.f([3]))()
    finally:
        counts = counter.stop()
    # each statement as often as it started: the comprehension's rounds are its
    # statement's; the call over two lines, which Python reports three times (19, 20, 19),
    # once a round; the loop's header once a round and once to leave
    assert counts == {"m.py": {5: 1, 7: 1, 11: 1, 13: 1, 16: 1, 18: 4, 19: 3}}


@pytest.mark.quick
def test_c_lines_of_code_leave_out_comments_declarations_braces_and_the_preprocessor() -> None:
    c = ["/* a comment", " * x = 1; */", "static int", "f(a)", "\tint a;", "{",
         "\tstruct proc *p;", "\tint i, j;", "\tint k = 0;", "#ifdef X", "\tp = a;",
         "\t/* c */ i++;", "\tif (a) {", "\t\treturn;", "\t}", "}", "int g;"]
    assert c_statements(c) == {9, 11, 12, 13, 14}


@pytest.mark.quick
def test_a_port_counts_as_its_c_and_gcov_and_lcov_say_so() -> None:
    c = ["f(a)", "{", "\tx = 1;", "\tif (a)", "\t\ty = 2;", "\t/* note */", "}"]
    # port lines 1..5: def, a line porting x = 1, a Python-only line (ports the line
    # before), the if, the assignment under it
    table = [1, 3, 3, 4, 5]
    code, counts = ported({2: 3, 3: 3, 4: 3, 5: 0}, {2, 3, 4, 5}, table, c)
    assert code == {3, 4, 5} and counts == {3: 3, 4: 3, 5: 0}
    text = gcov(c, "f.c", code, counts, runs=2).splitlines()
    assert text[:2] == ["        -:    0:Source:f.c", "        -:    0:Runs:2"]
    assert text[2 + 2] == "        3:    3:\tx = 1;"
    assert text[2 + 4] == "    #####:    5:\t\ty = 2;"
    assert text[2 + 5] == "        -:    6:\t/* note */"
    assert lcov({"/k/f.py": ({2, 5}, {2: 7})}, "t").splitlines() == [
        "TN:t", "SF:/k/f.py", "DA:2,7", "DA:5,0", "LH:1", "LF:2", "end_of_record"]


@pytest.mark.quick
def test_a_replay_that_ran_a_line_a_different_number_of_times_differs_naming_it() -> None:
    rep = {"kernel": {"forks": 3}, "coverage": {"counts": {PORT: [[431, 12], [432, 1]]}}}
    other = {"kernel": {"forks": 3}, "coverage": {"counts": {PORT: [[431, 13], [432, 1]]}}}
    assert compare(rep, other) == [f"coverage: {PORT}:431 12 -> 13"]
    assert compare(rep, json.loads(json.dumps(rep))) == []
    # a run that did not count lines compares on the rest
    assert compare({"kernel": {"forks": 3}}, other) == []


# -- a campaign of real machines -------------------------------------------------------------
@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    tmp = tmp_path_factory.mktemp("coverage")
    proc = helpers.cli(tmp, "stress", STRESS, "--runs", "2", "--jobs", "2", "--duration",
                       "1.5", "--keep-going", "--coverage", "--out",
                       str(tmp / "camp"), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp / "camp" / "stdout.txt").write_text(proc.stdout)
    return tmp / "camp"


def _runs(camp: pathlib.Path) -> list[dict]:
    reports = [json.loads(p.read_text()) for p in sorted(camp.glob("run*/report.json"))]
    assert len(reports) == 2
    return reports


@pytest.mark.long
@pytest.mark.timeout(300)
def test_every_counted_line_is_code_and_counts_what_the_kernel_counted(
        campaign: pathlib.Path) -> None:
    """A line that bumps a kernel counter (``md.pcpu.count("swapouts")``, the only one of
    its name) ran exactly as often as the counter says, summed over every CPU and every
    thread on it; no line outside the functions' bodies is ever counted."""
    port = (pathlib.Path(kernel_root()) / PORT).read_text().splitlines()
    bumps = {int(n): m.group(1) for n, line in enumerate(port, 1)
             for m in [re.search(r'md\.pcpu\.count\("(\w+)"\)$', line.split("#")[0].strip())]
             if m}
    assert {"swapouts", "kernacc", "faultins_swapper"} <= set(bumps.values())
    ran = swapped = 0
    for rep in _runs(campaign):
        counts = unpacked(rep["coverage"]["counts"])
        for f, lines in counts.items():
            assert set(lines) <= code_lines(str(pathlib.Path(kernel_root()) / f)), f
        for n, name in bumps.items():
            assert counts[PORT].get(n, 0) == rep["kernel"][name], (n, name)
            ran += rep["kernel"][name]
        swapped += rep["kernel"]["swapouts"]
    assert ran > 0 and swapped > 0, "stress runs swap"


@pytest.mark.long
@pytest.mark.timeout(300)
def test_each_run_and_the_campaign_write_gcov_and_lcov(campaign: pathlib.Path) -> None:
    reports = _runs(campaign)
    sources = reports[0]["policy"]["sources"]
    per_run = []
    for rdir in sorted(campaign.glob("run*/")):
        gc = (rdir / "vm_glue.c.gcov").read_text().splitlines()
        assert gc[:2] == ["        -:    0:Source:vm_glue.c", "        -:    0:Runs:1"]
        c = (pathlib.Path(kernel_root()) / "vm" / "vm_glue.c").read_text().splitlines()
        assert [line[16:] for line in gc[2:]] == c          # the C itself, each line
        per_run.append({int(line[10:15]): line[:9].strip() for line in gc[2:]})
        info = (rdir / "coverage.info").read_text()
        # (the machines' smp may be another copy than the one this test imports: a
        # clone's, beside an installed one)
        assert re.search(rf"^SF:/.*/kernel/{re.escape(PORT)}$", info, re.M), info[:300]
        assert info.count("end_of_record") == len(list(pathlib.Path(kernel_root())
                                                       .rglob("*.py")))
    # the campaign's gcov: the two runs' counts summed, line by line
    gc = (campaign / "vm_glue.c.gcov").read_text().splitlines()
    assert gc[1] == "        -:    0:Runs:2"
    both = Coverage(merge(unpacked(r["coverage"]["counts"]) for r in reports), sources)
    [(_, _, code, counts)] = both.ports.values()
    for line in gc[2:]:
        n, mark = int(line[10:15]), line[:9].strip()
        assert mark == (str(counts[n]) if counts.get(n) else "#####" if n in code else "-")
        runs = [r[n] for r in per_run]
        if mark not in ("-", "#####"):
            assert int(mark) == sum(int(x) for x in runs if x not in ("-", "#####"))
    said = (campaign / "stdout.txt").read_text()
    assert re.search(r"coverage over 2 runs: vm_glue\.c: \d+ of \d+ lines of code ran", said)
    assert "coverage over 2 runs: the kernel (" in said
    # and the campaign's record keeps the closing lines
    assert any(s.startswith("coverage over 2 runs: vm_glue.c")
               for s in json.loads((campaign / "campaign.json").read_text())["summary"])


@pytest.mark.long
@pytest.mark.timeout(300)
def test_a_replay_runs_every_line_as_often_as_the_run(campaign: pathlib.Path) -> None:
    rdir = sorted(campaign.glob("run*/"))[0]
    proc = helpers.cli(campaign, "replay", str(rdir), timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "clocks, findings, lines run and panic as the recorded run" in proc.stdout, proc.stdout
    again = json.loads((rdir / "replay" / "report.json").read_text())
    assert again["coverage"]["counts"] == json.loads(
        (rdir / "report.json").read_text())["coverage"]["counts"]
