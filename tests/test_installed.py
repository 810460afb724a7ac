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
