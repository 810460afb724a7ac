"""CPUs on other hosts: ``smp run --listen tcp://ADDR:PORT`` and ``smp cpu --join``.

By default the machine is private to its host (DESIGN.md, "What must always hold"): the
server binds an ipc endpoint in a 0700 directory, or tcp on 127.0.0.1. With ``--listen``
the server binds a second endpoint, the *listen* endpoint, to which CPUs on other hosts
connect; the launcher, the local CPUs and the stats stream keep the private endpoints.

Who may listen where. A loopback address (127.0.0.0/8, ::1, localhost) needs nothing more.
Any other address (including ``*`` and 0.0.0.0) is refused unless a key directory
(:mod:`smp.run.keys`) is given; then the listen endpoint speaks CURVE and accepts only the CPUs
whose public keys are in the directory's ``authorized/``, each only as the CPU ids its key
is bound to (:func:`check_hello`: the server learns a connection's key from ZAP's User-Id
and checks it at HELLO). The address and the keys are checked before anything starts
(:func:`check_listen`: exit status 2).

Authentication runs in a thread. The server is one thread by design (it is the machine's
linearisation point), but CURVE's client check goes through ZAP, a REP socket the ZeroMQ
library queries during each handshake. ``zmq.auth.thread.ThreadAuthenticator`` answers it
in a background thread of the server process. That thread only answers "is this public key
in authorized/?" and never touches machine state, so every request still runs on the main
thread, one at a time. The thread answers only when a connection is made, not on each
message, so it costs nothing while the machine runs. The CURVE options are set on the
ROUTER *after* it has bound the private endpoint: libzmq copies a socket's options into each
listener when it binds, so only the listen endpoint asks for keys (the local CPUs are not
encrypted).

Joining (:func:`join_main`). ``smp cpu --join ENDPOINT --id K --key-dir DIR`` first waits
for a CURVE handshake on a probe socket (this yields a clear message for a refused key
instead of silence), then runs the ordinary CPU (``smp.machine.cpuproc.cpu_main``) with the client
keys. It gets the run's resolved config and the server's clock in the HELLO reply, and
gets no parent-death signal: it is the top process on its host, and the server's silence
ends it. Its death ends the run in turn: the server reports a CPU silent for
``PEER_LOST_S`` as STALLED, as for a local one.

Clocks. Simulated time is computed from the server's host clock (``smp.hw.clock``). A CPU on
another host maps the server's ``time.monotonic()`` to its own with the offset that it
measures around its HELLO (half a round trip of error, microseconds on a LAN).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
import sys
import time
from typing import Any

import zmq
import zmq.utils.monitor

from smp.hw.protocol import LIVENESS_S
from smp.run.keys import KeyDirError, client_keys, key_bindings, server_keys

DEFAULT_JOIN_TIMEOUT = 60.0


class RemoteError(Exception):
    """A bad --listen / --join request (the message says what to do); exit status 2."""


@dataclasses.dataclass(frozen=True)
class ListenSpec:
    """How a run takes CPUs from other hosts (``smp run --listen``)."""

    endpoint: str                 # tcp://ADDR:PORT
    local_cpus: int               # CPUs 0..local_cpus-1 start here; the rest join
    key_dir: str | None           # CURVE keys (smp.run.keys); None: no authentication
    join_timeout: float           # how long the launcher waits for every CPU's HELLO

    @property
    def wildcard(self) -> bool:
        """Whether it listens on every address of this host (0.0.0.0, ``*``, ``::``)."""
        return parse_tcp(self.endpoint)[0] in ("0.0.0.0", "*", "::")

    @property
    def join_endpoint(self) -> str:
        """What a CPU on another host passes to ``smp cpu --join``: the endpoint, with a
        wildcard address as ``HOST``, for this host's address as the others reach it (a
        wildcard is no address to join)."""
        if self.wildcard:
            return f"tcp://HOST:{parse_tcp(self.endpoint)[1]}"
        return self.endpoint

    def attach(self, server: Any, hello: dict[str, Any]) -> None:
        """In the server process, before it serves: see :func:`attach` (the server takes
        the spec it is given, and imports nothing of the launcher's floor for it)."""
        attach(server, self, hello)


def parse_tcp(endpoint: str, option: str = "--listen") -> tuple[str, int]:
    """(host, port) of ``tcp://HOST:PORT``; RemoteError, naming ``option``, otherwise."""
    if not endpoint.startswith("tcp://"):
        raise RemoteError(f"{option} {endpoint!r}: expected tcp://ADDR:PORT")
    host, sep, port = endpoint[len("tcp://"):].rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise RemoteError(f"{option} {endpoint!r}: expected tcp://ADDR:PORT with a port "
                          f"1..65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False                  # '*', an interface or host name: not provably local


def check_listen(endpoint: str, key_dir: str | None, ncpus: int, local_cpus: int | None,
                 join_timeout: float | None) -> ListenSpec:
    """Validate ``smp run --listen`` before anything starts; RemoteError says why."""
    host, port = parse_tcp(endpoint)
    if key_dir is None and not is_loopback(host):
        raise RemoteError(
            f"--listen {endpoint}: refusing to listen on a non-loopback address without "
            f"authentication; the server would be reachable from other hosts. Make keys "
            f"with `smp keys DIR` and pass --key-dir DIR (or listen on 127.0.0.1)")
    local = ncpus if local_cpus is None else local_cpus
    if not 0 <= local <= ncpus:
        raise RemoteError(f"--local-cpus {local}: must be 0..{ncpus} (machine.cpus)")
    if key_dir is not None:
        if not zmq.has("curve"):
            raise RemoteError("--key-dir: this libzmq was built without CURVE support")
        try:
            _, _, authorized = server_keys(key_dir)
            bound = set().union(*(ids for _, ids in key_bindings(authorized).values()))
        except (KeyDirError, OSError, ValueError) as e:
            raise RemoteError(f"--key-dir: {e}") from None
        unbound = [c for c in range(local, ncpus) if c not in bound]
        if unbound:
            raise RemoteError(f"--key-dir: no key in {authorized} is bound to cpu "
                              f"{', '.join(map(str, unbound))}, which must join: make keys "
                              f"with `smp keys {key_dir} --cpus IDS`")
    _check_bind(endpoint, host, port)
    timeout = DEFAULT_JOIN_TIMEOUT if join_timeout is None else join_timeout
    if timeout <= 0:
        raise RemoteError("--join-timeout must be positive")
    return ListenSpec(endpoint, local, key_dir, timeout)


def _check_bind(endpoint: str, host: str, port: int) -> None:
    """Refuse now an address the server could not bind (in use, not ours), rather than
    have the server die of it after the CPUs started."""
    addr = "" if host in ("*", "0.0.0.0") else host
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((addr, port))
    except OSError as e:
        raise RemoteError(f"--listen {endpoint}: cannot listen there: {e.strerror}") from None


# -- the server side (runs in the server process) ------------------------------------------
def attach(server: Any, spec: ListenSpec, hello: dict[str, Any]) -> None:
    """Make ``server`` (an ``smp.machine.server.Server``, before ``serve()``) bind the listen
    endpoint, with CURVE and a ZAP authenticator when there are keys, and answer HELLO
    with ``hello`` (the resolved config, for CPUs that join)."""
    state: dict[str, Any] = {}

    def setup(ctx: zmq.Context[Any], sock: zmq.Socket[Any]) -> None:
        if spec.key_dir is not None:
            from zmq.auth.thread import ThreadAuthenticator
            public, secret, authorized = server_keys(spec.key_dir)
            auth = ThreadAuthenticator(ctx)
            auth.start()                  # before the bind: no handshake goes unchecked
            auth.configure_curve(domain="*", location=authorized)
            state["auth"] = auth
            sock.curve_secretkey = secret
            sock.curve_publickey = public
            sock.curve_server = True
        try:
            sock.bind(spec.endpoint)
        except zmq.ZMQError:
            teardown()
            raise

    def teardown() -> None:
        auth = state.pop("auth", None)
        if auth is not None:
            auth.stop()                   # before ctx.term(): its ZAP socket is open

    server.curve = {"setup": setup, "teardown": teardown}
    server.hello_info = dict(hello)
    if spec.key_dir is not None:
        bindings = key_bindings(server_keys(spec.key_dir)[2])
        server.hello_check = lambda user, role, cpu: check_hello(bindings, user, role, cpu)


def check_hello(bindings: dict[str, tuple[str, frozenset[int]]], user: str | None,
                role: Any, cpu: Any) -> str | None:
    """Why the server refuses a HELLO that came over the listen endpoint with the CURVE
    key ``user`` (z85; None: the private endpoint, which is trusted), or None. A key
    may be only the CPUs it is bound to (smp.run.keys), and never the launcher."""
    if user is None:
        return None
    name, ids = bindings.get(user, ("an unknown key", frozenset()))
    if role != "cpu":
        return f"a peer with a CPU's key ({name}) cannot be the {role!r}"
    if cpu not in ids:
        bound = ", ".join(map(str, sorted(ids))) if ids else "no CPU id"
        return (f"this CPU's key ({name}) is bound to {'cpu ' if ids else ''}{bound}, "
                f"not cpu {cpu}: use the key made for it (`smp keys DIR --cpus {cpu}`)")
    return None


# -- the joining CPU --------------------------------------------------------------------
_FAIL = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the server refused this CPU's key (its public key "
    "is not in the server's authorized/ directory)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the handshake failed: the server and this CPU "
    "disagree on security (a wrong server.key, or CURVE on one side only: --key-dir)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (a wrong server.key?)",
}


def await_handshake(endpoint: str, curve: dict[str, bytes] | None, timeout: float) -> None:
    """Connect a probe socket and wait until its handshake with the server succeeds.
    RemoteError names what went wrong: a refused key, a security mismatch, or nothing
    listening within ``timeout`` seconds. The probe sends nothing."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve:
        sock.curve_secretkey = curve["secret"]
        sock.curve_publickey = curve["public"]
        sock.curve_serverkey = curve["server"]
    mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(_FAIL))
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not mon.poll(int(left * 1000)):
                raise RemoteError(f"no server answered at {endpoint} within {timeout:.0f} s")
            ev = zmq.utils.monitor.recv_monitor_message(mon)["event"]
            if ev == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if ev in _FAIL and not curve:
                raise RemoteError(f"{endpoint}: the handshake failed: the server wants "
                                  f"CURVE keys, which this CPU has none of (--key-dir DIR: "
                                  f"the folder `smp keys` made, with server.key and this "
                                  f"CPU's key), or it is no smp server")
            if ev in _FAIL:
                raise RemoteError(f"{endpoint}: {_FAIL[ev]}")
    finally:
        sock.disable_monitor()
        mon.close(0)
        sock.close(0)
        ctx.term()


def join_main(endpoint: str, cpu_id: int, key_dir: str | None, timeout: float) -> int:
    """``smp cpu --join``: be CPU ``cpu_id`` of the machine whose server listens at
    ``endpoint``. Returns an exit status when it cannot join; once joined, the CPU process
    ends with ``cpu_main``'s status (0: halted cleanly, 3: the server went away)."""
    from smp.machine.cpuproc import cpu_main
    if cpu_id < 0:
        print("smp cpu: --id must be >= 0", file=sys.stderr)
        return 2
    if not timeout > 0:
        print(f"smp cpu: --timeout must be a positive number of seconds, got {timeout:g}",
              file=sys.stderr)
        return 2
    try:
        parse_tcp(endpoint, "--join")
        curve = client_keys(key_dir, cpu_id) if key_dir is not None else None
    except (RemoteError, KeyDirError, OSError, ValueError) as e:
        print(f"smp cpu: {e}", file=sys.stderr)
        return 2
    try:
        await_handshake(endpoint, curve, timeout)
    except RemoteError as e:
        print(f"smp cpu: cpu{cpu_id} cannot join: {e}", file=sys.stderr)
        return 1

    def joined() -> None:             # said once the server took our HELLO, not before
        print(f"smp cpu: cpu{cpu_id} (pid {os.getpid()}) joined {endpoint}",
              file=sys.stderr, flush=True)
    cpu_main(cpu_id, endpoint, None, LIVENESS_S, curve=curve, pdeathsig=False,
             on_hello=joined)
    return 0                           # not reached: cpu_main ends the process
