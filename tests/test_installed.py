"""The README's commands, run from an installed smp, never from the source tree.

A throwaway virtual environment (``--system-site-packages``, so the dependencies of the
shared interpreter are there) gets ``pip install --no-deps`` of a copy of this tree (a copy:
pip builds in the tree it is given, and a stale ``build/`` there could ship deleted files).
Every command then runs with the venv's ``smp`` or ``python``, with no PYTHONPATH and from a
working directory outside the tree, so nothing can come from the checkout. The runs are
short (``--set run.duration=...``) where the README's are long.

Issue 16 found three commands that worked only from a clone: ``smp bench`` (its transport
part was a script outside the package), ``python -m smp``, and ``smp stress`` started
inside a clone (its machines ran ``python -m smp.cli`` and so imported the clone). And the
wheel put ``kernel``, ``hw`` and ``configs`` into site-packages beside ``smp``: now they
install as ``smp.kernel``, ``smp.hw`` and ``smp.configs`` (smp/__init__.py says how), and
the README's second command, ``pip install '.[test]' && pytest``, runs a clone's tests
against the installed smp.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
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
    _clone(src)
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


def _clone(dst: pathlib.Path) -> None:
    """A copy of this tree as a clone has it: the links smp/kernel, smp/hw and
    smp/configs stay links."""
    shutil.copytree(helpers.REPO, dst, ignore=IGNORE, symlinks=True)


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
    assert "1 run, 1 without a new failure" in r.stdout
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
    with helpers.session([str(venv / "smp"), "run", "--set", "run.duration=4", "--run-dir",
                          str(rdir)], work, env) as run:
        helpers.wait_for(lambda: (rdir / "live.json").exists() or run.poll() is not None,
                         60, "the run's live.json")
        top = _run(venv, [str(venv / "smp"), "top", str(rdir), "--once"], work, 60)
        assert top.returncode == 0, top.stderr
        assert "mem: free" in top.stdout and " @ " in top.stdout
        out, err = run.communicate(timeout=120)
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
    witness = smp("witness", str(rdir))
    assert witness.startswith("Sleep locks:\n0 Giant -- last acquired @ ")
    # sites are named relative to the kernel's tree, smp/kernel/ in site-packages (Giant
    # taken back after a sleep names msleep's caller the same way)
    site = r"(kern|vm|userland)/\w+\.py:\d+"
    assert re.match(rf"Sleep locks:\n0 Giant -- last acquired @ {site}"
                    rf"( \(msleep, called from {site}\))?\n", witness), witness
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


# what the installed distribution is made of, and where the names it imports come from
_INSTALLED = """
import importlib.metadata, json, os, sysconfig
import smp.hw.bus, smp.kernel.conf
from smp.observe.findings import _kernel_file
from smp.run.config import default_config_path
dist = importlib.metadata.distribution("smp")
print(json.dumps({
    "top": sorted({f.parts[0] for f in dist.files if f.parts[0] != ".."}),
    "top_level": dist.read_text("top_level.txt").split(),
    "site_packages": os.path.realpath(sysconfig.get_path("purelib")),
    "listing": sorted(os.listdir(sysconfig.get_path("purelib"))),
    "files": [smp.kernel.conf.__file__, smp.hw.bus.__file__, str(default_config_path())],
    "kernel_source": _kernel_file("vm/vm_glue.py") is not None,
}))
"""


@pytest.mark.timeout(400)
def test_only_smp_goes_into_site_packages(venv: pathlib.Path, tmp_path: pathlib.Path) -> None:
    """Before: the wheel installed top-level ``kernel``, ``hw`` and ``configs`` packages,
    which anything else so named collides with. Now one name, ``smp``; the kernel, the
    hardware and the configs are in it and are found there by what reads them."""
    r = _run(venv, [str(venv / "python"), "-c", _INSTALLED], tmp_path, 60)
    assert r.returncode == 0, r.stdout + r.stderr
    got = json.loads(r.stdout)
    assert got["top"] == ["smp", "smp-0.1.0.dist-info"] and got["top_level"] == ["smp"], got
    # (the venv's own site-packages: the shared interpreter's, which it sees too, may
    # hold anything, an smp installed before this change among it)
    assert not {"kernel", "hw", "configs"} & set(got["listing"]), got["listing"]
    site = pathlib.Path(got["site_packages"])
    assert [str(pathlib.Path(f).resolve().relative_to(site)) for f in got["files"]] == \
        ["smp/kernel/conf.py", "smp/hw/bus.py", "smp/configs/default.toml"]
    assert got["kernel_source"] is True                 # known findings read the kernel's lines


@pytest.mark.timeout(600)
def test_the_readme_test_command_from_the_installed_package(venv: pathlib.Path,
                                                            tmp_path: pathlib.Path) -> None:
    """``pip install '.[test]' && pytest`` in a clone: the tests import the installed smp
    (``pytest`` puts the clone's tests/, not the clone, on sys.path), whose kernel, hardware
    and configs are ``smp.kernel``, ``smp.hw`` and ``smp.configs`` in site-packages. A few
    quick files of the suite stand for it (the whole suite runs from the source tree), with
    one more test that says which smp they imported. ``python -P -m pytest`` is the
    ``pytest`` that pip would install: this venv sees the shared interpreter's pytest, so pip
    installs no script of its own, and ``-P`` keeps the working directory off sys.path as
    the script does."""
    clone = tmp_path / "clone"
    _clone(clone)
    r = _run(venv, [str(venv / "pip"), "install", "--quiet", "--no-deps",
                    "--disable-pip-version-check", ".[test]"], clone, 300)
    assert r.returncode == 0, r.stdout + r.stderr
    (clone / "tests" / "test_which_smp.py").write_text(
        "import smp.configs, smp.hw, smp.kernel\n\n\n"
        "def test_the_installed_smp_is_imported():\n"
        "    for m in (smp, smp.kernel, smp.hw, smp.configs):\n"
        "        assert 'site-packages' in m.__file__, m.__file__\n")
    r = _run(venv, [str(venv / "python"), "-P", "-m", "pytest", "-q", "tests/test_which_smp.py",
                    "tests/test_architecture.py", "tests/test_findings.py",
                    "tests/test_cmap.py", "tests/test_config.py"], clone, 300)
    assert r.returncode == 0 and " passed" in r.stdout and "failed" not in r.stdout, \
        r.stdout[-3000:] + r.stderr[-3000:]
