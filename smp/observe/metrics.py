"""``smp run --metrics ADDR:PORT``: the machine's counters for Prometheus.

A launcher monitor (see ``run_machine``'s ``monitors``): it keeps the latest sample of
every CPU and of the server from the stats stream and, when scraped, turns them into the
Prometheus text format with ``prometheus_client`` (a custom collector on a registry of its
own, served by the library's HTTP server on a thread of the launcher). Scrapes read what
the stream brought; they never reach the machine.

Names follow Prometheus' conventions: ``smp_`` prefix, counters end in ``_total``, units
in the name (``_seconds``, ``_bytes``), one ``cpu`` label per simulated CPU, a ``mode``
label for the tick states (as node_exporter's ``node_cpu_seconds_total``). Times of the
machine (ticks, spin and sleep waits) are simulated; the bus wait, the lock wait and the
host processes' figures are host time. Kernel counters become ``smp_kernel_<name>_total``
(``smp_kernel_swapouts_total{cpu="0"}``). Every metric's help text says what it counts
and in which unit (kernel counters: smp/observe/counters.py).

The address is the loopback unless another is asked for explicitly (docs/DESIGN.md: nothing is
reachable from outside the host unless asked for).
"""

from __future__ import annotations

import re
import socket
import threading
from typing import Any, Callable, Iterator

import psutil
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from smp.observe.counters import kernel_counter_help
from smp.observe.monitor import MODE_ORDER, MonitorError

DEFAULT_ADDR = "127.0.0.1"


class MetricsError(MonitorError):
    """A bad --metrics address, or one that cannot be listened on."""


def parse_addr(spec: str) -> tuple[str, int]:
    """``PORT``, ``:PORT``, ``ADDR:PORT`` or ``[IPv6]:PORT``; the address defaults to
    the loopback."""
    spec = spec.strip()
    m = re.fullmatch(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)|(?P<only>\d+)",
                     spec)
    if m is None:
        raise MetricsError(f"--metrics {spec!r}: expected PORT or ADDR:PORT "
                           f"(e.g. 9100 or 127.0.0.1:9100)")
    port = int(m.group("port") or m.group("only"))
    if not 0 <= port <= 65535:
        raise MetricsError(f"--metrics {spec!r}: port {port} out of range 0..65535")
    addr = m.group("v6") or m.group("host") or DEFAULT_ADDR
    return addr, port


def check_bind(addr: str, port: int) -> None:
    """Fail early (before a machine starts) if ``addr:port`` cannot be listened on."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((addr, port))
        except OSError as e:
            raise MetricsError(f"--metrics {addr}:{port}: cannot listen: {e.strerror}") \
                from None


def _name(s: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", s).strip("_").lower()


class MachineCollector(Collector):
    """The latest samples, as metric families (a ``prometheus_client`` collector)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cpus: dict[int, dict[str, Any]] = {}
        self.counts: dict[int, int] = {}
        self.server: dict[str, Any] = {}
        self.info: dict[str, str] = {}

    def record(self, rec: dict[str, Any]) -> None:
        with self.lock:
            if rec.get("type") == "cpu" and isinstance(rec.get("cpu"), int):
                self.cpus[rec["cpu"]] = rec
                self.counts[rec["cpu"]] = self.counts.get(rec["cpu"], 0) + 1
            elif rec.get("type") == "server":
                self.server = rec

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            cpus, server = dict(self.cpus), dict(self.server)
            counts, info = dict(self.counts), dict(self.info)
        yield from self._machine(info, counts)
        yield from self._cpus(cpus)
        yield from self._kernel(cpus, server.get("counters") or {})
        yield from self._host(cpus)
        yield from self._server(server)

    def _machine(self, info: dict[str, str], counts: dict[int, int]) -> Iterator[Metric]:
        g = GaugeMetricFamily("smp_machine_info", "The running machine: its config and "
                              "seed as labels (always 1)", labels=sorted(info))
        g.add_metric([info[k] for k in sorted(info)], 1)
        yield g
        c = CounterMetricFamily("smp_stream_samples", "Samples each CPU published on the "
                                "stats stream (samples, one per run.stats_interval wall s)",
                                labels=["cpu"])
        for cpu, n in sorted(counts.items()):
            c.add_metric([str(cpu)], n)
        yield c

    def _cpus(self, cpus: dict[int, dict[str, Any]]) -> Iterator[Metric]:
        def counter(name: str, doc: str, key: str, scale: float = 1.0) -> Metric:
            f = CounterMetricFamily(name, doc, labels=["cpu"])
            for cpu, r in sorted(cpus.items()):
                f.add_metric([str(cpu)], float(r.get(key, 0) or 0) * scale)
            return f

        ticks = CounterMetricFamily("smp_cpu_ticks", "hardclock ticks charged to each mode, "
                                    "as cp_time (ticks of 1/hz simulated s)",
                                    labels=["cpu", "mode"])
        sim = GaugeMetricFamily("smp_cpu_simulated_seconds", "The CPU's simulated clock "
                                "(simulated seconds since boot)", labels=["cpu"])
        csw = CounterMetricFamily("smp_cpu_context_switches", "Context switches, voluntary "
                                  "(the thread blocked) or involuntary (preempted) (switches)",
                                  labels=["cpu", "kind"])
        ipi = CounterMetricFamily("smp_cpu_ipis", "Inter-processor interrupts sent or "
                                  "received (interrupts)", labels=["cpu", "direction"])
        bus = CounterMetricFamily("smp_cpu_bus_requests", "Requests to the machine server: "
                                  "call (waits for a reply) or post (requests)",
                                  labels=["cpu", "kind"])
        for cpu, r in sorted(cpus.items()):
            c = str(cpu)
            t = r.get("ticks") or {}
            for mode in MODE_ORDER:
                ticks.add_metric([c, mode], int(t.get(mode, 0)))
            sim.add_metric([c], float(r.get("sim", 0.0)))
            csw.add_metric([c, "voluntary"], int(r.get("ctxsw_vol", 0)))
            csw.add_metric([c, "involuntary"], int(r.get("ctxsw_invol", 0)))
            ipi.add_metric([c, "sent"], int(r.get("ipis_sent", 0)))
            ipi.add_metric([c, "received"], int(r.get("ipis_received", 0)))
            bus.add_metric([c, "call"], int(r.get("bus_calls", 0)))
            bus.add_metric([c, "post"], int(r.get("bus_posts", 0)))
        yield from (ticks, sim, csw, ipi, bus)
        yield counter("smp_cpu_lock_acquisitions", "Lock acquisitions of every class by the "
                      "CPU's threads (acquisitions)", "lock_acquires")
        yield counter("smp_cpu_lock_contested", "Lock acquisitions that found the lock held "
                      "and had to wait (acquisitions)", "lock_contested")
        yield counter("smp_cpu_spin_wait_seconds", "Time the CPU spun for spin mutexes "
                      "(simulated seconds)", "spin_wait_s")
        yield counter("smp_cpu_sleep_lock_wait_seconds", "Time the CPU's threads spent "
                      "blocked on sleep locks, summed over threads (simulated seconds)",
                      "sleep_wait_s")
        yield counter("smp_cpu_memory_requests", "Loads, stores and atomics on shared "
                      "memory (requests)", "mem_ops")
        yield counter("smp_cpu_bus_wait_seconds", "Time the CPU waited for the server's "
                      "replies; mean round trip = rate of this / rate of call requests "
                      "(host seconds)", "bus_wait_s")
        yield counter("smp_cpu_interrupts", "Interrupts taken: clock, IPIs, lock grants "
                      "(interrupts)", "interrupts")

    def _kernel(self, cpus: dict[int, dict[str, Any]],
                described: dict[str, Any]) -> Iterator[Metric]:
        # every counter the kernel registered, from the start (0 until it counts: a CPU's
        # sample holds only what it has counted), and any other it counts
        seen = {k for r in cpus.values() for k, v in (r.get("kernel") or {}).items()
                if isinstance(v, int) and not isinstance(v, bool)}
        for k in sorted(seen | set(described.get("help") or {})):
            f = CounterMetricFamily(f"smp_kernel_{_name(k)}", kernel_counter_help(k, described),
                                    labels=["cpu"])
            for cpu, r in sorted(cpus.items()):
                v = (r.get("kernel") or {}).get(k, 0)
                if isinstance(v, int) and not isinstance(v, bool):
                    f.add_metric([str(cpu)], v)
            yield f

    def _host(self, cpus: dict[int, dict[str, Any]]) -> Iterator[Metric]:
        cpu_s = CounterMetricFamily("smp_cpu_process_cpu_seconds", "CPU time, user and "
                                    "system, of the OS process behind the simulated CPU "
                                    "(host seconds)", labels=["cpu", "pid"])
        rss = GaugeMetricFamily("smp_cpu_process_resident_memory_bytes", "Resident memory "
                                "of the OS process behind the simulated CPU (bytes)",
                                labels=["cpu", "pid"])
        for cpu, r in sorted(cpus.items()):
            pid = r.get("pid")
            if not isinstance(pid, int):
                continue
            try:
                p = psutil.Process(pid)
                with p.oneshot():
                    t = p.cpu_times()
                    mem = p.memory_info().rss
            except psutil.Error:
                continue
            cpu_s.add_metric([str(cpu), str(pid)], t.user + t.system)
            rss.add_metric([str(cpu), str(pid)], mem)
        yield from (cpu_s, rss)

    def _server(self, s: dict[str, Any]) -> Iterator[Metric]:
        if not s:
            return
        fams = {k: CounterMetricFamily(f"smp_lock_{k}", doc, labels=["lock"]) for k, doc in (
            ("acquisitions", "Acquisitions of each lock, by name (all the locks of one "
             "name together, as WITNESS counts them) (acquisitions)"),
            ("contested", "Acquisitions of the lock that found it held and waited "
             "(acquisitions)"),
            ("wait_seconds", "Time threads waited for the lock, summed over the waiting "
             "threads; counted when a wait ends; in host seconds in wall time "
             "(simulated seconds)"))}
        hold = GaugeMetricFamily("smp_lock_hold_max_seconds", "Longest hold of the lock; "
                                 "in host seconds in wall time (simulated seconds)",
                                 labels=["lock"])
        for row in s.get("locks") or []:
            name = str(row.get("name"))
            fams["acquisitions"].add_metric([name], int(row.get("acquires", 0)))
            fams["contested"].add_metric([name], int(row.get("contested", 0)))
            fams["wait_seconds"].add_metric([name], float(row.get("wait_us_total", 0)) / 1e6)
            hold.add_metric([name], float(row.get("max_hold_us", 0)) / 1e6)
        yield from (*fams.values(), hold)
        for key, doc in (("messages", "Requests the server handled (messages)"),
                         ("bad_messages", "Malformed requests the server rejected "
                          "(messages)"),
                         ("errors", "Requests that failed with an error (messages)")):
            yield CounterMetricFamily(f"smp_server_{key}", doc, value=int(s.get(key, 0)))
        swap = s.get("swap") or {}
        for key in ("reads", "writes"):
            yield CounterMetricFamily(f"smp_swap_{key}", f"Pages the swap device "
                                      f"{'read' if key == 'reads' else 'wrote'} (pages)",
                                      value=int(swap.get(key, 0)))
        vm = s.get("vm") or {}
        pages = GaugeMetricFamily("smp_vm_pages", "Physical pages by queue: free, wired, "
                                  "active, inactive, cache (the kernel's page counts) "
                                  "(pages)", labels=["state"])
        for state, role in (("free", "free"), ("wire", "wired"), ("active", "active"),
                            ("inactive", "inactive"), ("cache", "cache")):
            v = vm.get(role)
            if isinstance(v, int):
                pages.add_metric([state], v)
        yield pages
        if isinstance(vm.get("pages"), int):
            yield GaugeMetricFamily("smp_vm_page_count", "Physical pages of the machine "
                                    "(pages)", value=vm["pages"])


class MetricsExporter:
    """The launcher monitor that serves :class:`MachineCollector` over HTTP."""

    def __init__(self, addr: str, port: int,
                 log: Callable[[str], None] | None = None) -> None:
        self.addr = addr
        self.port = port
        self.log = log or (lambda line: None)
        self.collector = MachineCollector()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.collector)
        self.httpd: Any = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def started(self, live: dict[str, Any]) -> None:
        self.collector.info = {"config": str(live.get("config")),
                               "seed": str(live.get("seed"))}
        try:
            self.httpd, self.thread = start_http_server(self.port, self.addr,
                                                        registry=self.registry)
        except OSError as e:
            raise MetricsError(f"metrics: cannot listen on {self.addr}:{self.port}: "
                               f"{e.strerror}") from None
        self.port = int(self.httpd.server_address[1])
        self.log(f"metrics: serving {self.url}")

    def record(self, rec: dict[str, Any]) -> None:
        self.collector.record(rec)

    def close(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
        if self.thread is not None:
            self.thread.join(2.0)
            self.thread = None
