"""Fixtures of the test suite.

* ``no_orphans`` (autouse): after every test, no process that the test started may still be
  alive: no child of the pytest process (recursively), no process that carries this
  session's environment token (``helpers.TOKEN``: what ``helpers.cli_env()`` gives the
  ``smp`` subprocesses, inherited by everything they fork, so an orphan re-parented to init
  is found too), and none of the pids a test registered with ``track_pids``. Survivors get a
  short grace to finish exiting; then they are killed and the test fails.
* ``run``: ``run(cfg_overrides, sysinits=())`` boots a machine in ``tmp_path`` and returns
  its ``RunResult`` (``helpers.run`` with the test's ``tmp_path``).
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable, Sequence

import psutil
import pytest

import helpers

GRACE_S = 3.0


@pytest.fixture
def track_pids() -> list[int]:
    """Pids (of servers, CPUs) a test saw; the orphan check also checks these."""
    return []


@pytest.fixture(autouse=True)
def no_orphans(request: pytest.FixtureRequest) -> Any:
    before = {p.pid for p in helpers.survivors()}
    yield
    tracked: list[int] = []
    if "track_pids" in request.fixturenames:
        tracked = request.getfixturevalue("track_pids")
    left = [p for p in helpers.survivors(tracked) if p.pid not in before]
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


RunFn = Callable[..., Any]


@pytest.fixture
def run(tmp_path: pathlib.Path) -> RunFn:
    def _run(cfg_overrides: Sequence[str] = (), sysinits: Sequence[Any] = (),
             log: Callable[[str], None] | None = None) -> Any:
        return helpers.run(cfg_overrides, sysinits, tmp_path, log=log)
    return _run
