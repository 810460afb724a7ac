"""Config loading: the shipped configs load, and every kind of bad input is refused
with one line naming the file, the key and what is allowed (smp/run/config.py)."""

from __future__ import annotations

import math
import pathlib
import pickle
import tomllib
from collections.abc import Callable

import pytest

from smp.run.config import (
    PARAM_BY_KEY,
    WALL_ONLY,
    PARAMS,
    Config,
    ConfigError,
    GiB,
    MiB,
    default_config_path,
    load_config,
    schema_markdown,
)

pytestmark = pytest.mark.quick

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(CONFIGS.glob("*.toml"))
MACHINE_KEYS = ("cpus, memory, swap, swap_latency_us, swap_write_latency_us, hz, time, quantum, "
                "speed, transport, lines, server_spin, kmem_objects")


Write = Callable[[str], str]


@pytest.fixture
def write(tmp_path: pathlib.Path) -> Write:
    """Write TOML text to a file and return its path as a string."""

    def _write(text: str) -> str:
        path = tmp_path / "x.toml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    return _write


def error_of(path: str | None, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert "\n" not in str(info.value)
    return info.value


# --- the shipped configs ------------------------------------------------------------

def test_the_named_configs_are_shipped() -> None:
    names = {p.name for p in SHIPPED}
    assert {"default.toml", "1cpu.toml", "2cpu.toml", "8cpu.toml", "32cpu.toml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path: pathlib.Path) -> None:
    cfg = load_config(path)
    assert cfg.source == str(path)
    assert set(cfg) == set(PARAM_BY_KEY)


@pytest.mark.parametrize(("name", "cpus", "duration", "kthreads"), [
    ("1cpu.toml", 1, 20.0, 1),
    ("2cpu.toml", 2, 20.0, 1),
    ("8cpu.toml", 8, 10.0, 1),
    ("32cpu.toml", 32, 5.0, 1),
])
def test_shipped_config_values(name: str, cpus: int, duration: float, kthreads: int) -> None:
    cfg = load_config(CONFIGS / name)
    assert (cfg["machine.cpus"], cfg["run.duration"], cfg["workload.kthreads"]) == \
        (cpus, duration, kthreads)


def test_the_2002_config_is_the_2002_kernel_throughout() -> None:
    """configs/freebsd-5.0.toml: the 2002 _PHOLD (F1 can fire), the daemons on any CPU,
    the vm sysctls at the 2002 kernel's own defaults, every detector on."""
    cfg = load_config(CONFIGS / "freebsd-5.0.toml")
    assert cfg["kern.phold"] == "first_hold"
    assert cfg["kern.kthread_placement"] == "spread"
    assert (cfg["vm.swap_idle_threshold1"], cfg["vm.swap_idle_threshold2"],
            cfg["vm.swap_enabled"], cfg["vm.swap_idle_enabled"]) == (2, 10, True, False)
    assert all(cfg[k] for k in ("debug.witness", "debug.deadlock", "debug.lockkeys"))
    assert not cfg["debug.fail_points"]


def test_the_f2_hunt_config_is_the_stress_kernel_with_another_user_land() -> None:
    """configs/hunt-f2.toml (benchmarks/detection.py --hunt F2-hang) may change which
    programs run and the clocks' quantum, never the kernel: every kern., vm. and debug.
    key, the memory and the CPUs are configs/stress.toml's."""
    hunt, stress = load_config(CONFIGS / "hunt-f2.toml"), load_config(CONFIGS / "stress.toml")
    same = [k for k in PARAM_BY_KEY
            if k.split(".")[0] in ("kern", "vm", "debug", "cost")
            or k in ("machine.cpus", "machine.memory", "machine.swap",
                     "machine.swap_latency_us", "machine.hz", "run.duration")]
    assert {k: hunt[k] for k in same} == {k: stress[k] for k in same}
    assert hunt["user.debugger"] == 0 and hunt["user.napper"] > stress["user.napper"]


def test_default_toml_spells_out_exactly_the_declared_defaults() -> None:
    raw = tomllib.loads(default_config_path().read_text(encoding="utf-8"))
    keys = {f"{section}.{name}" for section, table in raw.items() for name in table}
    # every key but those a virtual-time config may not set (the default is virtual time)
    assert keys == set(PARAM_BY_KEY) - set(WALL_ONLY)
    cfg = load_config(None)
    for p in PARAMS:
        assert cfg[p.key] == p.coerce(p.default), p.key
    assert cfg.source.endswith("default.toml")


# --- defaults and types -------------------------------------------------------------

def test_empty_file_gives_the_defaults(write: Write) -> None:
    cfg = load_config(write(""))
    assert cfg["machine.cpus"] == 4
    assert cfg["machine.memory"] == 2 * MiB
    assert cfg["machine.swap"] == 32 * MiB
    assert cfg["machine.transport"] == "ipc"
    assert cfg["run.seed"] == 1
    assert cfg["run.duration"] == 20.0 and isinstance(cfg["run.duration"], float)
    assert cfg["vm.swap_enabled"] is True
    assert cfg["vm.swap_idle_enabled"] is False
    assert cfg["debug.fail_points"] == ()
    assert cfg == load_config(None)


@pytest.mark.parametrize(("text", "nbytes"), [
    ('"16M"', 16 * MiB),
    ('"1G"', GiB),
    ("4096", 4096),
    ('"16MiB"', 16 * MiB),
    ('"16MB"', 16 * MiB),
    ('"16mib"', 16 * MiB),
    ('"2048k"', 2 * MiB),
    ('"16G"', 16 * GiB),
    ('"2097152"', 2 * MiB),
    ('" 8 M "', 8 * MiB),
    ("0", 0),
])
def test_size_parsing(write: Write, text: str, nbytes: int) -> None:
    assert load_config(write(f"[machine]\nswap = {text}\n"))["machine.swap"] == nbytes


@pytest.mark.parametrize("text", ['"16X"', '"1.5G"', '"M"', '""', "true", "16.0", '"-1M"'])
def test_bad_sizes_are_refused(write: Write, text: str) -> None:
    path = write(f"[machine]\nmemory = {text}\n")
    e = error_of(path)
    assert (e.file, e.key) == (path, "machine.memory")
    assert str(e).startswith(f"{path}: machine.memory: must be a size from 1M to 4G")


def test_float_accepts_an_integer(write: Write) -> None:
    speed = load_config(write("[machine]\ntime = \"wall\"\nspeed = 2\n"))["machine.speed"]
    assert speed == 2.0 and isinstance(speed, float)


# --- errors -------------------------------------------------------------------------

def test_unknown_key_names_file_key_and_allowed(write: Write) -> None:
    path = write("[machine]\ncpu = 4\n")
    e = error_of(path)
    assert (e.file, e.key) == (path, "machine.cpu")
    assert str(e) == f'{path}: unknown key "machine.cpu" (allowed in [machine]: {MACHINE_KEYS})'


def test_sysctl_names_are_kept(write: Write) -> None:
    cfg = load_config(write("[vm]\nswap_idle_threshold1 = 7\n"))
    assert cfg["vm.swap_idle_threshold1"] == 7
    e = error_of(write("[vm]\nswap_idle_threshold = 7\n"))
    assert "swap_idle_threshold1, swap_idle_threshold2" in str(e)


def test_unknown_section(write: Write) -> None:
    path = write("[machin]\ncpus = 4\n")
    e = error_of(path)
    assert e.key == "machin"
    assert str(e) == f"{path}: unknown section [machin] (sections: machine, run, cost, workload, user, kern, vm, debug)"


def test_top_level_key_and_non_table_section(write: Write) -> None:
    path = write("cpus = 4\n")
    assert str(error_of(path)).startswith(f'{path}: unknown key "cpus" at top level')
    path = write('machine = 3\n')
    assert str(error_of(path)) == f"{path}: machine: must be a table [machine], got 3"


def test_nested_table_is_an_unknown_key(write: Write) -> None:
    e = error_of(write("[machine.cpus]\nn = 4\n"))
    assert e.key == "machine.cpus"
    assert "must be an integer" in str(e) and "got a table" in str(e)


@pytest.mark.parametrize(("text", "message"), [
    ('[machine]\ncpus = "four"', 'machine.cpus: must be an integer from 1 to 64, got "four"'),
    ("[machine]\ncpus = 4.0", "machine.cpus: must be an integer from 1 to 64, got 4.0"),
    ("[machine]\ncpus = true", "machine.cpus: must be an integer from 1 to 64, got true"),
    ("[vm]\nswap_enabled = 1", "vm.swap_enabled: must be true or false, got 1"),
    ('[vm]\nswap_enabled = "yes"', 'vm.swap_enabled: must be true or false, got "yes"'),
    ("[run]\ndir = 3", "run.dir: must be a string, got 3"),
    ('[debug]\nfail_points = "PRS_NEW"',
     'debug.fail_points: must be a list of strings, got "PRS_NEW"'),
    ("[debug]\nfail_points = [1]", "debug.fail_points: must be a list of strings, got [1]"),
    ("[run]\nduration = 1979-05-27",
     "run.duration: must be a number from 0.1 to 86400 (sim s), got 1979-05-27"),
])
def test_wrong_type(write: Write, text: str, message: str) -> None:
    path = write(text + "\n")
    assert str(error_of(path)) == f"{path}: {message}"


@pytest.mark.parametrize(("text", "message"), [
    ("[machine]\ncpus = 0", "machine.cpus: must be an integer from 1 to 64, got 0"),
    ("[machine]\ncpus = 65", "machine.cpus: must be an integer from 1 to 64, got 65"),
    ("[machine]\nhz = 5", "machine.hz: must be an integer from 10 to 1000 (Hz), got 5"),
    ('[machine]\nmemory = "8G"', 'machine.memory: must be a size from 1M to 4G'),
    ('[machine]\nmemory = "1023K"', 'machine.memory: must be a size from 1M to 4G'),
    ("[machine]\nspeed = nan", "machine.speed: must be a number from 0.01 to 100"),
    ("[machine]\nspeed = inf", "machine.speed: must be a number from 0.01 to 100"),
    ("[workload]\nsleep_prob = 1.5", "workload.sleep_prob: must be a number from 0 to 1, got 1.5"),
    ("[run]\nseed = -1", "run.seed: must be an integer from 0 to 9223372036854775807, got -1"),
    ('[machine]\ntransport = "udp"',
     'machine.transport: must be one of "ipc", "tcp", got "udp"'),
])
def test_out_of_range(write: Write, text: str, message: str) -> None:
    path = write(text + "\n")
    assert str(error_of(path)).startswith(f"{path}: {message}")


def test_range_bounds_are_inclusive(write: Write) -> None:
    cfg = load_config(write('[machine]\ncpus = 64\nmemory = "4G"\nswap = 0\n'
                            "[workload]\nsleep_prob = 1\n"))
    assert (cfg["machine.cpus"], cfg["machine.memory"], cfg["machine.swap"]) == (64, 4 * GiB, 0)


def test_bad_toml(write: Write) -> None:
    path = write("[machine\ncpus = 4\n")
    e = error_of(path)
    assert e.key is None
    assert str(e).startswith(f"{path}: not valid TOML: ")
    assert "line 1" in str(e)


def test_duplicate_key_is_bad_toml(write: Write) -> None:
    path = write("[machine]\ncpus = 4\ncpus = 5\n")
    assert str(error_of(path)).startswith(f"{path}: not valid TOML: ")


def test_not_utf8(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "bin.toml"
    path.write_bytes(b"[machine]\ncpus = 4 # \xff\n")
    assert str(error_of(str(path))).startswith(f"{path}: not valid TOML: not UTF-8")


def test_missing_file(tmp_path: pathlib.Path) -> None:
    path = str(tmp_path / "nope.toml")
    assert str(error_of(path)) == f"{path}: no such config file"
    assert str(error_of(str(tmp_path))).startswith(f"{tmp_path}: is a directory")
    # a shipped config named by its path in a clone, from outside one: where it ships
    from smp.run.config import default_config_path
    shipped = str(default_config_path()).replace("default.toml", "stress.toml")
    assert str(error_of(str(tmp_path / "configs" / "stress.toml"))) == \
        f"{tmp_path / 'configs' / 'stress.toml'}: no such config file (smp ships one by " \
        f"that name: {shipped})"


def test_config_error_pickles() -> None:
    e = ConfigError("configs/x.toml", "machine.cpus", "machine.cpus: must be ...")
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.file, e2.key, str(e2)) == (e.file, e.key, str(e))


# --- overrides ----------------------------------------------------------------------

def test_overrides(write: Write) -> None:
    path = write("[machine]\ncpus = 2\n")
    cfg = load_config(path, [
        "machine.cpus=8",
        "machine.memory=32M",
        "machine.transport= tcp ",
        " machine.hz = 250 ",
        "run.dir=out/with spaces",
        "run.seed=5",
        "run.seed=6",
        "vm.swap_enabled=false",
        "debug.fail_points=['PRS_NEW', \"P_SYSTEM\"]",
    ])
    assert cfg["machine.cpus"] == 8
    assert cfg["machine.memory"] == 32 * MiB
    assert cfg["machine.transport"] == "tcp"
    assert cfg["machine.hz"] == 250
    assert cfg["run.dir"] == "out/with spaces"
    assert cfg["run.seed"] == 6
    assert cfg["vm.swap_enabled"] is False
    assert cfg["debug.fail_points"] == ("PRS_NEW", "P_SYSTEM")
    assert cfg.source == path


def test_override_that_is_not_one_toml_value_is_a_string() -> None:
    cfg = load_config(None, ["run.dir=1\nx = 2"])
    assert cfg["run.dir"] == "1\nx = 2"


@pytest.mark.parametrize(("override", "key", "message"), [
    ("machine.cpus", "machine.cpus", '"machine.cpus": expected section.name=value'),
    ("=4", None, '"=4": expected section.name=value'),
    ("machine.cpu=4", "machine.cpu",
     f'unknown key "machine.cpu" (allowed in [machine]: {MACHINE_KEYS})'),
    ("seed=4", "seed", 'unknown key "seed" (keys are section.name; sections: '),
    ("machine.cpus=four", "machine.cpus",
     'machine.cpus: must be an integer from 1 to 64, got "four"'),
    ("machine.cpus=", "machine.cpus", 'machine.cpus: must be an integer from 1 to 64, got ""'),
    ("vm.swap_enabled=1", "vm.swap_enabled", "vm.swap_enabled: must be true or false, got 1"),
])
def test_override_failures(override: str, key: str | None, message: str) -> None:
    e = error_of(None, (override,))
    assert (e.file, e.key) == ("--set", key)
    assert str(e).startswith(f"--set: {message}")


def test_overrides_must_be_a_sequence_not_a_string() -> None:
    with pytest.raises(TypeError):
        load_config(None, "machine.cpus=2")


def test_a_bad_file_value_is_blamed_on_the_file_even_if_overridden(write: Write) -> None:
    path = write("[machine]\ncpus = 0\n")
    assert error_of(path, ("machine.cpus=2",)).file == path


# --- the Config object --------------------------------------------------------------

def test_config_is_immutable_and_strict() -> None:
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.source = "x"  # type: ignore[misc]
    with pytest.raises(KeyError, match="machine.cpu"):
        cfg["machine.cpu"]
    with pytest.raises(KeyError):
        cfg.get("nope")
    assert cfg.get("machine.cpus") == cfg["machine.cpus"] == 4
    assert "machine.cpus" in cfg and "machine.cpu" not in cfg
    with pytest.raises(ValueError):
        Config({"machine.cpus": 4}, "x")


def test_with_values_returns_a_new_checked_config() -> None:
    cfg = load_config(None)
    cfg2 = cfg.with_values({"run.seed": 5, "machine.swap": "64M"})
    assert (cfg2["run.seed"], cfg2["machine.swap"]) == (5, 64 * MiB)
    assert (cfg["run.seed"], cfg["machine.swap"]) == (1, 32 * MiB)
    assert cfg2 != cfg and cfg2.source == cfg.source
    assert cfg.with_values({"run.seed": 1}) == cfg
    assert hash(cfg.with_values({"run.seed": 1})) == hash(cfg)
    with pytest.raises(ConfigError) as info:
        cfg.with_values({"run.seed": -3}, origin="--seed")
    assert str(info.value) == "--seed: run.seed: must be an integer from 0 to " \
        "9223372036854775807, got -3"


def test_as_dict_is_nested_and_sorted() -> None:
    tree = load_config(CONFIGS / "8cpu.toml").as_dict()
    assert list(tree) == sorted(tree) == ["cost", "debug", "kern", "machine", "run", "user", "vm",
                                          "workload"]
    for table in tree.values():
        assert list(table) == sorted(table)
    assert tree["machine"]["cpus"] == 8
    assert tree["debug"]["fail_points"] == []


def test_to_toml_round_trips() -> None:
    cfg = load_config(None).with_values({
        "machine.memory": "64M",
        "machine.time": "wall",
        "machine.speed": 0.25,
        "run.seed": 2**63 - 1,
        "run.dir": 'we"ird\\path\n\t\x7f\u00e9\U0001f600',
        "debug.fail_points": ["PRS_NEW", "vm_map_trylock"],
        "vm.swap_idle_enabled": True,
    })
    text = cfg.to_toml()
    assert tomllib.loads(text) == cfg.as_dict()
    assert text.startswith("#")
    # The resolved config is itself a loadable config with the same values.
    assert load_config(None, ()).with_values(
        {f"{s}.{n}": v for s, t in tomllib.loads(text).items() for n, v in t.items()}) == cfg


def test_to_toml_is_sorted_and_takes_extras(tmp_path: pathlib.Path) -> None:
    cfg = load_config(None)
    text = cfg.to_toml({"run": {"version": "0.1.0", "commit": "f00"}, "meta": {"id": "abc"}})
    doc = tomllib.loads(text)
    assert doc["run"]["version"] == "0.1.0" and doc["meta"]["id"] == "abc"
    assert list(doc) == sorted(doc)
    for table in doc.values():
        assert list(table) == sorted(table)
    # Without extras, the written file loads back to the same config.
    path = tmp_path / "resolved.toml"
    path.write_text(cfg.to_toml(), encoding="utf-8")
    assert load_config(path) == cfg
    with pytest.raises(ValueError):
        cfg.to_toml({"run": {"seed": 9}})


def test_to_toml_writes_special_floats() -> None:
    from smp.run.config import _toml_value

    assert math.isinf(tomllib.loads("v = " + _toml_value(float("-inf")))["v"])
    assert tomllib.loads("v = " + _toml_value(1e-300))["v"] == 1e-300


# --- the declarations ---------------------------------------------------------------

def test_schema_markdown_mentions_every_key() -> None:
    md = schema_markdown()
    lines = md.strip().splitlines()
    assert lines[0].startswith("| key | type | default | unit | allowed | description")
    assert len(lines) == len(PARAMS) + 2
    for p in PARAMS:
        assert f"`{p.key}`" in md and p.desc.replace("|", "\\|") in md


def test_declarations_are_checked_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from smp.run import config

    config._check_declarations()
    monkeypatch.setattr(config, "PARAMS", PARAMS + (PARAMS[0],))
    with pytest.raises(RuntimeError, match="declared twice"):
        config._check_declarations()
    bad = dataclasses.replace(PARAMS[0], default=0)
    monkeypatch.setattr(config, "PARAMS", (bad,) + PARAMS[1:])
    with pytest.raises(RuntimeError, match="machine.cpus"):
        config._check_declarations()


def test_declarations() -> None:
    assert len(PARAM_BY_KEY) == len(PARAMS) == 58
    assert PARAM_BY_KEY["vm.swap_idle_threshold1"].section == "vm"
    assert PARAM_BY_KEY["vm.swap_idle_threshold1"].name == "swap_idle_threshold1"
    for p in PARAMS:
        assert p.desc and "\n" not in p.desc
        assert p.type in ("int", "float", "bool", "str", "size", "duration", "list[str]")


def test_durations_take_units_and_resolve_to_nanoseconds(write: Write) -> None:
    cfg = load_config(write('[machine]\nquantum = "250us"\n[cost]\ncall = "1ms"\n'
                            'post = 1500\n'))
    assert (cfg["machine.quantum"], cfg["cost.call"], cfg["cost.post"]) == \
        (250_000, 1_000_000, 1500)
    e = error_of(write('[machine]\nquantum = "fast"\n'))
    assert e.key == "machine.quantum" and "a duration from 10us to 1s" in str(e)


def test_speed_is_refused_in_virtual_time_and_named(write: Write) -> None:
    e = error_of(write("[machine]\nspeed = 2\n"))
    assert e.key == "machine.speed" and "wall time only" in str(e)
    with pytest.raises(ConfigError, match=r"^--set: machine.speed applies to wall time"):
        load_config(None, ["machine.speed=2"])
    assert load_config(None, ["machine.time=wall", "machine.speed=2"])["machine.speed"] == 2.0
    # the resolved config of a virtual-time run leaves the key out, so it reloads
    text = load_config(None).to_toml()
    assert "speed" not in text and load_config(write(text))["machine.time"] == "virtual"


def test_docs_config_md_is_current() -> None:
    """docs/CONFIG.md is generated; regenerate it with `smp config --schema`."""
    from smp.cli import config_doc
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "CONFIG.md").read_text()
    assert doc == config_doc(), "docs/CONFIG.md is stale: run `smp config --schema > docs/CONFIG.md`"


def test_init_starts_programs_in_proportion_to_their_weights() -> None:
    """user.* weights: every cycle of sum(weights) starts has exactly the configured mix;
    the seed only chooses where in the cycle each CPU's init begins."""
    import collections
    import random
    from smp.kernel.userland.programs import PROGRAMS, program_mix
    weights = [3, 4, 2, 1, 2, 2, 1]
    starts = set()
    for seed in range(6):
        mix = program_mix(weights, random.Random(seed))
        seq = [next(mix) for _ in range(5 * sum(weights))]
        for k in range(0, len(seq), sum(weights)):
            assert collections.Counter(seq[k:k + sum(weights)]) == dict(zip(PROGRAMS, weights))
        starts.add(tuple(seq[:4]))
    assert len(starts) > 1
    assert list(program_mix([0] * len(PROGRAMS), random.Random(1))) == []
