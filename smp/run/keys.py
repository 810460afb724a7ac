"""CURVE keys for a machine whose CPUs run on other hosts (``smp keys DIR --cpus IDS``).

A server that listens beyond the loopback authenticates every peer with ZeroMQ's CURVE
mechanism (RFC 26: encryption and a public-key handshake) and accepts only the clients whose
public keys it was given. Each key is *bound to CPU ids*: a CPU may join only as an id its
key is bound to (a key that holds ids 2-3 cannot take cpu 5), so one leaked key cannot
take every free CPU. One key directory holds everything::

    DIR/server.key            the server's public key      (copy it to every CPU host)
    DIR/server.key_secret     the server's secret key      (the server host only)
    DIR/cpu2-3.key            a CPU host's public key, bound to cpus 2 and 3
    DIR/cpu2-3.key_secret     its secret key               (copy it to that host only)
    DIR/authorized/           the public keys the server accepts, each with its ids

``smp keys DIR`` makes the server's pair (and ``authorized/``); ``smp keys DIR --cpus 2-3``
adds a client pair bound to cpus 2 and 3 (``--cpus 2`` one CPU; ``1,4-6`` a list;
``--name NAME`` names the files, ``cpu<IDS>`` by default) and authorizes it. The binding
is written into the key files themselves (their ZPL ``metadata`` section: ``cpus =
"2-3"``), so ``authorized/`` is the one place that says who may be which CPU: removing a
file there revokes that key.

``smp run --listen ... --key-dir DIR`` needs ``server.key_secret`` and ``authorized/``;
``smp cpu --join ... --id K --key-dir DIR`` needs ``server.key`` and a secret key bound
to K (it picks the one in DIR whose ids hold K). The server refuses a HELLO whose CPU id
the connection's key is not bound to, or that another CPU holds already, with a message
that the joining CPU prints at once (``smp.run.remote``). Keys made before ids were bound
(``client.key``) are bound to none. The directory is 0700 and the secret files 0600.
"""

from __future__ import annotations

import os
import re
import shutil

import zmq
import zmq.auth

from smp.run.config import PARAM_BY_KEY

MAX_CPUS = int(PARAM_BY_KEY["machine.cpus"].max)       # the largest machine there is


class KeyDirError(Exception):
    """A key directory is missing or lacks a file it needs (the message names it)."""


def parse_ids(spec: str) -> frozenset[int]:
    """The CPU ids of "2", "2-5" or "1,4-6"; ValueError says what is wrong."""
    ids: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"{spec!r}: CPU ids are like 2, 2-5 or 1,4-6")
        a, b = int(lo), int(hi) if dash else int(lo)
        if b < a or b - a > 4096:
            raise ValueError(f"{spec!r}: {part} is not a range of CPU ids")
        ids.update(range(a, b + 1))
    return frozenset(ids)


def create_keys(d: str, cpus: str | None = None, name: str | None = None) -> list[str]:
    """Make the server's key pair in ``d`` (made if needed) if it has none, and with
    ``cpus`` a client key pair bound to those CPU ids, authorized. Existing keys are
    refused, never overwritten. Returns the files written."""
    out: list[str] = []
    have_server = os.path.exists(os.path.join(d, "server.key_secret"))
    if have_server and cpus is None:
        raise KeyDirError(f"{d}: already holds keys (server.key_secret); not overwritten. "
                          f"Add a CPU's key with `smp keys {d} --cpus IDS`")
    ids = None
    if cpus is not None:
        try:
            ids = parse_ids(cpus)
            if max(ids) >= MAX_CPUS:         # a key read back keeps what it was bound to
                raise ValueError(f"{cpus!r}: a machine has at most {MAX_CPUS} CPUs (ids "
                                 f"0..{MAX_CPUS - 1}: machine.cpus)")
        except ValueError as e:
            raise KeyDirError(f"--cpus {e}") from None
        name = name or "cpu" + cpus.replace(" ", "").replace(",", "_")
        if not all(c.isalnum() or c in "-_." for c in name) or name.startswith((".", "server")):
            raise KeyDirError(f"--name {name!r}: letters, digits, - _ . only (not server)")
        if os.path.exists(os.path.join(d, f"{name}.key_secret")):
            raise KeyDirError(f"{d}: already holds {name}.key_secret; not overwritten")
    os.makedirs(os.path.join(d, "authorized"), exist_ok=True)
    os.chmod(d, 0o700)
    if not have_server:
        pub, sec = zmq.auth.create_certificates(d, "server")
        os.chmod(sec, 0o600)
        out += [pub, sec]
    if ids is not None and name is not None:
        spec = _spec(ids)
        pub, sec = zmq.auth.create_certificates(d, name, metadata={"cpus": f'"{spec}"'})
        os.chmod(sec, 0o600)
        _bind_public(pub, spec)
        auth = os.path.join(d, "authorized", f"{name}.key")
        shutil.copyfile(pub, auth)
        out += [pub, sec, auth]
    return out


def _bind_public(path: str, spec: str) -> None:
    """Write the binding into a public key file too (pyzmq writes metadata only into
    the secret one): the server reads it from authorized/."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if key_ids(path):
        return
    if "\nmetadata\n" not in text:
        raise KeyDirError(f"{path}: not a key file pyzmq wrote (no metadata section)")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace("\nmetadata\n", f'\nmetadata\n    cpus = "{spec}"\n', 1))


def _spec(ids: frozenset[int]) -> str:
    """"2-3,7" for {2, 3, 7}."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


_CPUS_RE = re.compile(r'^\s+cpus\s*=\s*"?([^"\n]*?)"?\s*$', re.MULTILINE)


def key_ids(path: str) -> frozenset[int]:
    """The CPU ids a key file (public or secret) is bound to: empty if none."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return frozenset()
    head = text.split("\ncurve", 1)[0]            # the metadata section comes first
    m = _CPUS_RE.search(head)
    if m is None:
        return frozenset()
    try:
        return parse_ids(m.group(1))
    except ValueError:
        return frozenset()


def key_bindings(authorized: str) -> dict[str, tuple[str, frozenset[int]]]:
    """For the server: each authorized public key (z85 text, as ZAP's User-Id gives it)
    -> (its file name, the CPU ids it is bound to)."""
    out: dict[str, tuple[str, frozenset[int]]] = {}
    for name in sorted(os.listdir(authorized)):
        if not name.endswith(".key"):
            continue
        path = os.path.join(authorized, name)
        try:
            pub, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            continue
        out[pub.decode()] = (name, key_ids(path))
    return out


def _need(d: str, name: str) -> str:
    path = os.path.join(d, name)
    if not os.path.exists(path):
        raise KeyDirError(f"{d}: no {name} (make a key directory with `smp keys DIR`)")
    return path


def server_keys(d: str) -> tuple[bytes, bytes, str]:
    """(public, secret, authorized dir) for the server; KeyDirError if incomplete."""
    pub, sec = zmq.auth.load_certificate(_need(d, "server.key_secret"))
    auth = _need(d, "authorized")
    if not any(f.endswith(".key") for f in os.listdir(auth)):
        raise KeyDirError(f"{auth}: no client public key (*.key): no CPU could join")
    if not any(ids for _, ids in key_bindings(auth).values()):
        raise KeyDirError(f"{auth}: no key there is bound to a CPU id (keys made before "
                          f"ids were bound?): make one with `smp keys {d} --cpus IDS`")
    assert sec is not None
    return pub, sec, auth


def client_keys(d: str, cpu: int | None = None) -> dict[str, bytes]:
    """What ``smp.hw.bus.Bus(curve=...)`` takes: our pair and the server's public key. With
    ``cpu``: the secret key in ``d`` bound to that CPU id (KeyDirError if none, or more
    than one)."""
    if cpu is None:
        path = _need(d, "client.key_secret")
    else:
        try:
            names = sorted(f for f in os.listdir(d)
                           if f.endswith(".key_secret") and f != "server.key_secret")
        except OSError as e:
            raise KeyDirError(f"{d}: {e.strerror}") from None
        fits = [f for f in names if cpu in key_ids(os.path.join(d, f))]
        if not fits:
            raise KeyDirError(f"{d}: no secret key bound to cpu {cpu} (it has "
                              f"{', '.join(names) or 'none'}); make one on the server host "
                              f"with `smp keys DIR --cpus {cpu}`")
        if len(fits) > 1:
            raise KeyDirError(f"{d}: more than one key is bound to cpu {cpu} "
                              f"({', '.join(fits)}); keep one")
        path = os.path.join(d, fits[0])
    pub, sec = zmq.auth.load_certificate(path)
    server, _ = zmq.auth.load_certificate(_need(d, "server.key"))
    assert sec is not None
    return {"public": pub, "secret": sec, "server": server}


def has_curve() -> bool:
    return bool(zmq.has("curve"))
