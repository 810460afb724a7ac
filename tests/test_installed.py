"""The README's commands, run from an installed smp, never from the source tree.

A throwaway virtual environment (``--system-site-packages``, so the dependencies of the
shared interpreter are there) gets ``pip install --no-deps`` of a copy of this tree (a copy:
pip builds in the tree it is given, and a stale ``build/`` there could ship deleted files).
Every command then runs with the venv's ``smp`` or ``python``, with no PYTHONPATH and from a
working directory outside the tree, so nothing can come from the checkout. The runs are
short (``--set run.duration=...``) where the README's are long.

Issue 16 found three commands that worked only from a clone: ``smp bench`` (its transport
part was a script outside the package), ``python -m smp``, and ``smp stress`` started
inside a clone (its machines ran ``python -m smp.cli`` and so imported the clone).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Iterator

import pytest

import helpers

pytestmark = pytest.mark.long

IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "runs", "__pycache__",
                                ".venv", "venv", ".pytest_cache")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    """The bin/ directory of a venv with smp installed from a copy of this tree."""
    base = tmp_path_factory.mktemp("installed")
    src = base / "src"
    shutil.copytree(helpers.REPO, src, ignore=IGNORE)
    env = _env(base / "venv" / "bin")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                    str(base / "venv")], check=True, timeout=120, env=env)
    bindir = base / "venv" / "bin"
    r = subprocess.run([str(bindir / "pip"), "install", "--quiet", "--no-deps",
                        "--disable-pip-version-check", str(src)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=base)
    assert r.returncode == 0, r.stdout + r.stderr
    shutil.rmtree(src)                     # nothing can be read from the copy either
    yield bindir


def _env(bindir: pathlib.Path) -> dict[str, str]:
    env = helpers.cli_env()
    env.pop("PYTHONPATH", None)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "80"
    return env


def _run(bindir: pathlib.Path, args: list[str], cwd: pathlib.Path,
         timeout: float) -> subprocess.CompletedProcess[str]:
    """Run one command in its own process group; the group is killed if it outlives
    ``timeout`` or the test."""
    p = subprocess.Popen(args, cwd=cwd, env=_env(bindir), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate()
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def _smp(venv: pathlib.Path, *args: str, cwd: pathlib.Path,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return _run(venv, [str(venv / "smp"), *args], cwd, timeout)


@pytest.mark.timeout(400)
def test_smp_bench_runs_from_the_installed_package(venv: pathlib.Path,
                                                   tmp_path: pathlib.Path) -> None:
    """Before: ``smp bench: .../site-packages/benchmarks/transport.py: not found``."""
    r = _smp(venv, "bench", "--only", "transport", "--ops", "20", "--rounds", "1", "--json",
             cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    for key in ("lock_cycle_vs_echo", "load_vs_echo", "throughput_4cpu_vs_echo",
                "contended_vs_manager"):
        assert res[key] > 0


@pytest.mark.timeout(400)
def test_python_dash_m_smp_is_the_smp_command(venv: pathlib.Path,
                                              tmp_path: pathlib.Path) -> None:
    r = _run(venv, [str(venv / "python"), "-m", "smp", "--version"], tmp_path, 30)
    assert r.returncode == 0 and r.stdout.startswith("smp "), r.stdout + r.stderr
    r = _run(venv, [str(venv / "python"), "-m", "smp", "failpoints"], tmp_path, 30)
    assert r.returncode == 0 and "swapout_procs_p_system\t" in r.stdout


@pytest.mark.timeout(400)
def test_stress_inside_a_clone_runs_the_installed_smp(venv: pathlib.Path,
                                                      tmp_path: pathlib.Path) -> None:
    """The working directory holds another ``smp`` (as a clone beside the installed
    package does); a campaign's machines must not import it."""
    clone = tmp_path / "clone"
    (clone / "smp").mkdir(parents=True)
    (clone / "smp" / "__init__.py").write_text("")
    for name in ("__main__.py", "cli.py"):
        (clone / "smp" / name).write_text("raise SystemExit('the clone was imported')\n")
    r = _smp(venv, "stress", "--runs", "1", "--duration", "0.5", "--out",
             str(tmp_path / "campaign"), cwd=clone, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 runs, 1 without a new failure" in r.stdout
    assert "stress: 0/1 runs" in r.stderr                    # progress from the start


@pytest.mark.timeout(400)
def test_the_readme_commands_from_the_installed_package(venv: pathlib.Path,
                                                        tmp_path: pathlib.Path) -> None:
    """Every command the README lists, from the installed package. ``smp run`` (and
    ``smp top`` beside it) run with matplotlib made unimportable: the README's ``pip
    install . && smp run`` must not need the plotting extra, and ``smp plot`` must say how
    to get it."""
    work = tmp_path / "work"
    work.mkdir()
    noplot = tmp_path / "noplot" / "matplotlib"
    noplot.mkdir(parents=True)
    (noplot / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n")
    rdir = work / "runs" / "r"
    env = dict(_env(venv), PYTHONPATH=str(noplot.parent))
    run = subprocess.Popen([str(venv / "smp"), "run", "--set", "run.duration=4",
                            "--run-dir", str(rdir)], cwd=work, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           start_new_session=True)
    try:
        helpers.wait_for(lambda: (rdir / "live.json").exists() or run.poll() is not None,
                         60, "the run's live.json")
        top = _run(venv, [str(venv / "smp"), "top", str(rdir), "--once"], work, 60)
        assert top.returncode == 0, top.stderr
        assert "mem: free" in top.stdout and " @ " in top.stdout
        out, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.communicate()
    assert run.returncode == 0, out + err
    assert "Traceback" not in err
    lines = out.split("\nrun directory: ")[0].splitlines()       # the summary, then its path
    assert lines[0].startswith("cpu ") and max(len(line) for line in lines) <= 80
    assert any(line.startswith("ok: 4.0 simulated s in ") for line in lines), out

    def smp(*args: str, code: int = 0) -> str:
        r = _run(venv, [str(venv / "smp"), *args], work, 120)
        assert r.returncode == code, f"smp {' '.join(args)}: {r.stdout}{r.stderr}"
        return r.stdout + r.stderr

    r = _run(venv, [str(venv / "smp"), "plot", str(rdir)], work, 60)
    r_env_blocked = subprocess.run([str(venv / "smp"), "plot", str(rdir)], cwd=work, env=env,
                                   capture_output=True, text=True, timeout=60)
    assert r_env_blocked.returncode == 1 and "pip install 'smp[plot]'" in \
        r_env_blocked.stderr, r_env_blocked.stderr
    assert r.returncode == 0, r.stderr
    assert sorted(pathlib.Path(p).name for p in r.stdout.split()) == \
        ["cpu_utilisation.png", "lock_contention.png", "swap.png"]
    assert "ok: 4.0 simulated s" in smp("report", str(rdir))
    assert json.loads(smp("report", str(rdir), "--format", "json"))["ok"] is True
    assert smp("report", str(rdir), "--format", "csv").startswith("cpu,pid,")
    assert smp("report", str(rdir), "--table", "locks").startswith("lock ")
    assert smp("witness", str(rdir)).startswith("Sleep locks:\n0 Giant -- last acquired @ ")
    assert str(rdir / "witness.dot") in smp("witness", str(rdir), "--dot")
    assert (rdir / "witness.dot").read_text().startswith("digraph witness {")
    flame = _run(venv, [str(venv / "smp"), "flame", str(rdir)], work, 60)
    assert flame.returncode == 0 or (flame.returncode == 2 and "no lock_wait_stacks" in
                                     flame.stderr), flame.stderr     # until the kernel has them
    assert "[machine]" in smp("config") and "| `machine.cpus` |" in smp("config", "--schema")
    assert "swapout_procs_prs_new\t" in smp("failpoints")
    assert "server.key" in smp("keys", str(work / "keys"))
    assert "hostb.key" in smp("keys", str(work / "keys"), "--cpus", "2-3", "--name", "hostb")
    assert "complete" in smp("completion", "bash")
