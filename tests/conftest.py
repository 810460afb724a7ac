"""Fixtures of the test suite.

* ``no_orphans`` (autouse): after every test, no process that the test started may still be
  alive: no child of the pytest process (recursively), no process that carries this
  session's environment token (``helpers.TOKEN``: what ``helpers.cli_env()`` gives the
  ``smp`` subprocesses, inherited by everything they fork, so an orphan re-parented to init
  is found too), and none of the pids a test registered with ``track_pids``. Survivors get a
  short grace to finish exiting; then they are killed and the test fails.
  (Tests marked ``quick`` get only the cheap check of our own children.)
* ``no_leaked_signal_state`` (autouse): a test must leave the signal wakeup fd and the
  SIGINT/SIGTERM handlers as it found them (the launcher borrows them during a run).
* ``run``: ``run(cfg_overrides, sysinits=())`` boots a machine in ``tmp_path`` and returns
  its ``RunResult``; it is ``helpers.run(cfg_overrides, sysinits=(), tmp_path)`` with the
  test's ``tmp_path``, which code outside a fixture can call directly.

Timeouts (pytest-timeout) bound a test that has the host to itself; the suite runs in
xdist workers (pyproject's addopts: ``-n 2``), which share the host, so each test's bound
is multiplied by their number (:func:`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import os
import pathlib
import signal
from typing import Any, Callable, Sequence

import psutil
import pytest

import helpers

GRACE_S = 3.0


def timeout_factor() -> int:
    """How many xdist workers share the host (1 without xdist): a test's timeout is for a
    host of its own."""
    try:
        return max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    except ValueError:
        return 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    factor = timeout_factor()
    if factor == 1:
        return
    default = float(config.getini("timeout") or 0)
    for item in items:
        marker = item.get_closest_marker("timeout")
        bound = float(marker.args[0]) if marker is not None and marker.args else default
        if bound > 0:
            item.add_marker(pytest.mark.timeout(bound * factor), append=False)


@pytest.fixture
def track_pids() -> list[int]:
    """Pids (of servers, CPUs) a test saw; the orphan check also checks these."""
    return []


@pytest.fixture(autouse=True)
def no_orphans(request: pytest.FixtureRequest, track_pids: list[int]) -> Any:
    # Tests marked quick start no machine: checking our children is enough for them (the
    # scan of every process's environment costs some 40 ms).
    full = request.node.get_closest_marker("quick") is None
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in helpers.survivors(track_pids, tagged=full) if p.pid not in before]
    if not left:
        return
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    if not alive:
        return
    names = []
    for p in alive:
        try:
            names.append(f"pid {p.pid} ({' '.join(p.cmdline())[:80]!r}, "
                         f"parent {p.ppid()})")
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=GRACE_S)
    pytest.fail(f"{len(names)} process(es) outlived the test and were killed: "
                + "; ".join(names), pytrace=False)


@pytest.fixture(autouse=True)
def no_leaked_signal_state() -> Any:
    """The launcher borrows the process's SIGINT/SIGTERM handlers and its signal wakeup fd
    while a machine runs; a test must leave them as it found them. Otherwise a later test
    inherits a wakeup fd that is closed, or reused by some other file: signals then write
    into it, and restoring it raises "fd N must be in non-blocking mode". The state is
    restored and the test fails."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield
    left = signal.set_wakeup_fd(wakeup)
    bad = []
    if left != wakeup:
        bad.append(f"the signal wakeup fd was left at {left} (was {wakeup})")
    for sig, h in handlers.items():
        if signal.getsignal(sig) is not h:
            bad.append(f"the {sig.name} handler was left changed")
            signal.signal(sig, h)
    if bad:
        pytest.fail("; ".join(bad) + " (restored)", pytrace=False)


RunFn = Callable[..., Any]


@pytest.fixture
def run(tmp_path: pathlib.Path) -> RunFn:
    def _run(cfg_overrides: Sequence[str] = (), sysinits: Sequence[Any] = (),
             log: Callable[[str], None] | None = None) -> Any:
        return helpers.run(cfg_overrides, sysinits, tmp_path, log=log)
    return _run
