"""The command line's smaller promises: shell completion (argcomplete) and what ``smp plot``
says when the plotting extra is not installed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import helpers
from smp.cli import main

ROOT = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.quick


def _complete(tmp_path: pathlib.Path, line: str) -> list[str]:
    """What TAB offers after ``line``: the protocol bash's completion function speaks."""
    out = tmp_path / "completions"
    env = dict(helpers.cli_env(), _ARGCOMPLETE="1", COMP_LINE=line,
               COMP_POINT=str(len(line)), _ARGCOMPLETE_STDOUT_FILENAME=str(out),
               _ARGCOMPLETE_IFS="\n")
    r = subprocess.run([sys.executable, "-m", "smp"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return sorted(w.strip() for w in out.read_text().split("\n") if w.strip())


def test_tab_completes_commands_options_and_fail_point_names(tmp_path: pathlib.Path) -> None:
    assert _complete(tmp_path, "smp wit") == ["witness"]
    assert "--fail-point" in _complete(tmp_path, "smp run --f")
    assert _complete(tmp_path, "smp replay --w") == ["--watch"]
    assert _complete(tmp_path, "smp stress --fail-point swapout_procs_p") == \
        ["swapout_procs_p_system", "swapout_procs_prs_new"]


def test_smp_completion_prints_the_shell_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["completion", "bash"]) == 0
    code = capsys.readouterr().out
    assert "complete " in code and " smp" in code and "_ARGCOMPLETE" in code
    assert main(["completion", "fish"]) == 0
    assert "complete --command smp" in capsys.readouterr().out


def test_smp_plot_without_matplotlib_says_how_to_get_it(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for mod in [m for m in sys.modules if m == "smp.observe.plot"
                or m.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)     # as if not installed
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "matplotlib is not installed" in err and "pip install 'smp[plot]'" in err


@pytest.mark.parametrize("args, said", [
    (["--ops", "0"], "--ops must be at least 1, got 0"),
    (["--rounds", "-1"], "--rounds must be at least 1, got -1"),
    (["--duration", "0"], "--duration: run.duration: must be a number from 0.1"),
    (["--config", "/nonexistent/x.toml"], "/nonexistent/x.toml: no such config file")])
def test_smp_bench_refuses_bad_options_before_it_measures(
        args: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    """One line and exit 2 (they were tracebacks after some measuring, or, --duration 0,
    a silent full-length machine)."""
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smp bench: {said}") and err.count("\n") == 1, err


def test_ctrl_c_before_a_command_takes_the_signal_is_exit_130_not_a_traceback(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ctrl-C in smp's first second (a command still importing what it needs, before it
    handles SIGINT itself) printed a KeyboardInterrupt traceback."""
    import smp.cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt
    monkeypatch.setitem(smp.cli._NO_CONFIG, "report", interrupted)
    assert main(["report", "anywhere"]) == 130
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["cpu", "--join", "tcp://127.0.0.1:9", "--id", "1", "--timeout", "0"],
     "smp cpu: --timeout must be a positive number of seconds, got 0"),
    (["cpu", "--join", "127.0.0.1:9", "--id", "1"],
     "smp cpu: --join '127.0.0.1:9': expected tcp://ADDR:PORT"),
    (["run", "--listen", "0.0.0.0:5555"], "smp: --listen '0.0.0.0:5555': expected tcp://"),
    (["top", "--once", "--timeout", "-1"],
     "smp top: --timeout must be a positive number of seconds, got -1")])
def test_bad_timeouts_and_endpoints_name_their_option(
        args: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err


@pytest.mark.parametrize("args, said", [
    (["report", "anywhere", "--format", "json", "--table", "locks"],
     "smp report: --table is for --format text or csv, not json"),
    (["report", "anywhere", "--weight", "count"], "smp report: --weight is for --format folded"),
    (["keys", "anywhere", "--cpus", "100"], "smp keys: --cpus '100': a machine has at most 64"),
    (["run", "--force", "--set", "run.dir=anywhere", "--set", "run.duration=0.1"],
     "smp: --force needs --run-dir"),
    (["replay", "anywhere", "--force"], "smp replay: --force needs --run-dir"),
    (["stress", "--seed", "-1", "--runs", "1", "--duration", "0.1", "--out", "anywhere"],
     "smp: stress: --seed: run.seed: must be an integer from 0 to 9223372036854775807, "
     "got -1")])
def test_options_that_would_be_ignored_or_out_of_range_are_refused(
        tmp_path: pathlib.Path, args: list[str], said: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.replace("anywhere", str(tmp_path / "anywhere")) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(said) and err.count("\n") == 1, err
    assert not (tmp_path / "anywhere").exists()


def test_run_json_and_quiet_are_one_or_the_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["run", "--json", "--quiet"])
    assert e.value.code == 2
    assert "--quiet: not allowed with argument --json" in capsys.readouterr().err


def test_ctrl_c_while_the_smp_script_imports_smp_is_exit_130_not_a_traceback() -> None:
    """The installed ``smp`` script imports its entry point's module before anything runs:
    that entry point must take a Ctrl-C during ``import smp.cli`` (it was smp.cli:main,
    whose import the script does itself, outside any handler)."""
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["smp"] == "smp.__main__:entry"
    script = ("import builtins, sys\n"
              "real = builtins.__import__\n"
              "def ctrl_c(name, *args, **kw):\n"
              "    if name == 'smp.cli':\n"
              "        raise KeyboardInterrupt\n"
              "    return real(name, *args, **kw)\n"
              "builtins.__import__ = ctrl_c\n"
              # what pip's console script does, with the entry point named in pyproject
              "from smp.__main__ import entry\n"
              "sys.exit(entry())\n")
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr
