"""Monitoring, against real machines: ``smp top`` (``--once --json`` and the live view in a
pseudo-terminal), the progress display of ``smp run``, ``--metrics`` scraped and parsed
with the official Prometheus client's parser, the time series ``stats.jsonl``, ``smp
plot`` and ``smp report --format csv|json``.

Three machines: ``live`` (the default 4-CPU machine, started with ``smp run --metrics`` as
a subprocess and stopped with SIGINT by the last of its tests; the fixture kills its
process group if a test fails first), ``finished`` (a 4-simulated-second default run, in
process; its wall time, some fifteen seconds, sets how many samples it has)
and one short ``smp run`` in an 80x24 pseudo-terminal. Screens are read with pyte, a
terminal emulator, so the tests see what a person would see on an 80x24 terminal.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pathlib
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable, Iterator

import psutil
import pyte
import pytest

import helpers
from helpers import cli, cli_cmd, cli_env, read_text, wait_for

pytestmark = pytest.mark.long

MODES = ["user", "nice", "sys", "intr", "spin", "idle"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Pty:
    """A command in an 80x24 pseudo-terminal, its screen kept by pyte."""

    def __init__(self, args: list[str], cwd: pathlib.Path, rows: int = 24,
                 cols: int = 80) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = dict(cli_env(), TERM="xterm-256color", COLUMNS=str(cols), LINES=str(rows))
        self.proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=slave,
                                     stderr=slave, start_new_session=True, close_fds=True)
        os.close(slave)
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self.seen: list[str] = []              # every screen shown, as text

    def pump(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([self.master], [], [], min(left, 0.05))
            if not r:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:                    # the child closed the terminal
                time.sleep(min(left, 0.05))
                continue
            if not data:
                return
            self.raw += data
            self.stream.feed(data)
            self.seen.append(self.text())

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def until(self, cond: Callable[[str], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = cond(self.text())
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                     f"screen:\n{self.text()}")
            if self.proc.poll() is not None:
                self.pump(0.2)
                value = cond(self.text())
                if value:
                    return value
                raise AssertionError(f"exited ({self.proc.returncode}) before {what}; "
                                     f"screen:\n{self.text()}")
            self.pump(0.2)

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.1)
        if self.proc.poll() is None:
            raise AssertionError(f"still running after {timeout} s; screen:\n{self.text()}")
        self.pump(0.1)
        return int(self.proc.returncode)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)
        os.close(self.master)


# -- a live machine -------------------------------------------------------------------------
class LiveRun:
    def __init__(self, tmp: pathlib.Path) -> None:
        self.tmp = tmp
        self.rdir = tmp / "runs" / "live"
        self.port = _free_port()
        self.err = tmp / "stderr.txt"
        with open(tmp / "stdout.txt", "w") as o, open(self.err, "w") as e:
            self.proc = subprocess.Popen(
                cli_cmd("run", "--set", "run.duration=120", "--run-dir", str(self.rdir),
                        "--metrics", f"127.0.0.1:{self.port}"),
                cwd=tmp, env=cli_env(), stdin=subprocess.DEVNULL, stdout=o, stderr=e,
                start_new_session=True)
        self.live: dict[str, Any] = {}

    def wait_live(self, timeout: float = 45) -> None:
        def ready() -> Any:
            if self.proc.poll() is not None:
                raise AssertionError(f"smp run exited early ({self.proc.returncode}): "
                                     f"{read_text(self.err)}")
            try:
                return json.loads((self.rdir / "live.json").read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                return None
        self.live = wait_for(ready, timeout, "live.json", interval=0.1)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        return int(self.proc.returncode)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRun]:
    run = LiveRun(tmp_path_factory.mktemp("live"))
    pids: list[int] = []
    try:
        run.wait_live()
        pids = [run.live["server_pid"], *run.live["cpu_pids"]]
        yield run
    finally:
        if run.proc.poll() is None:                # a test failed before the last one
            run.kill()
        for pid in pids:                           # the machine dies with its launcher
            try:
                psutil.Process(pid).wait(10)
            except (psutil.NoSuchProcess, psutil.TimeoutExpired):
                pass


@pytest.mark.timeout(90)
def test_top_once_json_shows_every_cpu_with_ticks_and_its_host_pid(live: LiveRun) -> None:
    t0 = time.monotonic()
    proc = cli(live.tmp, "top", str(live.rdir), "--once", "--json", timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    snap = json.loads(proc.stdout)
    cpus = snap["cpus"]
    assert [c["cpu"] for c in cpus] == [0, 1, 2, 3]
    assert [c["pid"] for c in cpus] == live.live["cpu_pids"]
    launcher = psutil.Process(live.live["launcher_pid"])
    children = {p.pid for p in launcher.children(recursive=True)}
    for c in cpus:
        assert sum(c["ticks_total"].values()) > 0, c
        assert sum(c["ticks"].values()) > 0, f"no ticks in the last interval: {c}"
        assert abs(sum(c["pct"].values()) - 100.0) < 0.01, c
        assert c["interval_sim_s"] > 0
        assert c["host"]["pid"] == c["pid"] and c["pid"] in children
        assert c["host"]["rss"] > 1 << 20 and c["host"]["cpu_percent"] is not None
        for key in ("ctxsw_vol_s", "ctxsw_invol_s", "locks_s", "contested_s", "spin_ms",
                    "sleep_ms", "mem_s", "rtt_us", "ipis_sent_s", "ipis_received_s"):
            assert isinstance(c[key], float) and c[key] >= 0, (key, c)
    assert sum(c["mem_s"] for c in cpus) > 0 and sum(c["locks_s"] for c in cpus) > 0
    assert any(c["rtt_us"] > 0 for c in cpus)
    locks = snap["locks"]
    assert locks, "no lock sites in the sample"
    assert set(locks[0]) >= {"max", "wait_max", "total", "wait_total", "count", "avg",
                             "wait_avg", "cnt_hold", "cnt_lock", "name"}
    waits = [r["wait_total"] for r in locks]
    assert waits == sorted(waits, reverse=True)
    assert snap["memory"]["pages"] == 512 and 0 <= snap["memory"]["free_pages"] <= 512
    assert took < 30, f"--once took {took:.1f} s"


@pytest.mark.timeout(90)
def test_top_live_view_in_an_80x24_terminal(live: LiveRun) -> None:
    # no RUN_DIR: the newest live run under ./runs (the live machine's directory)
    term = Pty(cli_cmd("top"), cwd=live.tmp)
    try:
        row = re.compile(r"^\s*([0-3])\s+(\d+\.\d)\s+(\d+\.\d)\s+(\d+\.\d)", re.M)

        def whole_frame(screen: str) -> bool:
            # (a frame is drawn in pieces: on a loaded host the rows can be up before the
            # key line at the bottom, which a look at the rows alone found still blank)
            last = screen.splitlines()[-1] if screen else ""
            return (len({m.group(1) for m in row.finditer(screen)}) == 4
                    and "q quit" in last and "s sort" in last)
        term.until(whole_frame, 20, "four CPU rows with percentages and the key line")
        screen = term.text()
        lines = screen.splitlines()
        assert len(lines) == 24
        assert "[live]" in lines[0] and "4 CPUs" in lines[0], lines[0]
        assert re.search(r"cpu\s+user\s+nice\s+sys\s+intr\s+spin\s+idle", screen)
        assert re.search(r"cpu\s+lock/s\s+cont/s\s+spin ms\s+slp ms\s+mem/s\s+rtt us\s+pid",
                         screen)
        for pid in live.live["cpu_pids"]:
            assert re.search(rf"\b{pid}\b", screen), f"host pid {pid} not shown"
        assert "total*" in screen and "cnt_hold" not in screen    # two-line headers
        term.until(lambda s: re.search(r"(Giant|sched lock|allproc)\S* @ \S+\.py:\d+", s),
                   10, "a lock row (name @ file:line)")
        for line in lines:
            assert len(line) <= 80

        term.send(b"s")                            # sort by the next column: wait_max
        term.until(lambda s: "max*" in s and "total*" not in s, 5, "the sort mark to move")
        term.send(b"p")
        term.until(lambda s: "[PAUSED]" in s.splitlines()[0], 5, "the pause mark")
        frozen = "\n".join(term.text().splitlines()[1:11])
        term.pump(2.5)                             # two refreshes: nothing may change
        assert "\n".join(term.text().splitlines()[1:11]) == frozen
        term.send(b"p")
        term.until(lambda s: "[live]" in s.splitlines()[0], 5, "the view to resume")
        term.send(b"q")
        assert term.wait(10) == 0
    finally:
        term.close()


@pytest.mark.timeout(60)
def test_metrics_serve_per_cpu_counters_in_the_prometheus_format(live: LiveRun) -> None:
    from prometheus_client.parser import text_string_to_metric_families
    url = f"http://127.0.0.1:{live.port}/metrics"

    def scrape() -> dict[str, Any]:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = resp.read().decode()
        return {f.name: f for f in text_string_to_metric_families(text)}

    fams = wait_for(lambda: (lambda f: f if "smp_cpu_ticks" in f and
                             len(f["smp_cpu_ticks"].samples) == 24 else None)(scrape()),
                    15, "per-CPU tick counters from every CPU", interval=0.5)
    for f in fams.values():
        if f.type == "counter":
            for s in f.samples:
                assert s.name.endswith(("_total", "_created")), s.name
    ticks = fams["smp_cpu_ticks"]
    assert {(s.labels["cpu"], s.labels["mode"]) for s in ticks.samples} == \
        {(str(c), m) for c in range(4) for m in MODES}
    for c in range(4):
        assert sum(s.value for s in ticks.samples if s.labels["cpu"] == str(c)) > 0
    kinds = {(s.labels["cpu"], s.labels["kind"]) for s in
             fams["smp_cpu_context_switches"].samples}
    assert kinds == {(str(c), k) for c in range(4) for k in ("voluntary", "involuntary")}
    for name in ("smp_cpu_lock_acquisitions", "smp_cpu_lock_contested",
                 "smp_cpu_memory_requests", "smp_cpu_spin_wait_seconds",
                 "smp_cpu_sleep_lock_wait_seconds", "smp_cpu_bus_wait_seconds",
                 "smp_cpu_process_cpu_seconds"):
        assert fams[name].type == "counter"
        assert {s.labels["cpu"] for s in fams[name].samples} == {"0", "1", "2", "3"}, name
    assert sum(s.value for s in fams["smp_cpu_memory_requests"].samples) > 0
    pids = {s.labels["pid"] for s in fams["smp_cpu_process_resident_memory_bytes"].samples}
    assert pids == {str(p) for p in live.live["cpu_pids"]}
    assert any(n.startswith("smp_kernel_") for n in fams)
    assert "Giant" in {s.labels["lock"] for s in fams["smp_lock_acquisitions"].samples}
    free = [s for s in fams["smp_vm_pages"].samples if s.labels["state"] == "free"]
    assert free and 0 <= free[0].value <= 512
    first = {s.labels["cpu"] + s.labels["mode"]: s.value for s in ticks.samples}
    time.sleep(1.2)
    later = {s.labels["cpu"] + s.labels["mode"]: s.value
             for s in scrape()["smp_cpu_ticks"].samples}
    assert sum(later.values()) > sum(first.values()), "counters do not move"
    assert all(later[k] >= v for k, v in first.items()), "a counter went backwards"


@pytest.mark.timeout(60)
@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="no prometheus server here (Debian: apt-get install prometheus); "
                    "the official client's parser checks the format above")
def test_a_real_prometheus_scrapes_the_run(live: LiveRun, tmp_path: pathlib.Path) -> None:
    port = _free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: smp\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{live.port}']\n")
    with open(tmp_path / "prom.log", "w") as log:
        prom = subprocess.Popen(
            ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/v1"

    def query(q: str) -> Any:
        try:
            with urllib.request.urlopen(f"{api}/query?{urllib.parse.urlencode({'query': q})}",
                                        timeout=2) as resp:
                return json.load(resp)["data"]["result"]
        except (urllib.error.URLError, ConnectionError):
            return None
    try:
        wait_for(lambda: (lambda r: r and r[0]["value"][1] == "24")(
            query("count(smp_cpu_ticks_total)")), 30, "prometheus to scrape 24 tick series",
            interval=0.5)
        with urllib.request.urlopen(f"{api}/targets", timeout=2) as resp:
            targets = json.load(resp)["data"]["activeTargets"]
        assert [(t["health"], t["lastError"]) for t in targets] == [("up", "")]
        busy = wait_for(lambda: query('sum by (cpu) (rate(smp_cpu_ticks_total{mode!="idle"}'
                                      '[3s])) / sum by (cpu) (rate(smp_cpu_ticks_total[3s]))'),
                        15, "a rate over the tick counters", interval=0.5)
        assert sorted(r["metric"]["cpu"] for r in busy) == ["0", "1", "2", "3"]
        assert all(0.0 <= float(r["value"][1]) <= 1.0 for r in busy)
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(prom.pid, signal.SIGKILL)
            prom.wait(5)


@pytest.mark.timeout(90)
def test_top_on_a_directory_without_a_live_run_exits_2(tmp_path: pathlib.Path) -> None:
    proc = cli(tmp_path, "top", str(tmp_path), "--once")
    assert proc.returncode == 2 and "not a running machine" in proc.stderr, proc.stderr
    proc = cli(tmp_path, "top", "--once")
    assert proc.returncode == 2 and "no running machine under runs/" in proc.stderr
    # what it is instead, and what to look at: nothing, an ended run, a killed one
    proc = cli(tmp_path, "top", str(tmp_path / "nowhere"), "--once")
    assert proc.returncode == 2 and "nowhere: no such directory" in proc.stderr, proc.stderr
    (tmp_path / "report.json").write_text("{}")
    proc = cli(tmp_path, "top", str(tmp_path), "--once")
    assert "the run has ended; `smp report" in proc.stderr, proc.stderr
    (tmp_path / "report.json").unlink()
    (tmp_path / "live.json").write_text('{"launcher_pid": 999999999}')
    proc = cli(tmp_path, "top", str(tmp_path), "--once")
    assert "its launcher is gone (killed" in proc.stderr, proc.stderr
    assert "smp report" not in proc.stderr


@pytest.mark.timeout(60)
def test_sigint_ends_the_live_run_with_its_series_and_no_progress_codes(live: LiveRun) -> None:
    code = live.stop()
    assert code == 130, read_text(live.err)
    assert not (live.rdir / "live.json").exists()
    err = read_text(live.err)
    assert "metrics: serving http://127.0.0.1:" in err
    assert "\x1b[" not in err, "escape codes on a stderr that is not a terminal"
    cpu = [json.loads(line) for line in (live.rdir / "stats.jsonl").read_text().splitlines()]
    cpu = [r for r in cpu if r["type"] == "cpu"]
    assert {r["cpu"] for r in cpu} == {0, 1, 2, 3}
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{live.port}/metrics", timeout=2)


# -- a finished 4-simulated-second default run ---------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("finished")
    res = helpers.run(["run.duration=4"], (), tmp)
    assert res.report["ok"], helpers.describe(res)
    return res


def _records(rdir: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in
            pathlib.Path(rdir, "stats.jsonl").read_text().splitlines()]


@pytest.mark.timeout(120)
def test_stats_series_has_a_sample_per_cpu_each_interval(finished: Any) -> None:
    recs = _records(finished.run_dir)
    by_cpu: dict[int, list[dict[str, Any]]] = {}
    for r in recs:
        if r["type"] == "cpu":
            by_cpu.setdefault(r["cpu"], []).append(r)
    assert sorted(by_cpu) == [0, 1, 2, 3]
    # a sample every 0.5 wall s: as many as the run's wall time holds, however fast the
    # host made it (a margin for the boot and the last, partial interval)
    expected = finished.report["wall_s"] / 0.5
    for cpu, rs in by_cpu.items():
        assert len(rs) >= max(3, 0.6 * expected), f"cpu {cpu}: {len(rs)} samples"
        gaps = sorted(b["wall"] - a["wall"] for a, b in zip(rs, rs[1:]))
        assert 0.4 < gaps[len(gaps) // 2] < 0.7, f"median interval {gaps[len(gaps) // 2]}"
        sims = [r["sim"] for r in rs]
        assert sims == sorted(sims) and sims[-1] > 3
        # the last sample is the CPU's state where it stopped (a panic's last moments were
        # missing from the series: the last sample was the last interval's)
        final = finished.report["cpus"][cpu]
        assert (sims[-1], rs[-1]["lock_acquires"]) == \
            (round(final["clock"]["sim_time"], 4), final["lock_acquires"]), (cpu, rs[-1])
        assert {"spin_wait_s", "sleep_wait_s", "bus_wait_s", "kernel"} <= set(rs[-1])
    assert sum(rs[-1]["spin_wait_s"] for rs in by_cpu.values()) > 0
    server = [r for r in recs if r["type"] == "server"]
    assert len(server) >= max(3, 0.6 * expected)
    assert server[-1]["vm"]["pages"] == 512
    assert server[-1]["lock_profile"] and server[-1]["locks"]


@pytest.mark.timeout(60)
def test_the_process_table_says_what_each_process_does(finished: Any) -> None:
    """`smp top`'s process view: the state of the process's thread as top shows it (it
    said RUN for every live process), and a wait channel only for one that sleeps (a
    running thread kept its last sleep's)."""
    tables = [r["procs"] for r in _records(finished.run_dir)
              if r["type"] == "server" and r.get("procs")]
    assert tables
    rows = [p for t in tables for p in t]
    asleep = [p for p in rows if p["wchan"]]
    assert asleep and all(p["state"] == p["wchan"][:6] for p in asleep), asleep[:5]
    awake = [p for p in rows if not p["wchan"]]
    assert all(p["state"] in ("RUN", "LOCK", "WAIT", "ZOMB", "START", "STOP", "SLEEP")
               or re.fullmatch(r"CPU[0-3]", p["state"]) for p in awake), awake[:5]


@pytest.mark.timeout(120)
def test_plot_writes_three_labelled_pngs(finished: Any) -> None:
    from PIL import Image
    rdir = pathlib.Path(finished.run_dir)
    proc = cli(rdir, "plot", str(rdir), timeout=90)
    assert proc.returncode == 0, proc.stderr
    files = {"cpu_utilisation.png", "lock_contention.png", "swap.png"}
    assert {pathlib.Path(line).name for line in proc.stdout.split()} == files
    contested = {lk["name"] for lk in finished.report["locks"] if lk["contested"] > 0}
    for name in files:
        path = rdir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as im:
            im.verify()                            # checksums and structure
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 400
            meta = dict(im.text)
            colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
            assert colours is None or len(colours) > 50, f"{name} looks blank"
        assert "default.toml" in meta["Title"] and "seed 1" in meta["Title"], meta
        series = json.loads(meta["Series"])
        if name == "cpu_utilisation.png":
            assert series == MODES
        elif name == "lock_contention.png":
            assert series and set(series) <= contested and len(series) <= 5
        else:
            assert {"swapouts (processes)", "swapins (processes)", "free pages"} <= set(series)


@pytest.mark.timeout(120)
def test_plot_figures_draw_each_series_with_labelled_axes(finished: Any) -> None:
    from smp.observe.plot import cpu_figure, load_series, lock_figure, swap_figure
    s = load_series(finished.run_dir)
    fig = cpu_figure(s)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4
    for ax in axes:
        assert len(ax.collections) == len(MODES)   # one stacked band per mode
        assert ax.get_ylim() == (0.0, 100.0)
    assert axes[-1].get_xlabel() == "simulated time (s)" and axes[0].get_ylabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == MODES[::-1]
    fig = lock_figure(s)
    assert all(len(ax.lines) == len(fig.smp_series) for ax in fig.axes)
    assert all(ax.get_ylabel() for ax in fig.axes)
    fig = swap_figure(s)
    free = [ln for ln in fig.axes[2].lines if ln.get_label() == "free pages"][0]
    ys = free.get_ydata()
    assert len(ys) >= 3 and min(ys) >= 0 and max(ys) <= 512


@pytest.mark.timeout(60)
def test_report_again_as_text_json_and_csv(finished: Any) -> None:
    rdir = pathlib.Path(finished.run_dir)
    text = cli(rdir, "report", str(rdir))
    assert text.returncode == 0, text.stderr
    assert re.search(r"ok: 4\.\d simulated s", text.stdout), text.stdout
    js = cli(rdir, "report", str(rdir), "--format", "json")
    assert json.loads(js.stdout) == json.loads((rdir / "report.json").read_text())
    rows = list(csv.DictReader(io.StringIO(cli(rdir, "report", str(rdir), "--format",
                                                "csv").stdout)))
    assert [int(r["cpu"]) for r in rows] == [0, 1, 2, 3]
    for r, c in zip(rows, finished.report["cpus"]):
        assert int(r["pid"]) == c["pid"] and int(r["mem_ops"]) == c["mem_ops"]
        assert abs(sum(float(r[f"pct.{m}"]) for m in MODES) - 100) < 0.1
        assert sum(int(r[f"ticks.{m}"]) for m in MODES) == sum(c["ticks"].values())
    series = list(csv.DictReader(io.StringIO(cli(rdir, "report", str(rdir), "--format", "csv",
                                                  "--table", "series").stdout)))
    assert len(series) == sum(1 for r in _records(str(rdir)) if r["type"] == "cpu")
    assert "kernel.forks" in series[-1]
    locks = list(csv.DictReader(io.StringIO(cli(rdir, "report", str(rdir), "--format", "csv",
                                                 "--table", "locks").stdout)))
    assert "Giant" in {r["name"] for r in locks}


# -- smp run on a terminal ---------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_run_on_a_terminal_shows_progress_then_the_summary(tmp_path: pathlib.Path) -> None:
    rdir = tmp_path / "rd"
    term = Pty(cli_cmd("run", "--set", "run.duration=3",
                       "--set", "run.stats_interval=0.2", "--run-dir", str(rdir)), tmp_path)
    try:
        prog = re.compile(r"sim (\d+\.\d) of 3 s .*\s(\d+)%\s+wall \d+:\d\d\s+ETA \d+:\d\d")
        # wall-time bounds with room for a loaded host (virtual time: a busy host makes
        # the run longer, never different)
        first = term.until(prog.search, 60, "the progress line")
        term.until(lambda s: len(set(re.findall(r"cpu([0-3]) .*?\d+%", s))) == 4 and
                   (lambda m: m and float(m.group(1)) > float(first.group(1)))(prog.search(s)),
                   60, "per-CPU utilisation and simulated time moving")
        assert term.wait(90) == 0
        screen = term.text()
        assert re.search(r"ok: 3\.\d simulated s", screen) and "run directory:" in screen
        assert not prog.search(screen), "the progress display outlived the run"
    finally:
        term.close()
    cpu0 = [r for r in _records(str(rdir)) if r["type"] == "cpu" and r["cpu"] == 0]
    gaps = sorted(b["wall"] - a["wall"] for a, b in zip(cpu0, cpu0[1:]))
    assert 0.15 < gaps[len(gaps) // 2] < 0.35, "run.stats_interval=0.2 not honoured"


# -- pure logic ----------------------------------------------------------------------------------
@pytest.mark.quick
def test_cpu_rates_are_differences_over_simulated_time() -> None:
    from smp.observe.monitor import cpu_rates
    a = {"cpu": 1, "sim": 1.0, "wall": 10.0, "ticks": dict.fromkeys(MODES, 0),
         "ctxsw_vol": 10, "lock_acquires": 5, "bus_calls": 100, "bus_wait_s": 0.5,
         "spin_wait_s": 0.0, "mem_ops": 0}
    b = {**a, "sim": 1.5, "wall": 11.0, "ticks": {**dict.fromkeys(MODES, 0), "sys": 30,
                                                   "idle": 10, "spin": 10},
         "ctxsw_vol": 20, "lock_acquires": 55, "bus_calls": 200, "bus_wait_s": 0.52,
         "spin_wait_s": 0.05, "mem_ops": 1000}
    r = cpu_rates(a, b)
    assert r["pct"]["sys"] == 60.0 and r["pct"]["idle"] == 20.0 and r["busy"] == 80.0
    assert r["ctxsw_vol_s"] == 20.0 and r["locks_s"] == 100.0 and r["mem_s"] == 2000.0
    assert abs(r["rtt_us"] - 200.0) < 1e-6 and abs(r["spin_ms"] - 100.0) < 1e-6


@pytest.mark.quick
@pytest.mark.parametrize("spec,want", [("9100", ("127.0.0.1", 9100)),
                                       (":9100", ("127.0.0.1", 9100)),
                                       ("0.0.0.0:80", ("0.0.0.0", 80)),
                                       ("[::1]:9100", ("::1", 9100))])
def test_metrics_address_defaults_to_the_loopback(spec: str, want: tuple[str, int]) -> None:
    from smp.observe.metrics import parse_addr
    assert parse_addr(spec) == want


@pytest.mark.quick
@pytest.mark.parametrize("spec", ["", "host", "1.2.3.4:99999", "a:b"])
def test_a_bad_metrics_address_is_refused(spec: str) -> None:
    from smp.observe.metrics import MetricsError, parse_addr
    with pytest.raises(MetricsError):
        parse_addr(spec)


@pytest.mark.timeout(30)
def test_run_refuses_a_metrics_port_in_use_before_starting(tmp_path: pathlib.Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cli(tmp_path, "run", "--metrics", str(port), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2 and "cannot listen" in proc.stderr, proc.stderr
    assert not (tmp_path / "r").exists()

