"""CURVE keys for a machine whose CPUs run on other hosts (``smp keys DIR``).

A server that listens beyond the loopback authenticates every peer with ZeroMQ's CURVE
mechanism (RFC 26: encryption and a public-key handshake) and accepts only the clients whose
public keys it was given. One key directory holds everything, made by :func:`create_keys`
with ``zmq.auth.create_certificates``::

    DIR/server.key          the server's public key       (copy it to every CPU host)
    DIR/server.key_secret   the server's secret key       (the server host only)
    DIR/client.key          a CPU's public key
    DIR/client.key_secret   a CPU's secret key            (copy it to every CPU host)
    DIR/authorized/         the public keys the server accepts (client.key to begin with)

``smp run --listen ... --key-dir DIR`` needs ``server.key_secret`` and ``authorized/``;
``smp cpu --join ... --key-dir DIR`` needs ``client.key_secret`` and ``server.key``. A CPU
host may also get its own pair: ``smp keys`` it elsewhere, put its ``client.key`` into
the server's ``authorized/`` and its ``server.key`` next to it. The directory is 0700 and
the secret files 0600.
"""

from __future__ import annotations

import os
import shutil

import zmq
import zmq.auth


class KeyDirError(Exception):
    """A key directory is missing or lacks a file it needs (the message names it)."""


def create_keys(d: str) -> list[str]:
    """Create a server and a client key pair in ``d`` (made if needed; existing keys are
    refused, never overwritten). Returns the files written."""
    if os.path.exists(os.path.join(d, "server.key_secret")):
        raise KeyDirError(f"{d}: already holds keys (server.key_secret); not overwritten")
    os.makedirs(os.path.join(d, "authorized"), exist_ok=True)
    os.chmod(d, 0o700)
    out = []
    for name in ("server", "client"):
        pub, sec = zmq.auth.create_certificates(d, name)
        os.chmod(sec, 0o600)
        out += [pub, sec]
    auth = os.path.join(d, "authorized", "client.key")
    shutil.copyfile(os.path.join(d, "client.key"), auth)
    out.append(auth)
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
    assert sec is not None
    return pub, sec, auth


def client_keys(d: str) -> dict[str, bytes]:
    """What ``hw.bus.Bus(curve=...)`` takes: our pair and the server's public key."""
    pub, sec = zmq.auth.load_certificate(_need(d, "client.key_secret"))
    server, _ = zmq.auth.load_certificate(_need(d, "server.key"))
    assert sec is not None
    return {"public": pub, "secret": sec, "server": server}


def has_curve() -> bool:
    return bool(zmq.has("curve"))
