# PYTHON_ARGCOMPLETE_OK  (argcomplete: `smp completion bash` says how to use it)
"""The ``smp`` command line.

    smp run [CONFIG] [--set SECTION.KEY=VALUE ...] [--fail-point NAME ...] [--run-dir DIR
            [--force]]
            [--listen tcp://ADDR:PORT [--local-cpus N] [--key-dir DIR] [--join-timeout S]]
    smp replay RUN_DIR [--until N] [--watch WHAT ...] [--run-dir OUT [--force]]
    smp trace RUN_DIR [-o OUT] [--until N] [--watch WHAT ...]
    smp cpu --join tcp://HOST:PORT --id K [--key-dir DIR] [--timeout S]
    smp keys DIR [--cpus IDS [--name NAME]]
    smp report RUN_DIR [--format text|json|csv|folded] [--table cpus|locks|profile|series]
               [--weight wait|count]
    smp top [RUN_DIR] [--once [--json]]
    smp plot RUN_DIR
    smp witness RUN_DIR [--dot [FILE]]
    smp flame RUN_DIR [--weight wait|count]; smp report RUN_DIR --format folded
    smp config [CONFIG] [--set ...] [--schema]
    smp failpoints
    smp stress [CONFIG] --runs N [--jobs J | --cluster local:N|ADDRESS] [--seed S] [--chaos LEVEL]
               [--fail-point NAME ...]
    smp completion bash|zsh|fish

Exit statuses: 0 success; 1 the machine failed (panic, invariant, dead process); 2 bad
usage or a bad config (nothing was started); 128+N stopped by signal N.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import textwrap
from typing import TYPE_CHECKING, Any, Callable, Sequence

from smp import __version__
from smp.run.config import Config, ConfigError, load_config, schema_markdown

if TYPE_CHECKING:                  # (imported when a command needs them: start-up time)
    from smp.hunt.stress import Campaign, CampaignLog

EPILOG = """\
examples:
  smp run                                  the default 4-CPU machine (configs/default.toml)
  smp run configs/8cpu.toml --set run.seed=7
  smp run --set machine.cpus=2 --set run.duration=5
  smp report runs/20261126-101500-s1       the summary of a finished run again
  smp replay runs/20261126-101500-s1       run it again, exactly (the recorded schedule)
  smp replay runs/X --until 81234          stop after operation 81234; dump every thread
  smp replay runs/X --watch proc#12        every access of that object: who, when, where
  smp trace runs/X                         its timeline for ui.perfetto.dev (runs/X/trace.json)
  smp config --schema                      every config key, its type, default and meaning
  smp failpoints                           the race guards of vm_glue that can be switched off
  smp run --fail-point swapout_procs_prs_new   a run without that guard
  smp stress configs/stress.toml --coverage   which lines of vm_glue.c its runs ran (gcov)
  smp top                                  live per-CPU view of the newest running machine
  smp top runs/X --once --json             one sample, for scripts
  smp plot runs/20261126-101500-s1         PNG charts into the run directory
  smp witness runs/X                       the learned lock order, as ddb's show witness
  smp witness runs/X --dot                 ... as a Graphviz graph (runs/X/witness.dot)
  smp flame runs/X                         where threads waited for locks: a flame graph
  smp run --metrics 9100                   Prometheus metrics at http://127.0.0.1:9100/metrics
  smp keys keys/                           the server's CURVE keys for CPUs on other hosts
  smp keys keys/ --cpus 2-3                a key for the CPU host that runs cpus 2 and 3
  smp run --set machine.cpus=4 --listen tcp://0.0.0.0:5555 --key-dir keys/ --local-cpus 2
  smp cpu --join tcp://server:5555 --id 2 --key-dir keys/   (on another host; and --id 3)
"""


def _fail_point_names(**kwargs: Any) -> list[str]:
    """What TAB offers after --fail-point (argcomplete)."""
    from smp.kernel.conf import kern_fail
    return [fp.name for fp in kern_fail.fail_points()]


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="smp", description="A multiprocess SMP machine simulator: every simulated CPU "
        "is an OS process, running a port of FreeBSD's vm_glue.c against one server that "
        "holds shared memory and the locks.", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"smp {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run", help="boot a machine from a config, run it, print a per-CPU summary",
        description="Boot the machine a TOML config describes (default: the packaged "
        "configs/default.toml), run it for run.duration simulated seconds, stop it "
        "cleanly and write the run directory: config.toml (resolved, with seed and "
        "version), report.json, log.txt, and crash.txt after a panic. Ctrl-C stops the "
        "run within seconds and still writes a partial report.",
        epilog="exit status: 0 ok; 1 panic, failed invariant or dead process; 2 bad config "
        "or usage; 130/143 interrupted by SIGINT/SIGTERM",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_args(run)
    run.add_argument("--run-dir", metavar="DIR",
                     help="write the results into DIR (default: a new directory under "
                     "run.dir, named after the time and seed); a DIR that exists must be "
                     "empty, unless --force")
    run.add_argument("--force", action="store_true",
                     help="clear --run-dir first if it holds an earlier run (refused if "
                     "it holds anything else, or a machine is running in it)")
    _coverage_arg(run)
    run.add_argument("--fail-point", dest="fail_points", action="append", default=[],
                     metavar="NAME",
                     help="switch off the race guard NAME for this run (repeatable; "
                     "see `smp failpoints`); adds to debug.fail_points"
                     ).completer = _fail_point_names  # type: ignore[attr-defined]
    said = run.add_mutually_exclusive_group()
    said.add_argument("--json", action="store_true",
                      help="print report.json instead of the summary table")
    said.add_argument("--quiet", action="store_true",
                      help="print nothing; the run directory has everything (for scripts "
                      "and stress campaigns)")
    run.add_argument("--metrics", metavar="[ADDR:]PORT",
                     help="serve the machine's counters in the Prometheus text format at "
                     "http://ADDR:PORT/metrics while it runs (ADDR defaults to 127.0.0.1; "
                     "another address must be named explicitly)")
    run.add_argument("--listen", metavar="tcp://ADDR:PORT",
                     help="also take CPUs from other hosts on this endpoint (they join "
                     "with `smp cpu --join`); an address other than the loopback needs "
                     "--key-dir")
    run.add_argument("--local-cpus", type=int, default=None, metavar="N",
                     help="with --listen: start CPUs 0..N-1 here (default: all); the "
                     "others must join")
    run.add_argument("--key-dir", metavar="DIR",
                     help="with --listen: CURVE keys made by `smp keys DIR [--cpus "
                     "IDS]`; only CPUs whose public key is in DIR/authorized/ can join, "
                     "each as the CPU ids its key is bound to")
    run.add_argument("--join-timeout", type=float, default=None, metavar="S",
                     help="with --listen: how long to wait for every CPU to join "
                     "(default 60 s); the run then ends naming the missing ones")

    rp = sub.add_parser(
        "replay", help="run a recorded run again, exactly, and say whether it did the same",
        description="Run the machine of RUN_DIR again with real processes, the server "
        "letting every operation through in the order RUN_DIR/schedule.smpr recorded and "
        "each CPU taking its events where it took them: the same replies, counters, "
        "findings and panic. The replay's run directory (default RUN_DIR/replay) gets its "
        "own report; the summary says whether it matches the recorded one. A divergence "
        "(changed code, a record cut short or damaged) is reported at the first operation "
        "that differs, with its CPU and site.",
        epilog="exit status: 0 the replay did what the record says (and the recorded run "
        "was ok); 1 a divergence, or the recorded run itself failed (its panic replayed); "
        "2 no usable record (not a record, another version, another config), a --watch "
        "that is not an object, a field or lock:NAME, or an output that cannot be used; "
        "130/143 stopped by SIGINT/SIGTERM (cut short: not compared)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a record")
    rp.add_argument("--until", type=int, metavar="N",
                    help="stop the machine after operation N and write dump.txt: every "
                    "thread's stack, the locks it holds and waits for, each CPU's last "
                    "operations")
    rp.add_argument("--watch", action="append", default=[], metavar="WHAT",
                    help="print every access of WHAT in the run, in the machine's order: "
                    "its operation number (for --until), CPU, thread, what it did (a "
                    "store's old -> new value) and kernel site; into OUT/watch.txt too. "
                    "WHAT: an object as reports name it (proc#12: every field, its "
                    "allocation, free and moves on and off lists), one field "
                    "(proc#12.FIELD or &proc#12.FIELD) or every lock of a name "
                    "(lock:NAME: acquires, contested waits, grants, releases). "
                    "Repeatable; a WHAT that matches nothing is said at the end")
    rp.add_argument("--coverage", action="store_true",
                    help="count the kernel's lines the replay runs (debug.coverage), even "
                    "if the recorded run did not: vm_glue.c.gcov and coverage.info in OUT")
    rp.add_argument("--run-dir", dest="out", metavar="OUT",
                    help="write the replay's results into OUT (default: RUN_DIR/replay, "
                    "then replay-2, replay-3...); an OUT that is not empty is refused")
    rp.add_argument("--force", action="store_true",
                    help="clear an --run-dir OUT that holds an earlier run (never a "
                    "folder that holds none, nor one a machine is running in)")

    tr = sub.add_parser(
        "trace", help="draw a recorded run as a timeline for ui.perfetto.dev",
        description="Replay the record of RUN_DIR (as smp replay does: the same "
        "operations in the same order) with a tracer attached to the server, and write the "
        "run's timeline in the Chrome trace event format, which ui.perfetto.dev and "
        "chrome://tracing open: one process per CPU, with the threads it ran, the locks "
        "they held and waited for, their sleeps, each wakeup as an arrow from the waker to "
        "the sleeper, and a panic, a divergence or the --until stop as a mark across the "
        "timeline. Times are simulated microseconds from the machine's start. The replay's "
        "own run directory is temporary: the trace is what the command leaves.",
        epilog="exit status: 0 the trace was written; 1 the replay diverged from the record "
        "(the trace ends at the divergence, marked); 2 no usable record (not a record, "
        "another version, another config) or the trace cannot be written; 130/143 "
        "stopped by SIGINT/SIGTERM (the trace holds the timeline up to the stop)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    tr.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with a record")
    tr.add_argument("-o", "--output", dest="out", metavar="OUT",
                    help="write the trace to OUT (default: RUN_DIR/trace.json)")
    tr.add_argument("--until", type=int, metavar="N",
                    help="stop the timeline after operation N")
    tr.add_argument("--watch", action="append", default=[], metavar="WHAT",
                    help="mark every access of WHAT on the timeline (as smp replay --watch "
                    "finds them: an object, a field or lock:NAME), and print them")

    cpu = sub.add_parser(
        "cpu", help="be one CPU of a machine whose server runs on another host",
        description="Join the machine that `smp run --listen ENDPOINT` serves, as CPU K. "
        "The server sends the run's resolved config; this process runs the CPU until the "
        "machine halts, and exits when the server goes away.",
        epilog="exit status: 0 the machine halted; 1 could not join (nothing listening, "
        "key refused, the id not bound to the key or taken); 2 usage; 3 the server went "
        "away",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cpu.add_argument("--join", required=True, metavar="tcp://HOST:PORT",
                     help="the server's --listen endpoint")
    cpu.add_argument("--id", required=True, type=int, metavar="K", help="the CPU number")
    cpu.add_argument("--key-dir", metavar="DIR",
                     help="CURVE keys: DIR/server.key and a secret key bound to K "
                     "(made by `smp keys DIR --cpus K`)")
    cpu.add_argument("--timeout", type=float, default=60.0, metavar="S",
                     help="give up when no server answers within S seconds (default 60)")

    keys = sub.add_parser(
        "keys", help="make CURVE keys for running CPUs on other hosts",
        description="Without --cpus: create DIR (mode 0700) with the server's key pair "
        "and DIR/authorized/ (the client public keys the server accepts). With --cpus "
        "IDS: add a client key pair bound to those CPU ids and authorize it; a CPU may "
        "join only as an id its key is bound to. Give the server host all of DIR; give "
        "each CPU host DIR/server.key and its own NAME.key and NAME.key_secret.")
    keys.add_argument("dir", metavar="DIR")
    keys.add_argument("--cpus", metavar="IDS",
                      help="bind the new client key to these CPU ids: 2, 2-5 or 1,4-6")
    keys.add_argument("--name", metavar="NAME",
                      help="with --cpus: the key files' name (default cpu<IDS>, e.g. "
                      "cpu2-5); a host's name reads well")

    st = sub.add_parser(
        "stress", help="run many short machines with derived seeds, hunting lock races",
        description="\n\n".join(textwrap.fill(p, 79) for p in (
            ("Run a campaign: --runs machines (--jobs at a time), each with a seed derived "
            "from --seed, with every detector on. Stops at the first run with a new "
            "failure (unless --keep-going) and prints, for each failure, the seed, the "
            "detector, a summary, the run directory, one command that reruns exactly "
            "that run and one that replays it exactly from its recorded schedule. Known "
            "findings of the 2002 code (FINDINGS.md) are reported but do not fail the "
            "campaign unless --strict. The campaign's folder keeps all of it in "
            "campaign.json, run by run; smp report OUT prints it again."),
            ("--cluster sends the runs to a Dask cluster instead, one task each (pip "
            "install '.[cluster]'): local:N starts a LocalCluster of N worker processes "
            "on this host; tcp://HOST:PORT (tls:// with Dask's TLS configuration) or a "
            "scheduler file joins a running one, and its dashboard link is printed. Each "
            "worker runs as many machines at once as its 'machines' resource says (dask "
            "worker --resources machines=N; by default its cores); a worker with another "
            "smp or protocol version gets no runs, and the campaign names it. A failing "
            "run's directory comes back into --out, so its rerun and replay commands work "
            "here. A run lost with its worker is run again elsewhere, and the summary "
            "counts it. Ctrl-C cancels every run, on every worker. What smp sends over the "
            "network: configs out, run folders back."))),
        epilog="exit status: 0 no new failure; 1 a failure was found; 2 usage error, or "
        "a cluster that cannot be used; 130/143 stopped by SIGINT/SIGTERM (the "
        "campaign's machines stopped first, then its closing lines printed)\n\n"
        "examples:\n"
        "  smp stress configs/stress.toml --runs 200 --jobs 2\n"
        "  smp stress configs/stress.toml --runs 2000 --cluster local:4\n"
        "  smp stress configs/stress.toml --runs 2000 --cluster tcp://scheduler:8786",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _config_args(st)
    st.add_argument("--runs", type=int, default=10, metavar="N", help="runs (default 10)")
    st.add_argument("--jobs", type=int, default=None, metavar="J",
                    help="machines at once on this host (default 1; each machine is "
                    "several processes)")
    st.add_argument("--cluster", default=None, metavar="local:N|ADDRESS",
                    help="run on a Dask cluster instead: local:N (a LocalCluster of N "
                    "workers on this host), tcp://HOST:PORT, or a scheduler file")
    st.add_argument("--seed", type=int, default=1, metavar="S",
                    help="the campaign's seed; run i gets a seed derived from it (default 1)")
    st.add_argument("--chaos", choices=("off", "low", "high"), default=None,
                    help="chaos level for every run (default: the config's debug.chaos)")
    _coverage_arg(st)
    st.add_argument("--fail-point", dest="fail_points", action="append", default=[],
                    metavar="NAME", help="switch off this race guard in every run (repeatable)"
                    ).completer = _fail_point_names  # type: ignore[attr-defined]
    st.add_argument("--duration", type=float, default=None, metavar="SIM_S",
                    help="simulated seconds per run (default: the config's run.duration)")
    st.add_argument("--time-budget", type=float, default=None, metavar="T",
                    help="start no new run after T wall seconds")
    st.add_argument("--keep-going", action="store_true",
                    help="do not stop at the first failing run")
    st.add_argument("--strict", action="store_true",
                    help="known findings fail the campaign too")
    st.add_argument("--out", default=None, metavar="DIR",
                    help="where the runs' directories go (default: <run.dir>/stress-<time>); "
                    "a new or empty folder")

    bench = sub.add_parser(
        "bench", help="measure the machine's speed against baselines, in one run",
        description="Measure, in one run: the server's lock and load round trips and "
        "throughput against a bare ZeroMQ echo server on the same transport and against "
        "multiprocessing.Manager().Lock() (ratios), simulated forks and swap cycles per "
        "wall second on configs/default.toml, and the server's RSS with 1 GiB of "
        "simulated physical memory. See smp/hunt/bench.py.")
    bench.add_argument("--json", action="store_true", help="print one JSON object")
    bench.add_argument("--ops", type=int, default=2000, metavar="N",
                       help="timed operations per client per measurement (default 2000)")
    bench.add_argument("--rounds", type=int, default=3, metavar="R",
                       help="rounds of the transport measurements (default 3)")
    bench.add_argument("--duration", type=float, default=None, metavar="SIM_S",
                       help="simulated seconds of the default machine (default: its own)")
    bench.add_argument("--config", default=None, metavar="CONFIG",
                       help="the machine for forks_per_s and swap_cycles_per_s")
    bench.add_argument("--only", action="append", choices=("transport", "machine", "memory"),
                       help="run only this part (repeatable)")

    comp = sub.add_parser(
        "completion", help="print the shell code that completes smp's commands and options",
        description="Print shell code that makes TAB complete smp's commands, options, "
        "fail point names and files (argcomplete). Load it once, or put it in your "
        "shell's start-up file: eval \"$(smp completion bash)\" (bash, and zsh with "
        "bashcompinit); smp completion fish | source (fish).")
    comp.add_argument("shell", choices=("bash", "zsh", "fish"), nargs="?", default="bash")

    sub.add_parser("failpoints", help="list the race guards that a run can switch off",
                   description="Every race guard of the seed is a named fail point "
                   "(FreeBSD fail(9) style). Prints one per line: the name, a tab, and "
                   "what switching it off does.")

    rep = sub.add_parser("report", help="print the summary of a finished run (or campaign) "
                         "again",
                         description="Read RUN_DIR/report.json and print its summary. Given "
                         "the folder of a campaign of smp stress, print the campaign's "
                         "record (its campaign.json): the command, how it ended, each "
                         "failure with its rerun and replay commands.")
    rep.add_argument("run_dir", metavar="RUN_DIR")
    rep.add_argument("--format", choices=("text", "json", "csv", "folded"), default="text",
                     help="text: the summary (default), or one --table as text; json: "
                     "report.json as is; csv: one table of the run (see --table); "
                     "folded: where threads waited for each lock, as folded stacks for "
                     "flamegraph.pl or speedscope (see smp flame)")
    rep.add_argument("--table", choices=("cpus", "locks", "profile", "series"),
                     default=None,
                     help="one table: cpus (one row per CPU, the default of csv), locks, "
                     "profile (LOCK_PROFILING rows) or series (every CPU sample of "
                     "stats.jsonl; csv only); as text without --format csv")
    rep.add_argument("--weight", choices=("wait", "count"), default=None,
                     help="with --format folded: what a stack's width is, microseconds "
                     "waited (default) or waits")

    flame = sub.add_parser(
        "flame", help="lock contention as a flame graph: where threads waited for each lock",
        description="Write RUN_DIR/lock_waits.folded (Brendan Gregg's folded stacks: one "
        "line per stack of a thread that waited for a lock, the lock at the root, the "
        "value the microseconds waited; flamegraph.pl and speedscope read it) and "
        "RUN_DIR/lock_waits.svg (the flame graph, drawn with matplotlib).")
    flame.add_argument("run_dir", metavar="RUN_DIR")
    flame.add_argument("--weight", choices=("wait", "count"), default="wait",
                       help="a stack's width: microseconds waited (default) or waits")

    wit = sub.add_parser(
        "witness", help="the lock order a run learned, as ddb's `show witness`, or as a "
        "graph", description="Print the lock order WITNESS learned in RUN_DIR (seeded with "
        "2002's static order) as ddb's `show witness` does: sleep and spin locks as trees, "
        "each lock with its level and where it was last acquired, locks never acquired, "
        "and the lock order reversals, marked on both locks. --dot writes the graph in "
        "Graphviz DOT (reversals as red dashed edges), and an SVG and a PNG beside it when "
        "Graphviz's dot is installed.")
    wit.add_argument("run_dir", metavar="RUN_DIR")
    wit.add_argument("--dot", nargs="?", const="", default=None, metavar="FILE",
                     help="write DOT to FILE (default RUN_DIR/witness.dot) instead of "
                     "printing the text; with Graphviz installed, FILE.svg and FILE.png too")

    plot = sub.add_parser(
        "plot", help="write PNG charts of a run into its directory (needs smp[plot])",
        description="Read RUN_DIR/stats.jsonl and write cpu_utilisation.png (per-CPU "
        "utilisation stacked by state), lock_contention.png (the most contended locks "
        "over time) and swap.png (swapouts, swapins, free pages) into RUN_DIR. It needs "
        "matplotlib, the plotting extra: pip install 'smp[plot]'.")
    plot.add_argument("run_dir", metavar="RUN_DIR")

    top = sub.add_parser(
        "top", help="live per-CPU view of a running machine (q quits, s sorts, p pauses, "
        "v processes)",
        description="Attach to a running machine's stats stream (RUN_DIR/live.json; the "
        "newest live run under runs/ when RUN_DIR is not given) and show, refreshed every "
        "second: per-CPU tick shares by mode, context switches, lock and memory activity, "
        "wait times, the host process behind each CPU, and the most contended lock sites "
        "(LOCK_PROFILING columns), or the process list. Keys: q quits, s cycles the lock "
        "sort column, c the CPU order, p pauses, v switches locks and processes.")
    top.add_argument("run_dir", nargs="?", metavar="RUN_DIR",
                     help="the run directory of a running machine (default: the newest "
                     "live run under --runs)")
    top.add_argument("--runs", default="runs", metavar="DIR",
                     help="where to look for the newest run (default: runs)")
    top.add_argument("--once", action="store_true",
                     help="print one sample (once every CPU has published twice) and exit")
    top.add_argument("--json", action="store_true", help="with --once: print it as JSON")
    top.add_argument("--timeout", type=float, default=15.0, metavar="S",
                     help="with --once: give up after S wall seconds (default 15)")

    conf = sub.add_parser("config", help="check a config and print it resolved, or the schema",
                          description="Load and validate CONFIG with its --set overrides "
                          "and print the resolved TOML, or print the schema of every key.")
    _config_args(conf)
    conf.add_argument("--schema", action="store_true",
                      help="print every config key as a Markdown table and exit "
                      "(docs/CONFIG.md is this output)")
    return ap


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help="TOML config file (default: the packaged configs/default.toml)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE",
                   help="override one config key, e.g. --set machine.cpus=8 (repeatable)")


def _coverage_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coverage", dest="overrides", action="append_const",
                   const="debug.coverage=true",
                   help="count the kernel's lines run (debug.coverage): vm_glue.c.gcov and "
                   "coverage.info in the run directory (a campaign's: summed over its runs)")


def _completion(ap: argparse.ArgumentParser) -> None:
    """Answer the shell's TAB (argcomplete sets _ARGCOMPLETE, and exits when done)."""
    import argcomplete
    argcomplete.autocomplete(ap)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:    # Ctrl-C before a command took the signal (importing):
        return 130               # nothing had started; no traceback for it


def _main(argv: Sequence[str] | None) -> int:
    import signal
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)        # `smp ... | head` ends quietly
    ap = _parser()
    if "_ARGCOMPLETE" in os.environ and argv is None:
        _completion(ap)
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help()
        return 2
    if args.command in _NO_CONFIG:
        return _NO_CONFIG[args.command](args)
    cfg = _config(args)
    if cfg is None:
        return 2
    if args.command == "config":
        print(config_doc() if args.schema else cfg.to_toml(), end="")
        return 0
    if args.command == "stress":
        return _stress(args, cfg, list(sys.argv[1:] if argv is None else argv))
    return _run(args, cfg)


def _config(args: argparse.Namespace) -> Config | None:
    """The command's config (its file, --set, --fail-point), or None after saying what
    is wrong with it."""
    try:
        cfg = load_config(args.config, args.overrides)
        # each unknown name is blamed on where it came from: the file, --set, --fail-point
        from_set = any(o.partition("=")[0].strip() == "debug.fail_points"
                       for o in args.overrides)
        _check_fail_points(cfg["debug.fail_points"], "--set" if from_set else cfg.source)
        if getattr(args, "fail_points", None):
            _check_fail_points(args.fail_points, "--fail-point")
            merged = list(cfg["debug.fail_points"]) + list(args.fail_points)
            cfg = cfg.with_values({"debug.fail_points": merged}, origin="--fail-point")
    except ConfigError as e:
        print(f"smp: {e}", file=sys.stderr)
        return None
    return cfg


def _run(args: argparse.Namespace, cfg: Config) -> int:
    """``smp run``: the machine, its summary (or report.json), its exit status."""
    from smp.run.launcher import LaunchError, RunDirError, run_machine
    from smp.observe.report import summary_table
    from smp.run.remote import RemoteError, check_listen
    listen = None
    if args.force and args.run_dir is None:     # a new directory has nothing to clear
        print("smp: --force needs --run-dir (it clears that directory's earlier run; "
              "without --run-dir a run gets a new directory)", file=sys.stderr)
        return 2
    try:
        if args.listen is not None:
            listen = check_listen(args.listen, args.key_dir, int(cfg["machine.cpus"]),
                                  args.local_cpus, args.join_timeout)
        elif args.local_cpus is not None or args.key_dir or args.join_timeout is not None:
            raise RemoteError("--local-cpus, --key-dir and --join-timeout need --listen")
    except RemoteError as e:
        print(f"smp: {e}", file=sys.stderr)
        return 2
    try:
        monitors = _monitors(args, cfg)
    except ValueError as e:
        print(f"smp: {e}", file=sys.stderr)
        return 2
    try:
        result = run_machine(cfg, args.run_dir,
                             log=(lambda line: None) if args.quiet else None,
                             monitors=monitors, listen=listen, force=args.force)
    except RunDirError as e:                  # raised before anything started
        print(f"smp: {e}", file=sys.stderr)
        return 2
    except LaunchError as e:
        print(f"smp: {e}", file=sys.stderr)
        return 1
    if args.quiet:
        return result.exit_status
    if args.json:
        print(json.dumps(result.report, indent=1))
    else:
        print(summary_table(result.report))
        print(f"run directory: {result.run_dir}")
        for line in _replay_lines(result.run_dir, result.report):
            print(line)
    return result.exit_status


def _replay_lines(run_dir: str, report: dict[str, Any]) -> list[str]:
    """After a run that panicked or found something new, and was recorded: the replay
    that goes over it again, and the watch of the objects its failures name."""
    from smp.hunt.stress import replay_of, watch_command
    from smp.observe.findings import classify
    replay = replay_of(run_dir)
    fails = [f for f in classify(report) if f.panic or f.known is None] if replay else []
    if replay is None or not fails:
        return []
    watch = watch_command(replay, [f.summary for f in fails])
    return [f"replay: {replay}"] + ([f"watch:  {watch}"] if watch else [])


def _completion_code(args: argparse.Namespace) -> int:
    import argcomplete
    print(argcomplete.shellcode(["smp"], shell=args.shell), end="")
    return 0


def _top(args: argparse.Namespace) -> int:
    from smp.observe.top import main as top_main
    return top_main(args.run_dir, args.once, args.json, args.runs, args.timeout)


def _bench(args: argparse.Namespace) -> int:
    from smp.hunt.bench import main as bench_main
    return bench_main(args)


def _keys(args: argparse.Namespace) -> int:
    from smp.run.keys import KeyDirError, create_keys
    try:
        if args.name and not args.cpus:
            raise KeyDirError("--name needs --cpus")
        for path in create_keys(args.dir, args.cpus, args.name):
            print(path)
    except (KeyDirError, OSError) as e:
        print(f"smp keys: {e}", file=sys.stderr)
        return 2
    return 0


def _cpu(args: argparse.Namespace) -> int:
    from smp.run.remote import join_main
    try:
        return join_main(args.join, args.id, args.key_dir, args.timeout)
    except KeyboardInterrupt:
        print(f"smp: cpu {args.id}: interrupted", file=sys.stderr)
        return 130


def _failpoints(args: argparse.Namespace) -> int:
    from smp.kernel.conf import kern_fail
    for fp in kern_fail.fail_points():
        print(f"{fp.name}\t{fp.description}")
    return 0


def config_doc() -> str:
    """docs/CONFIG.md: the schema, generated from the declarations in smp/run/config.py."""
    return ("<!-- WARNING: AUTOGENERATED by `smp config --schema` from smp/run/config.py. "
            "ALL EDITS WILL BE LOST. -->\n"
            "# Config keys\n\n"
            "Every key a run config (TOML) may set, with `--set SECTION.KEY=VALUE` on the "
            "command line too. Sizes take K, M and G (binary). An unknown key, a wrong "
            "type or a value out of range stops `smp` with exit status 2, naming the "
            "file and the key.\n\n" + schema_markdown())


def _stress(args: argparse.Namespace, cfg: "Config", argv: list[str]) -> int:
    from smp.hunt.stress import Campaign, CampaignError, CampaignLog, prepare_out_dir
    from smp.run.rundir import RunDirError, new_dir, stamp
    if args.jobs is not None and args.cluster is not None:
        print("smp: stress: --jobs or --cluster, not both (a cluster's workers say how many "
              "machines each runs)", file=sys.stderr)
        return 2
    jobs = 1 if args.jobs is None else args.jobs
    if args.runs < 1 or jobs < 1:
        print("smp: stress: --runs and --jobs must be at least 1", file=sys.stderr)
        return 2
    if args.time_budget is not None and not args.time_budget > 0:
        print(f"smp: stress: --time-budget must be a positive number of wall seconds, got "
              f"{args.time_budget:g}", file=sys.stderr)
        return 2
    try:
        if args.duration is not None:                  # checked as run.duration is
            cfg.with_values({"run.duration": args.duration}, origin="--duration")
        # the campaign's seed: in run.seed's range, as every seed smp takes
        cfg.with_values({"run.seed": args.seed}, origin="--seed")
    except ConfigError as e:
        print(f"smp: stress: {e}", file=sys.stderr)
        return 2
    try:
        if args.out:
            out = args.out
            prepare_out_dir(out)
        else:                       # a new folder of its own, even beside a twin campaign
            out = new_dir(str(cfg["run.dir"]), f"stress-{stamp()}-s{args.seed}",
                          "a campaign folder")
    except (CampaignError, RunDirError) as e:
        print(f"smp: stress: {e}", file=sys.stderr)
        return 2
    camp = Campaign(args.config, args.runs, jobs, args.seed, args.chaos,
                    args.fail_points, args.overrides, args.duration, args.time_budget,
                    args.keep_going, args.strict, out, cluster=args.cluster)
    try:
        log = CampaignLog(out, camp, ["smp", *argv])
    except CampaignError as e:
        print(f"smp: stress: {e}", file=sys.stderr)
        return 2
    # what the campaign's record says at the end, whatever ends it (an internal error too)
    ending: tuple[str, int, list[str]] = ("error", 2, [])
    try:
        ending = _campaign(args, camp, log, out, jobs)
        return ending[1]
    finally:
        log.close(*ending)
        if log.error:
            print(f"smp: stress: {log.error}", file=sys.stderr)


def _campaign(args: argparse.Namespace, camp: Campaign, log: CampaignLog, out: str,
              jobs: int) -> tuple[str, int, list[str]]:
    """The campaign itself, once its folder and record are made: how it ended (its
    record's last word), its exit status and closing lines."""
    from smp.hunt.stress import (CampaignError, Interrupted, Runner, Terminated,
                                 campaign_coverage, describe, run_campaign)
    from smp.observe.progress import CampaignProgress

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    runner: Runner | None = None
    where = f"{jobs} at a time"
    if args.cluster is not None:
        say(f"stress: starting or joining the Dask cluster {args.cluster}")
        try:
            from smp.hunt.cluster import ClusterRunner
            runner = ClusterRunner(camp, say)
        except CampaignError as e:
            print(f"smp: stress: {e}", file=sys.stderr)
            return "error", 2, [str(e)]
        except KeyboardInterrupt:
            return "interrupted", 130, []
        where = f"on the cluster {runner.address}"
    progress = CampaignProgress(sys.stderr.isatty())
    say(f"stress: {args.runs} runs of {args.config or 'the default config'}, {where}, "
        f"campaign seed {args.seed}; runs in {out}")
    stopped: Interrupted | None = None
    try:
        outcomes = run_campaign(camp, say, progress, runner, log)
    except Interrupted as e:                   # its machines are stopped by now
        stopped, outcomes = e, e.outcomes
    except KeyboardInterrupt as e:             # a second signal cut that short too
        return "interrupted", 143 if isinstance(e, Terminated) else 130, []
    except CampaignError as e:
        print(f"smp: stress: {e}", file=sys.stderr)
        return "error", 2, [str(e)]
    finally:
        progress.close()
    lines, status = describe(outcomes, args.strict, cluster=args.cluster is not None)
    lines[-1:-1] = campaign_coverage(outcomes, out)
    if stopped is not None:                    # the tally so far, and that it was cut short
        lines.append(stopped.line(args.runs))
    for line in lines:
        print(line)
    if stopped is not None:
        return "interrupted", stopped.status, lines
    return "done", status, lines


def _monitors(args: argparse.Namespace, cfg: "Config") -> list[object]:
    """The progress display (a live one when standard error is a terminal, plain lines
    every few simulated seconds otherwise) and the Prometheus
    exporter (--metrics); raises ValueError for a --metrics address that cannot be used."""
    monitors: list[object] = []
    if args.metrics:
        from smp.observe.metrics import MetricsError, MetricsExporter, check_bind, parse_addr
        try:
            addr, port = parse_addr(args.metrics)
            check_bind(addr, port)
        except MetricsError as e:
            raise ValueError(str(e)) from None
        say = (lambda line: None) if args.quiet else \
            (lambda line: print(line, file=sys.stderr, flush=True))
        monitors.append(MetricsExporter(addr, port, log=say))
    if not args.quiet and sys.stderr.isatty():
        from smp.observe.progress import RunProgress
        monitors.append(RunProgress(float(cfg["run.duration"]), float(cfg["machine.speed"]),
                                    int(cfg["machine.cpus"])))
    elif not args.quiet:
        from smp.observe.progress import PlainRunProgress
        monitors.append(PlainRunProgress(float(cfg["run.duration"]),
                                         float(cfg["machine.speed"])))
    return monitors


def _campaign_folder(d: str) -> bool:
    """``d`` is a campaign's folder (``smp stress --out``), not a run directory."""
    from smp.hunt.stress import CAMPAIGN_FILE
    return (os.path.isfile(os.path.join(d, CAMPAIGN_FILE))
            and not os.path.exists(os.path.join(d, "report.json")))


def _run_replay(cmd: str, how: Any, args: argparse.Namespace) -> tuple[int, Any, str] | None:
    """``smp replay`` and ``smp trace``: replay ``args.run_dir`` with ``how`` (replay or
    trace); None, said on stderr, for a bad --until or a record that cannot be replayed."""
    from smp.hw.record import RECORD_FILE
    from smp.run.replay import ReplayError
    from smp.run.rundir import RunDirError
    if args.until is not None and args.until < 1:
        print(f"smp {cmd}: --until must be a positive operation number (the first is 1), "
              f"got {args.until}", file=sys.stderr)
        return None
    d = args.run_dir
    if _campaign_folder(d):
        runs = sorted(e.path for e in os.scandir(d)
                      if os.path.isfile(os.path.join(e.path, RECORD_FILE)))
        print(f"smp {cmd}: {d}: a campaign's folder: {cmd} one of its runs: smp {cmd} "
              f"{os.path.join(d, 'RUN')}" + (f", e.g. smp {cmd} {runs[0]}" if runs else ""),
              file=sys.stderr)
        return None
    try:
        return how(args.run_dir, args.out, args.until or 0)  # type: ignore[no-any-return]
    except (ReplayError, RunDirError) as e:
        print(f"smp {cmd}: {e}", file=sys.stderr)
        return None


def _replay(args: argparse.Namespace) -> int:
    from smp.observe.report import summary_table
    from smp.run.replay import panicked_by, replay, until_outcome
    if args.force and args.out is None:         # RUN_DIR/replay-N is a new directory
        print("smp replay: --force needs --run-dir (it clears that directory's earlier "
              "run; without --run-dir a replay gets a new directory)", file=sys.stderr)
        return 2
    done = _run_replay("replay", functools.partial(replay, force=args.force,
                                                   watch=args.watch,
                                                   coverage=args.coverage), args)
    if done is None:
        return 2
    status, rep, out = done
    print(summary_table(rep))
    if args.watch:
        _print_watch(os.path.join(out, "watch.txt"), rep)
    sched = (rep.get("schedule") or {}).get("replay") or {}
    div = sched.get("divergence")
    if rep.get("interrupted"):
        print(f"replay {rep.get('reason', 'stopped')}: cut short, not compared with the "
              f"recorded run")
    elif div:
        print(f"replay DIVERGED: {div['message']}")
    elif args.until:
        files = (["crash.txt"] if panicked_by(rep, args.until) is not None else []) \
            + ["dump.txt"]
        print(f"replay {until_outcome(rep, args.until)}: "
              + ", ".join(os.path.join(out, f) for f in files))
    elif rep.get("replay_differences"):
        print("replay DIFFERS from the recorded run:")
        for d in rep["replay_differences"]:
            print(f"  {d}")
    else:
        lines = ", lines run" if sched.get("lines_compared") else ""
        print(f"replay identical: {sched.get('operations')} operations, the same kernel "
              f"counters, lock counts, clocks, findings{lines} and panic as the recorded "
              f"run")
        if sched.get("recorded_stop"):
            print(f"(the recorded run was {sched['recorded_stop']}: the replay ends where "
                  f"it stopped)")
    print(f"run directory: {out}")
    return status


def _print_watch(path: str, rep: dict[str, Any],
                 shown: tuple[list[str], int] | None = None) -> None:
    """``--watch``: the watched accesses (the first and last of many), and what each WHAT
    matched or why it matched nothing."""
    from smp.machine.watch import watch_lines
    if shown is None:
        try:
            shown = watch_lines(path)
        except OSError as e:
            err = ((rep.get("schedule") or {}).get("watch_error")
                   or f"{path}: {e.strerror}")
            print(f"watch: none written: {err}")
            return
    lines, n = shown
    print(f"watch: {n} accesses" + (f" ({path})" if path else ""))
    for line in lines:
        print(f"  {line}")


def _trace(args: argparse.Namespace) -> int:
    from smp.machine.trace import count_events
    from smp.run.replay import trace

    def log(line: str) -> None:
        """The replay's own lines, said as the trace's: its folder is a temporary one,
        and its verdict ("run FAILED") is the recorded run's, not the trace's."""
        if not line.startswith(("machine:", "run ")):
            print(f"smp trace: replaying: {line.strip().removeprefix('stopping: ')}",
                  file=sys.stderr, flush=True)
    done = _run_replay("trace", functools.partial(trace, log=log, watch=args.watch), args)
    if done is None:
        return 2
    status, rep, path = done
    if args.watch:
        _print_watch("", rep, rep.get("watch_lines") or ([], 0))
    sched = rep.get("schedule") or {}
    div = (sched.get("replay") or {}).get("divergence")
    if div:
        print(f"replay DIVERGED: {div['message']} (the trace ends there)")
    try:
        events = count_events(path)
    except OSError as e:
        print(f"smp trace: {path}: {e.strerror}", file=sys.stderr)
        return 2
    dropped = (sched.get("trace") or {}).get("dropped") or 0
    print(f"{path}: {events} events" + (f" ({dropped} more left out: the trace's limit)"
                                        if dropped else "")
          + (f"; PARTIAL: the replay was {rep.get('reason', 'stopped')}"
             if rep.get("interrupted") else ""))
    print("open it in https://ui.perfetto.dev (Open trace file), or chrome://tracing")
    return status


PLOT_EXTRA = ("matplotlib is not installed: smp plot needs smp's plotting extra, "
              "`pip install 'smp[plot]'` (from a clone: `pip install '.[plot]'`)")


def _plot(args: argparse.Namespace) -> int:
    try:
        from smp.observe.plot import PlotError, write_plots
    except ImportError as e:
        if e.name not in ("matplotlib", "numpy") and not str(e.name).startswith(
                ("matplotlib.", "numpy.")):
            raise
        print(f"smp plot: {PLOT_EXTRA}", file=sys.stderr)
        return 1
    try:
        paths = write_plots(args.run_dir)
    except PlotError as e:
        print(f"smp plot: {e}", file=sys.stderr)
        return 2
    except OSError as e:                       # a chart that cannot be written
        return _write_error("plot", e)
    except _UNREADABLE as e:                   # (report.json's own are caught where read)
        return _unreadable("plot", os.path.join(args.run_dir, "stats.jsonl"), e,
                           "a time series")
    for p in paths:
        print(p)
    return 0


def _read_report(run_dir: str, cmd: str, keys: Sequence[str] = ()) -> dict[str, Any] | None:
    """RUN_DIR/report.json (with ``keys``), or None after saying why not (on stderr)."""
    path = os.path.join(run_dir, "report.json")
    try:
        with open(path) as f:
            report = json.load(f)
    except FileNotFoundError:
        print(f"smp {cmd}: {path}: no such file (is {run_dir} a run directory?)",
              file=sys.stderr)
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        print(f"smp {cmd}: {path}: not valid JSON: {e}", file=sys.stderr)
        return None
    except OSError as e:                       # RUN_DIR a file, report.json a folder, ...
        print(f"smp {cmd}: {path}: cannot read it: {e.strerror}", file=sys.stderr)
        return None
    missing = [k for k in keys if not isinstance(report, dict) or k not in report]
    if not isinstance(report, dict) or missing:
        print(f"smp {cmd}: {path}: not a report of `smp run`"
              + (f" (no {', '.join(missing)})" if missing else ""), file=sys.stderr)
        return None
    return report


# what the code that reads a report.json (or stats.jsonl) raises for JSON of another shape
# than smp writes: `smp report`, witness, flame and plot say so in one line, not a traceback
_UNREADABLE = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _unreadable(cmd: str, path: str, e: Exception, what: str = "a report") -> int:
    """A file of ``cmd``'s run that is not of the shape smp writes: one line; exit 2."""
    print(f"smp {cmd}: {path}: {what} smp cannot read ({type(e).__name__}: {e})",
          file=sys.stderr)
    return 2


def _write_error(cmd: str, e: OSError) -> int:
    """An output of ``cmd`` that cannot be written: said in one line; exit status 2."""
    print(f"smp {cmd}: {e.filename or 'an output'}: cannot write it: {e.strerror or e}",
          file=sys.stderr)
    return 2


def _witness(args: argparse.Namespace) -> int:
    from smp.observe.lockgraph import WitnessError, lock_order, render_dot, show_witness, to_dot
    report = _read_report(args.run_dir, "witness")
    if report is None:
        return 2
    try:
        lo = lock_order(report)
        if args.dot is None:
            from smp.machine.sites import annotate
            print(annotate(show_witness(lo), (report.get("policy") or {}).get("sources")),
                  end="")
            return 0
        title = f"lock order: {os.path.basename(str(report.get('config') or '?'))}, " \
            f"seed {report.get('seed')}"
        dot = to_dot(lo, title)
    except WitnessError as e:
        print(f"smp witness: {args.run_dir}: {e}", file=sys.stderr)
        return 2
    except _UNREADABLE as e:
        return _unreadable("witness", os.path.join(args.run_dir, "report.json"), e)
    path = args.dot or os.path.join(args.run_dir, "witness.dot")
    try:
        with open(path, "w") as f:
            f.write(dot)
    except OSError as e:
        return _write_error("witness", e)
    print(path)
    import subprocess
    try:
        drawn = render_dot(path)
    except (subprocess.SubprocessError, OSError) as e:
        print(f"smp witness: Graphviz's dot failed: {e}", file=sys.stderr)
        return 1
    for p in drawn:
        print(p)
    if not drawn:
        print("smp witness: Graphviz's dot is not installed: no SVG or PNG (install "
              f"graphviz, or paste {path} into any Graphviz viewer)", file=sys.stderr)
    return 0


def _flame(args: argparse.Namespace) -> int:
    from smp.observe.flame import FlameError, folded, stacks, svg
    report = _read_report(args.run_dir, "flame", _REPORT_KEYS)
    if report is None:
        return 2
    try:
        lines = folded(stacks(report), args.weight)
    except FlameError as e:
        print(f"smp flame: {args.run_dir}: {e}", file=sys.stderr)
        return 2
    except _UNREADABLE as e:
        return _unreadable("flame", os.path.join(args.run_dir, "report.json"), e)
    try:
        if not lines:                    # said before any file is made
            raise FlameError("no lock waits with a stack to draw (no thread of the run "
                             "waited for a lock)")
        fpath = os.path.join(args.run_dir, "lock_waits.folded")
        with open(fpath, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        print(fpath)
        spath = os.path.join(args.run_dir, "lock_waits.svg")
        title = f"Lock waits: {os.path.basename(str(report.get('config') or '?'))}, " \
            f"seed {report.get('seed')}"
        try:
            svg(lines, spath, title, "us waited" if args.weight == "wait" else "waits")
        except ImportError as e:
            if e.name not in ("matplotlib", "numpy") and not str(e.name).startswith(
                    ("matplotlib.", "numpy.")):
                raise
            print(f"smp flame: no SVG: {PLOT_EXTRA} (or open {fpath} in speedscope)",
                  file=sys.stderr)
            return 0
        print(spath)
    except FlameError as e:
        print(f"smp flame: {args.run_dir}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        return _write_error("flame", e)
    return 0


def _check_fail_points(names: Sequence[str], origin: str) -> None:
    """Every name a known fail point; else a ConfigError naming ``origin`` (the config
    file, "--set" or "--fail-point")."""
    from smp.kernel.conf import kern_fail
    known = [fp.name for fp in kern_fail.fail_points()]
    what = "" if origin == "--fail-point" else "debug.fail_points: "
    for name in names:
        if name not in known:
            raise ConfigError(origin, "debug.fail_points",
                              f"{what}unknown fail point {name!r} "
                              f"(known: {', '.join(known)})")


def _report(args: argparse.Namespace) -> int:
    if args.table is not None and args.format in ("json", "folded"):
        print(f"smp report: --table is for --format text or csv, not {args.format}",
              file=sys.stderr)
        return 2
    if args.weight is not None and args.format != "folded":
        print("smp report: --weight is for --format folded", file=sys.stderr)
        return 2
    if _campaign_folder(args.run_dir):
        return _report_campaign(args)
    report = _read_report(args.run_dir, "report", _REPORT_KEYS)
    if report is None:
        return 2
    path = os.path.join(args.run_dir, "report.json")
    try:
        return _print_report(args, report)
    except _UNREADABLE as e:
        print(f"smp: {path}: a report smp cannot read ({type(e).__name__}: {e}); "
              f"--format json prints it as it is", file=sys.stderr)
        return 2


def _report_campaign(args: argparse.Namespace) -> int:
    """``smp report OUT`` on a campaign's folder: its campaign.json, as text or as is."""
    from smp.hunt.stress import CAMPAIGN_FILE, campaign_lines, read_campaign
    path = os.path.join(args.run_dir, CAMPAIGN_FILE)
    if args.format not in ("text", "json") or args.table is not None:
        print(f"smp report: {args.run_dir} is a campaign's folder: its summary is text or "
              f"json; the tables are a run's (smp report {args.run_dir}/RUN)",
              file=sys.stderr)
        return 2
    try:
        doc = read_campaign(args.run_dir)
        lines = campaign_lines(doc)
    except OSError as e:
        print(f"smp report: {path}: cannot read it: {e.strerror or e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError) as e:
        print(f"smp report: {path}: not a campaign record of smp stress ({e})",
              file=sys.stderr)
        return 2
    print(json.dumps(doc, indent=1) if args.format == "json" else "\n".join(lines))
    return 0


# what every report.json of `smp run` has (smp/observe/report.py)
_REPORT_KEYS = ("ok", "seed", "reason", "cpus", "locks", "kernel", "duration_sim_s")


def _print_report(args: argparse.Namespace, report: dict[str, object]) -> int:
    from smp.observe.report import summary_table
    if args.format == "json":
        print(json.dumps(report, indent=1))
    elif args.format == "folded":
        from smp.observe.flame import FlameError, folded, stacks
        try:
            lines = folded(stacks(report), args.weight or "wait")
        except FlameError as e:
            print(f"smp report: {args.run_dir}: {e}", file=sys.stderr)
            return 2
        for line in lines:
            print(line)
    elif args.format == "text" and args.table is not None:
        from smp.observe.export import text_table
        if args.table == "series":
            print("smp report: --table series is a time series: it needs --format csv",
                  file=sys.stderr)
            return 2
        print(text_table(report, args.table))
    elif args.format == "csv":
        from smp.observe.export import write_csv
        try:
            write_csv(args.run_dir, report, args.table or "cpus", sys.stdout)
        except FileNotFoundError as e:
            print(f"smp: {e.filename}: no such file", file=sys.stderr)
            return 2
        except BrokenPipeError:                   # `| head`: the reader has had enough
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    else:
        print(summary_table(report))
        for line in _replay_lines(args.run_dir, report):
            print(line)
    return 0


# the commands that take no config, and what runs each
_NO_CONFIG: dict[str, Callable[[argparse.Namespace], int]] = {
    "report": _report, "completion": _completion_code, "top": _top, "bench": _bench,
    "plot": _plot, "witness": _witness, "flame": _flame, "keys": _keys, "cpu": _cpu,
    "replay": _replay, "trace": _trace, "failpoints": _failpoints,
}

if __name__ == "__main__":
    sys.exit(main())
