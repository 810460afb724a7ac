"""Run configuration: every parameter declared once, every config file checked strictly.

A run is described by a TOML file (``configs/default.toml`` and its siblings) plus
``--set section.name=value`` overrides from the command line. This module is the one
place that knows what may appear in either.

Lineage
-------
* gem5 declares each parameter once in code, with a type, a default and help text
  (``Param.Bool(False, "...")``), and dumps the resolved tree beside the results so that
  runs can be diffed. We keep the declaration (:class:`Param`, :data:`PARAMS`) and the
  dump (:meth:`Config.to_toml`), but a config is data, not code: it can be checked
  without running it.
* sys161 reads ``slot device k=v`` lines, accepts ``-C`` overrides of them, and dies on
  an unknown option. We keep the strictness: an unknown section or key, a wrong type,
  an unknown size unit or a value out of range stops the run with one line that names
  the file, the key and what is allowed (:class:`ConfigError`).
* FreeBSD tunables keep their sysctl names and descriptions (``vm.swap_idle_threshold1``,
  "Guaranteed swapped in time for a process").

Rules
-----
* A parameter that a file leaves out takes its declared default, so a file need only
  say what differs. ``configs/default.toml`` spells every default out for readers; a
  test keeps it equal to the declarations here.
* Values are resolved at load: sizes become int bytes, floats are floats, lists become
  tuples. Code reading a :class:`Config` never sees ``"16M"``.
* A :class:`Config` is immutable; :meth:`Config.with_values` returns a new, revalidated
  one (for example a stress campaign varying ``run.seed``).
* The declarations are checked at import: every default must pass its own type and
  range, so PARAMS (and the table schema_markdown() makes of it) cannot claim what the
  code does not accept.

Not checked here: rules that need knowledge owned elsewhere, such as memory being a whole
number of pages (``kernel/param.py``) or fail point names existing (the fail point
registry, ``smp failpoints``).
"""

from __future__ import annotations

import importlib.resources
import math
import os
import pathlib
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from types import MappingProxyType
from typing import Any, Literal

ParamType = Literal["int", "float", "bool", "str", "size", "duration", "list[str]"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# "16M", "16MB", "16MiB", "16m", "4096", "4096B": units are binary whatever the spelling.
_SIZE_RE = re.compile(r"(\d+)\s*(?:([kmg])(?:ib|b)?|b)?", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "k": KiB, "m": MiB, "g": GiB}


def parse_size(value: object) -> int | None:
    """Return *value* (int bytes, or a string with an optional K/M/G suffix) in bytes,
    or None if it is not a size. Range is not checked here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value.strip())
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(m.group(1)) * _SIZE_UNITS[unit]
    return None


# "1ms", "250us", "2s", "40000ns", or a bare integer of nanoseconds: simulated durations.
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|ms|s)?", re.IGNORECASE)
_DURATION_UNITS = {None: 1, "ns": 1, "us": 1000, "ms": 1_000_000, "s": 1_000_000_000}


def parse_duration(value: object) -> int | None:
    """Return *value* (int ns, or a string such as "1ms") in integer nanoseconds, or None
    if it is not a duration. Range is not checked here."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _DURATION_RE.fullmatch(value.strip())
        if m:
            unit = m.group(2).lower() if m.group(2) else None
            return int(round(float(m.group(1)) * _DURATION_UNITS[unit]))
    return None


def format_duration(ns: int) -> str:
    """The shortest exact s/ms/us spelling of *ns* ("1ms"), or plain nanoseconds."""
    for suffix, unit in (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1000)):
        if ns and ns % unit == 0:
            return f"{ns // unit}{suffix}"
    return f"{ns}ns"


def format_size(nbytes: int) -> str:
    """The shortest exact K/M/G spelling of *nbytes* ("16M"), or plain bytes."""
    for suffix, unit in (("G", GiB), ("M", MiB), ("K", KiB)):
        if nbytes and nbytes % unit == 0:
            return f"{nbytes // unit}{suffix}"
    return str(nbytes)


@dataclass(frozen=True)
class Param:
    """One configuration parameter: its key ("section.name"), type, default, unit and
    one-line description, plus the range (*min*, *max*) or *choices* it allows."""

    key: str
    type: ParamType
    default: Any
    unit: str
    desc: str
    min: float | None = None
    max: float | None = None
    choices: tuple[str, ...] | None = None

    @property
    def section(self) -> str:
        return self.key.partition(".")[0]

    @property
    def name(self) -> str:
        return self.key.partition(".")[2]

    def coerce(self, value: object) -> Any:
        """Return *value* resolved to this parameter's Python type (size: int bytes,
        float: float, list[str]: tuple). Raise ValueError("must be ..., got ...")."""
        resolved: Any = None
        if isinstance(value, bool):  # TOML true/false, never a number
            resolved = value if self.type == "bool" else None
        elif self.type == "int" and isinstance(value, int):
            resolved = value
        elif self.type == "float" and isinstance(value, (int, float)):
            resolved = float(value)
        elif self.type == "size":
            resolved = parse_size(value)
        elif self.type == "duration":
            resolved = parse_duration(value)
        elif self.type == "str" and isinstance(value, str):
            resolved = value if self.choices is None or value in self.choices else None
        elif self.type == "list[str]" and isinstance(value, (list, tuple)):
            resolved = tuple(value) if all(isinstance(x, str) for x in value) else None
        lo, hi = self.min, self.max  # compared so that NaN is out of every range
        if resolved is None or (lo is not None and hi is not None and not lo <= resolved <= hi):
            raise ValueError(f"must be {self._allowed_phrase()}, got {_show(value)}")
        return resolved

    def _range(self) -> str:
        """"1 to 64", "1M to 4G", or "" for a parameter without a range."""
        if self.min is None or self.max is None:
            return ""
        if self.type == "size":
            return f"{format_size(int(self.min))} to {format_size(int(self.max))}"
        if self.type == "duration":
            return f"{format_duration(int(self.min))} to {format_duration(int(self.max))}"
        return f"{_number(self.min)} to {_number(self.max)}"

    def _allowed_phrase(self) -> str:
        unit = f" ({self.unit})" if self.unit else ""
        span = f" from {self._range()}" if self._range() else ""
        if self.type == "int":
            return f"an integer{span}{unit}"
        if self.type == "float":
            return f"a number{span}{unit}"
        if self.type == "size":
            return f'a size{span} (bytes, or a string such as "16M")'
        if self.type == "duration":
            return f'a duration{span} (ns, or a string such as "1ms", "250us")'
        if self.type == "bool":
            return "true or false"
        if self.type == "str" and self.choices:
            return "one of " + ", ".join(_toml_value(c) for c in self.choices)
        return "a list of strings" if self.type == "list[str]" else "a string"

    def allowed(self) -> str:
        """What the parameter accepts, in a few words (for tables and help)."""
        if self.choices:
            return ", ".join(self.choices)
        return self._range() or {"bool": "true, false", "str": "any string"}.get(
            self.type, "list of strings")


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


PARAMS: tuple[Param, ...] = (
    Param("machine.cpus", "int", 4, "", "number of simulated CPUs (one OS process each)",
          min=1, max=64),
    Param("machine.memory", "size", "2M", "bytes", "simulated physical memory",
          min=1 * MiB, max=4 * GiB),
    Param("machine.swap", "size", "32M", "bytes", "size of the simulated swap device",
          min=0, max=16 * GiB),
    Param("machine.swap_latency_us", "int", 10000, "sim us",
          "how long a read from the swap device takes (the reader sleeps meanwhile)",
          min=0, max=1_000_000),
    Param("machine.swap_write_latency_us", "int", 0, "sim us",
          "how long a write to the swap device takes (the pageout daemon sleeps meanwhile, "
          "the page stays busy)", min=0, max=1_000_000),
    Param("machine.hz", "int", 100, "Hz", "hardclock ticks per simulated second",
          min=10, max=1000),
    Param("machine.time", "str", "virtual", "",
          "how simulated time passes: virtual (each CPU's clock advances by the work it does, "
          "the same whatever the host's load; runs can be replayed) or wall (the wall clock, "
          "scaled by machine.speed)", choices=("virtual", "wall")),
    Param("machine.quantum", "duration", "10ms", "sim time",
          "virtual time: how far a running CPU may run ahead of the slowest one before it "
          "waits for the others (the skew between CPUs' clocks; an idle CPU jumps to its "
          "next tick only once no other CPU can act before it)",
          min=10_000, max=1_000_000_000),
    Param("machine.speed", "float", 0.5, "sim s / wall s",
          "wall time only: simulated seconds that pass per wall-clock second",
          min=0.01, max=100),
    Param("machine.transport", "str", "ipc", "",
          "how CPUs reach the server: ipc in a private 0700 directory, or tcp on 127.0.0.1",
          choices=("ipc", "tcp")),
    Param("machine.lines", "bool", True, "",
          "a CPU that keeps taking a mutex keeps its lock word's line and takes it again "
          "without a round trip until another CPU asks (false: every acquire asks the server)"),
    Param("machine.server_spin", "duration", "500us", "wall time",
          "how long the server keeps looking for the next request before it sleeps: the "
          "machine is bound by its round trips' latency, and a sleeping server adds a "
          "wake-up to each (0: sleep at once, for a host shared with other work)",
          min=0, max=100_000_000),
    Param("machine.kmem_objects", "int", 262144, "objects",
          "kernel memory: the most kernel objects alive at once besides one vm_page per page "
          "frame (struct proc, thread, vm_object, ...); running out panics the machine",
          min=64, max=1 << 24),
    Param("run.duration", "float", 20.0, "sim s", "simulated seconds to run",
          min=0.1, max=86400),
    Param("run.record", "bool", True, "",
          "record the run (the order of every shared operation and where each CPU took "
          "each event) in RUN_DIR/schedule.smpr, for `smp replay` and `smp trace`; "
          "virtual time only"),
    Param("run.seed", "int", 1, "", "the one seed that all of the run's randomness derives from",
          min=0, max=2**63 - 1),
    Param("run.dir", "str", "runs", "", "where run directories are created (`<dir>/<id>/`)"),
    Param("run.stats_interval", "float", 0.5, "wall s", "interval of the stats time series",
          min=0.05, max=60),
    Param("run.halt_timeout", "float", 5.0, "wall s",
          "how long to wait for the machine's processes to stop before killing them",
          min=0.5, max=60),
    Param("cost.call", "duration", "40us", "sim time",
          "virtual time: what a request that waits for a value costs (a load, an acquire); "
          "about what one cost at speed 0.5 on an idle 2-core host, so that the workload's "
          "times keep the meaning they were tuned with", min=0, max=1_000_000_000),
    Param("cost.post", "duration", "10us", "sim time",
          "virtual time: what a request that waits for nothing costs (a store, a release): "
          "the CPU only queues it", min=0, max=1_000_000_000),
    Param("cost.page", "duration", "60us", "sim time",
          "virtual time: what a request that moves a whole page costs (zero, copy, "
          "checksum, a swap device transfer's CPU part)", min=0, max=1_000_000_000),
    Param("cost.switch", "duration", "20us", "sim time",
          "virtual time: what a context switch costs", min=0, max=1_000_000_000),
    Param("cost.intr", "duration", "10us", "sim time",
          "virtual time: what taking an interrupt costs (a clock tick, an IPI, a grant)",
          min=0, max=1_000_000_000),
    Param("workload.kthreads", "int", 1, "", "lock-exercising kernel threads per CPU",
          min=0, max=64),
    Param("workload.objects", "int", 8, "",
          "shared objects, each with its own sleep mutex, that the kthreads contend on",
          min=1, max=4096),
    Param("workload.hold_us", "int", 50, "sim us",
          "simulated time a kthread works while holding an object's lock",
          min=0, max=1_000_000),
    Param("workload.think_us", "int", 200, "sim us",
          "simulated time a kthread works between lock operations", min=0, max=1_000_000),
    Param("workload.sleep_prob", "float", 0.1, "",
          "probability that a kthread sleeps on a channel after a round "
          "(woken by another CPU's kthread)", min=0, max=1),
    Param("user.procs_per_cpu", "int", 4, "",
          "user processes that each CPU's init keeps running (0: no user land)",
          min=0, max=256),
    Param("user.forker", "int", 3, "", "weight of the forker program (fork, wait, exit)",
          min=0, max=1000),
    Param("user.sleeper", "int", 4, "",
          "weight of the sleeper program (sleeps long enough to be swapped out)",
          min=0, max=1000),
    Param("user.hog", "int", 2, "", "weight of the memory hog program (memory pressure)",
          min=0, max=1000),
    Param("user.sharer", "int", 1, "",
          "weight of the sharer program (rfork RFMEM, then rfork without RFPROC)",
          min=0, max=1000),
    Param("user.debugger", "int", 2, "",
          "weight of the debugger program (attach: PHOLD processes, read their U-area)",
          min=0, max=1000),
    Param("user.syscaller", "int", 2, "",
          "weight of the syscaller program (useracc, vslock/vsunlock, kernacc)",
          min=0, max=1000),
    Param("user.napper", "int", 0, "",
          "weight of the napper program (naps a tick or three at a time: a process "
          "that is always about to wake; stress)", min=0, max=1000),
    Param("user.hog_pages", "int", 240, "pages",
          "pages of anonymous memory each memory hog maps and touches", min=1, max=1 << 20),
    Param("user.sleep_s", "float", 9.0, "sim s",
          "how long a sleeper sleeps between wakeups", min=0.01, max=3600),
    Param("user.attach_after_s", "float", 4.0, "sim s",
          "a debugger attaches to a process swapped out at least this long (sooner ones "
          "are left alone, so their U-areas get laundered to swap)", min=0, max=3600),
    Param("user.compute_us", "int", 2000, "sim us",
          "simulated user time a program computes between system calls",
          min=0, max=10_000_000),
    Param("kern.phold", "str", "not_inmem", "",
          "when _PHOLD swaps a process in: not_inmem (whenever PS_INMEM is clear, as FreeBSD "
          "later fixed it) or first_hold (only when the hold count goes 0->1, the 2002 proc.h; "
          "see finding F1)", choices=("not_inmem", "first_hold")),
    Param("kern.kthread_placement", "str", "spread", "",
          "where the kernel's daemons run (swapper, pagedaemon, vmdaemon, schedcpu, in that "
          "order): spread (one per CPU in turn from the last, so that they race each other "
          "and the user threads, as any CPU could run any of them in 5.0) or cpu0 (all on "
          "the boot CPU)", choices=("spread", "cpu0")),
    Param("vm.swap_idle_threshold1", "int", 2, "sim s",
          "guaranteed swapped-in time for a process (sysctl)", min=0, max=1_000_000),
    Param("vm.swap_idle_threshold2", "int", 10, "sim s",
          "time a process can sleep before it is swapped out when idle swapping is on "
          "(sysctl)", min=0, max=1_000_000),
    Param("vm.swap_enabled", "bool", True, "",
          "allow the pageout daemon to request swapouts (sysctl)"),
    Param("vm.swap_idle_enabled", "bool", False, "",
          "also swap out processes idle longer than swap_idle_threshold2 (sysctl)"),
    Param("debug.witness", "bool", True, "",
          "check lock order as WITNESS did in 2002 (reversals are findings)"),
    Param("debug.deadlock", "bool", True, "",
          "panic on a cycle in the wait-for graph, naming every edge"),
    Param("debug.lockkeys", "bool", True, "",
          "report loads and stores of a field without the lock its key names"),
    Param("debug.spin_max_s", "float", 5.0, "sim s",
          "panic when a spin lock is held longer than this (0: never; wall s in wall time)",
          min=0, max=3600),
    Param("debug.liveness_s", "float", 5.0, "sim s",
          "the liveness detector's bound: a thread asleep on no sleep queue, a swap-in "
          "request not served, a lock waited for, this long, is a finding; at the end of "
          "a run a lost thread is one at once (0: off; wall s in wall time)",
          min=0, max=3600),
    Param("debug.inflight", "bool", True, "",
          "check at each store the states the kernel registered as never coexisting "
          "(PS_SWAPPING with PS_SWAPPINGIN, PS_INMEM without the U-area mapped and wired, "
          "a page reused, mapped or accessed while a mapping from before its free stays): "
          "a finding with both sites"),
    Param("debug.watchdog_s", "float", 5.0, "s",
          "report a CPU that sends nothing for this many wall seconds (not one that the "
          "host did not run, its process using no processor time, up to 10 s), and a thread "
          "runnable for this many simulated seconds without running (0: never)",
          min=0, max=3600),
    Param("debug.chaos", "str", "off", "",
          "seeded random stalls at lock operations and shared accesses, and yields at "
          "the kernel's safe points, to widen race windows (a stall: up to 60 us at low, "
          "400 us at high in virtual time; 300 us and 2 ms of host time in wall time)",
          choices=("off", "low", "high")),
    Param("debug.chaos_seed", "int", 0, "",
          "the chaos random seed (0: derived from run.seed)", min=0, max=2**63 - 1),
    Param("debug.fail_points", "list[str]", [], "",
          "race guards of the seed to switch off (names from `smp failpoints`)"),
    Param("debug.coverage", "bool", False, "",
          "count the lines of the kernel each CPU runs: the run directory gets "
          "vm_glue.c.gcov (the C, each line with how often it ran) and coverage.info "
          "(lcov, every kernel file); costs wall time, not simulated time"),
)

PARAM_BY_KEY: dict[str, Param] = {p.key: p for p in PARAMS}

# Keys that mean something only in wall time: a config that sets one for a virtual-time
# run is refused (it would be silently ignored).
WALL_ONLY = ("machine.speed",)

# Section -> its parameter names, in declaration order (the order error messages list).
_SECTIONS: dict[str, tuple[str, ...]] = {}
for _p in PARAMS:
    _SECTIONS[_p.section] = _SECTIONS.get(_p.section, ()) + (_p.name,)


def _check_declarations() -> dict[str, Any]:
    """Check PARAMS against itself and return every key's resolved default."""
    if len(PARAM_BY_KEY) != len(PARAMS):
        raise RuntimeError("smp.run.config: a parameter is declared twice")
    defaults: dict[str, Any] = {}
    for p in PARAMS:
        ranged = p.type in ("int", "float", "size", "duration")
        if (not re.fullmatch(r"[a-z]+\.[a-z0-9_]+", p.key) or not p.desc or "\n" in p.desc
                or ranged != (p.min is not None and p.max is not None)
                or (p.choices is not None and p.type != "str")):
            raise RuntimeError(f"smp.run.config: bad declaration of {p.key!r}")
        try:
            defaults[p.key] = p.coerce(p.default)
        except ValueError as e:
            raise RuntimeError(f"smp.run.config: default of {p.key} {e}") from None
    return defaults


_DEFAULTS: Mapping[str, Any] = MappingProxyType(_check_declarations())


class ConfigError(Exception):
    """A config that cannot be used. *file* is where it came from (a path, or "--set"
    for a command-line override); *key* is the parameter, if one is to blame; *message*
    is the text after the file name, naming the key itself. ``str(e)`` is one line."""

    def __init__(self, file: str, key: str | None, message: str) -> None:
        super().__init__(file, key, message)
        self.file = file
        self.key = key
        self.message = " ".join(message.splitlines())

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def _unknown_key(key: str) -> str:
    section, dot, _ = key.partition(".")
    if dot and section in _SECTIONS:
        return f'unknown key "{key}" (allowed in [{section}]: {", ".join(_SECTIONS[section])})'
    return f'unknown key "{key}" (keys are section.name; sections: {", ".join(_SECTIONS)})'


def _resolve(items: Mapping[str, object], origin: str) -> dict[str, Any]:
    """Resolve dotted keys to checked values; the first bad one raises ConfigError."""
    out: dict[str, Any] = {}
    for key, value in items.items():
        param = PARAM_BY_KEY.get(key)
        if param is None:
            raise ConfigError(origin, key, _unknown_key(key))
        try:
            out[key] = param.coerce(value)
        except ValueError as e:
            raise ConfigError(origin, key, f"{key}: {e}") from None
    return out


def _flatten(doc: Mapping[str, object], origin: str) -> dict[str, object]:
    """Turn a parsed TOML document into dotted keys, rejecting anything undeclared."""
    out: dict[str, object] = {}
    for section, table in doc.items():
        if section not in _SECTIONS:
            what = (f"unknown section [{section}]" if isinstance(table, dict)
                    else f'unknown key "{section}" at top level')
            raise ConfigError(origin, section, f"{what} (sections: {', '.join(_SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(origin, section,
                              f"{section}: must be a table [{section}], got {_show(table)}")
        for name, value in table.items():
            out[f"{section}.{name}"] = value
    return out


class Config:
    """A resolved, validated, immutable configuration: ``cfg["machine.cpus"]``.

    Built by :func:`load_config` or :meth:`with_values`. Every declared key has a value
    (its default if the file left it out); an undeclared key is a programming error and
    raises KeyError. Two Configs are equal when their values are, whatever their source.
    """

    __slots__ = ("_source", "_values")
    _values: Mapping[str, Any]
    _source: str

    def __init__(self, values: Mapping[str, Any], source: str) -> None:
        if values.keys() != PARAM_BY_KEY.keys():
            raise ValueError("Config needs exactly the declared keys; use load_config")
        object.__setattr__(self, "_values", MappingProxyType({k: values[k] for k in PARAM_BY_KEY}))
        object.__setattr__(self, "_source", source)

    @property
    def source(self) -> str:
        """Where the config came from: a path (the packaged default's, for None)."""
        return self._source

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Config is immutable; use with_values()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Config is immutable")

    def __getitem__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise KeyError(f"no config parameter {key!r}") from None

    def get(self, key: str) -> Any:
        """Same as ``cfg[key]``: no default, since every declared key has a value."""
        return self[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and self._values == other._values

    def __hash__(self) -> int:
        return hash(tuple(self._values.items()))

    def __repr__(self) -> str:
        return f"Config(source={self.source!r}, {dict(self._values)!r})"

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {name: value}}`` with sorted keys; lists are fresh lists."""
        tree: dict[str, dict[str, Any]] = {}
        for key in sorted(self._values):
            section, _, name = key.partition(".")
            value = self._values[key]
            tree.setdefault(section, {})[name] = list(value) if isinstance(value, tuple) else value
        return tree

    def with_values(self, mapping: Mapping[str, object], origin: str = "with_values") -> Config:
        """A new Config with the dotted keys of *mapping* replaced, checked as a file's
        values are (sizes may be "32M"); errors name *origin*. The source is kept."""
        cfg = Config({**self._values, **_resolve(mapping, origin)}, self.source)
        _check_together(cfg, origin)
        return cfg

    def to_toml(self, extra: Mapping[str, Mapping[str, object]] | None = None) -> str:
        """The resolved config as TOML: every parameter, sections and keys sorted, sizes
        in bytes, units as comments. *extra* adds keys such as ``{"run": {"version": v}}``;
        an extra key that is also a parameter raises ValueError. With extras the text is
        a record, not a loadable config: load_config rejects the undeclared keys."""
        tree: dict[str, dict[str, Any]] = self.as_dict()
        if self._values["machine.time"] == "virtual":
            for key in WALL_ONLY:                 # retired in virtual time
                sec, _, name = key.partition(".")
                tree[sec].pop(name, None)
        for section, table in (extra or {}).items():
            dest = tree.setdefault(section, {})
            for name, value in table.items():
                if name in dest:
                    raise ValueError(f"to_toml: extra {section}.{name} would replace a parameter")
                dest[name] = value
        lines = [
            "# Resolved smp configuration: every parameter, defaults included, sorted.",
            f"# source: {_toml_string(self.source)}",
        ]
        for section in sorted(tree):
            lines += ["", f"[{_toml_key(section)}]"]
            for name in sorted(tree[section]):
                value = tree[section][name]
                line = f"{_toml_key(name)} = {_toml_value(value)}"
                param = PARAM_BY_KEY.get(f"{section}.{name}")
                if param is not None and param.type == "size":
                    line += f"  # bytes ({format_size(value)})"
                elif param is not None and param.unit:
                    line += f"  # {param.unit}"
                lines.append(line)
        return "\n".join(lines) + "\n"


def _shipped_hint(path: str) -> str:
    """For a config path that is not there but names a config smp ships (``configs/
    stress.toml`` outside a clone): where the shipped one is."""
    shipped = importlib.resources.files("smp.configs") / os.path.basename(path)
    return f" (smp ships one by that name: {shipped})" if (
        path.endswith(".toml") and shipped.is_file()) else ""


def default_config_path() -> Traversable:
    """The packaged default config, ``configs/default.toml``."""
    return importlib.resources.files("smp.configs") / "default.toml"


def _parse_override(text: str) -> tuple[str, object]:
    """Split one "section.name=value" override; the value is a TOML value if it parses
    as one, else the bare string (so ``machine.memory=32M`` and ``machine.transport=tcp``
    work unquoted)."""
    key, eq, raw = text.partition("=")
    key = key.strip()
    if not eq or not key:
        raise ConfigError("--set", key or None,
                          f"{_toml_string(text)}: expected section.name=value")
    try:
        doc = tomllib.loads("v = " + raw)
        value: object = doc["v"] if doc.keys() == {"v"} else raw.strip()
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = ()) -> Config:
    """Load and check the config at *path* (None: the packaged default), then apply
    *overrides* ("section.name=value", later ones winning). Raise ConfigError."""
    if isinstance(overrides, str):
        raise TypeError("load_config: overrides must be a sequence of strings, not a string")
    ref: Traversable = default_config_path() if path is None else pathlib.Path(path)
    source = str(ref) if path is None else os.fspath(path)
    try:
        data = ref.read_bytes()
    except FileNotFoundError:
        raise ConfigError(source, None, "no such config file" + _shipped_hint(source)) from None
    except IsADirectoryError:
        raise ConfigError(source, None, "is a directory, not a config file") from None
    except OSError as e:
        raise ConfigError(source, None, f"cannot read: {e.strerror}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(source, None, f"not valid TOML: not UTF-8 (byte {e.start})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(source, None, f"not valid TOML: {e}") from None
    items = _flatten(doc, source)
    cfg = Config({**_DEFAULTS, **_resolve(items, source)}, source)
    given = {k: source for k in items}
    if overrides:
        over = dict(_parse_override(o) for o in overrides)
        cfg = cfg.with_values(over, origin="--set")
        given.update({k: "--set" for k in over})
    else:
        _check_together(cfg, source)
    if cfg["machine.time"] == "virtual":
        for key in WALL_ONLY:
            if key in given:
                raise ConfigError(given[key], key,
                                  f"{key} applies to wall time only (machine.time = \"wall\"); "
                                  f"in virtual time a run takes the host time it needs")
    return cfg


def _check_together(cfg: Config, origin: str) -> None:
    """Rules between keys, checked once every key has its value (*origin* is blamed).

    ``user.hog_pages``: a memory hog maps and touches that many pages, so they must fit
    in the machine (``machine.memory``); more would have the kernel panic at the hog's
    mmap ("mmap: no space"), or thrash a machine too small for it, instead of saying
    which key is wrong."""
    from smp.kernel.param import PAGE_SIZE
    pages = int(cfg["machine.memory"]) // PAGE_SIZE
    hog = int(cfg["user.hog_pages"])
    if hog > pages:
        raise ConfigError(origin, "user.hog_pages",
                          f"user.hog_pages: {hog} pages ({format_size(hog * PAGE_SIZE)}) "
                          f"do not fit in the machine: machine.memory is "
                          f"{format_size(int(cfg['machine.memory']))} ({pages} pages); a "
                          f"memory hog maps at most that many")


def schema_markdown() -> str:
    """A Markdown table of every parameter, generated from PARAMS."""
    rows = ["| key | type | default | unit | allowed | description |",
            "|---|---|---|---|---|---|"]
    for p in PARAMS:
        cells = [f"`{p.key}`", p.type, f"`{_toml_value(p.default)}`", p.unit, p.allowed(), p.desc]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"


# A tiny TOML emitter: enough for ints, floats, bools, strings and lists of them.

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
            "\f": "\\f", "\r": "\\r"}


def _toml_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_string(k)


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _show(value: object) -> str:
    """A value as the user would have written it, for error messages."""
    if isinstance(value, dict):
        return "a table"
    try:
        text = _toml_value(value)
    except TypeError:
        text = str(value)  # TOML dates and times
    return text if len(text) <= 60 else text[:57] + "..."
