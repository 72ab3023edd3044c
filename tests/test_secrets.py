"""Kafka secrets: read from env vars or files when a client is built, never from argv or a
config, never printed (``reidstream config``, ``-v`` logs), and passed to real connections:
SASL (SCRAM, OAUTHBEARER) against Tansu with authentication on, TLS with a client
certificate and an encrypted key through a TLS front that insists on the certificate."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from reidstream.cli import redact_secrets
from reidstream.config import ConfigError, load_config
from reidstream.ingest.kafka_clients import kafka_client_kwargs
from reidstream.ingest.secrets import (
    Secret,
    mask_secrets,
    oauth_token_provider,
    register_secret,
)

REPO = Path(__file__).resolve().parent.parent
PASSWORD_ENV = "REIDSTREAM_KAFKA_SASL_PASSWORD"


def sasl_cfg(**changes):
    base = dataclasses.replace(
        load_config().kafka,
        bootstrap_servers="127.0.0.1:9",
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="reid",
        connect_timeout_ms=3000,
        request_timeout_ms=3000,
    )
    return dataclasses.replace(base, **changes)


def secret_file(folder: Path, value: str, name: str = "secret") -> Path:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def reidstream_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "reidstream.cli", *args]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REIDSTREAM_KAFKA_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


# ---- resolution into the client's settings ----------------------------------------------------


def test_password_comes_from_env_or_file_into_the_client_kwargs(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "from-env-7f3a")
    kw = kafka_client_kwargs(sasl_cfg())
    assert (kw["sasl_mechanism"], kw["sasl_plain_username"]) == ("SCRAM-SHA-512", "reid")
    assert kw["sasl_plain_password"] == "from-env-7f3a"
    assert "from-env-7f3a" not in repr(kw)  # kafka-python logs its config dict at DEBUG

    # A file wins over the env var (naming one is deliberate); one trailing newline dropped.
    path = secret_file(tmp_path, "from-file-91c2")
    kw = kafka_client_kwargs(sasl_cfg(sasl_password_file=str(path)))
    assert kw["sasl_plain_password"] == "from-file-91c2"

    # Another env var name.
    monkeypatch.setenv("SITE_KAFKA_PW", "site-pw-44d1")
    kw = kafka_client_kwargs(sasl_cfg(sasl_password_env="SITE_KAFKA_PW"))
    assert kw["sasl_plain_password"] == "site-pw-44d1"

    monkeypatch.delenv(PASSWORD_ENV)
    with pytest.raises(ConfigError, match=rf"\${PASSWORD_ENV}.*kafka.sasl_password_file"):
        kafka_client_kwargs(sasl_cfg())
    with pytest.raises(ConfigError, match="no such file"):
        kafka_client_kwargs(sasl_cfg(sasl_password_file=str(tmp_path / "absent")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        kafka_client_kwargs(sasl_cfg(sasl_password_file=str(tmp_path / "empty")))


def test_inconsistent_security_settings_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(PASSWORD_ENV, "pw-0b7e")
    ca = secret_file(tmp_path, "not really a CA", "ca.pem")
    cases = {
        "needs security_protocol SASL_PLAINTEXT or SASL_SSL": sasl_cfg(security_protocol="SSL"),
        "needs kafka.sasl_mechanism": sasl_cfg(sasl_mechanism=""),
        "not in PLAIN, SCRAM-SHA-256": sasl_cfg(sasl_mechanism="GSSAPI"),
        "SCRAM-SHA-256 needs kafka.sasl_username": sasl_cfg(
            sasl_mechanism="scram-sha-256", sasl_username=""),
        "OAUTHBEARER authenticates with a token": sasl_cfg(sasl_mechanism="OAUTHBEARER"),
        "ssl_cafile: no such file": sasl_cfg(
            security_protocol="SASL_SSL", ssl_cafile=str(tmp_path / "absent.pem")),
        "does not use TLS": sasl_cfg(ssl_cafile=str(ca)),
        "ssl_keyfile needs kafka.ssl_certfile": sasl_cfg(
            security_protocol="SASL_SSL", ssl_keyfile=str(ca)),
        "ssl_password_file unlocks a client key": sasl_cfg(
            security_protocol="SASL_SSL", ssl_password_file=str(ca)),
    }
    for message, cfg in cases.items():
        with pytest.raises(ConfigError, match=message):
            kafka_client_kwargs(cfg)
    plain = kafka_client_kwargs(load_config().kafka)
    assert "sasl_mechanism" not in plain and "ssl_password" not in plain


def test_oauth_token_is_read_again_on_every_connection(tmp_path, monkeypatch):
    from kafka.net.sasl.oauth import AbstractTokenProvider

    path = secret_file(tmp_path, "token-one-55e0")
    kw = kafka_client_kwargs(
        sasl_cfg(sasl_mechanism="OAUTHBEARER", sasl_username="", sasl_oauth_token_file=str(path))
    )
    provider = kw["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)  # what kafka-python insists on
    assert provider.token() == "token-one-55e0"
    secret_file(tmp_path, "token-two-8d21")  # rotated by whoever issues tokens
    assert provider.token() == "token-two-8d21"
    assert "token-two" not in repr(provider) and type(provider.token()) is str
    monkeypatch.delenv("REIDSTREAM_KAFKA_OAUTH_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="REIDSTREAM_KAFKA_OAUTH_TOKEN"):
        oauth_token_provider("REIDSTREAM_KAFKA_OAUTH_TOKEN", "").token()


def test_log_records_mask_every_secret_read(caplog):
    value = "mask-me-'q\"2f"
    secret = register_secret(value)
    assert isinstance(secret, Secret) and repr(secret) == "'***'" and secret == value
    with caplog.at_level(logging.DEBUG, logger="kafka.test"):
        logging.getLogger("kafka.test").debug(
            "config %s; request auth_bytes=%r; plain %s", {"sasl_plain_password": str(secret)},
            b"\x00reid\x00" + value.encode(), value,
        )
    text = caplog.text
    assert "mask-me" not in text and text.count("***") == 3
    assert mask_secrets(f"x {value} y") == "x *** y"


# ---- what a person sees: argv, `reidstream config` ---------------------------------------------


def test_a_password_on_the_command_line_or_in_a_config_file_is_refused(tmp_path):
    done = subprocess.run(
        reidstream_cmd("config", "kafka.sasl_password=cmdline-pw-3e9a"),
        capture_output=True, text=True, env=cli_env(), timeout=120,
    )
    assert done.returncode == 2, done
    assert PASSWORD_ENV in done.stderr and "kafka.sasl_password_file" in done.stderr
    assert "cmdline-pw-3e9a" not in done.stdout + done.stderr
    yaml_file = tmp_path / "site.yaml"
    yaml_file.write_text("kafka:\n  sasl_password: file-pw-1c5d\n")
    with pytest.raises(ConfigError, match="kafka.sasl_password_env") as err:
        load_config(yaml_file)
    assert "file-pw-1c5d" not in str(err.value)


def test_config_output_names_where_secrets_are_but_never_shows_one(tmp_path):
    path = secret_file(tmp_path, "file-pw-a8b4")
    done = subprocess.run(
        reidstream_cmd(
            "config", "kafka.security_protocol=SASL_SSL", "kafka.sasl_mechanism=SCRAM-SHA-512",
            "kafka.sasl_username=reid", f"kafka.sasl_password_file={path}",
        ),
        capture_output=True, text=True, timeout=120,
        env=cli_env(REIDSTREAM_KAFKA_SASL_PASSWORD="env-pw-60f1",
                    REIDSTREAM_KAFKA_SSL_PASSWORD="key-pw-d3c7"),
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"sasl_password_file: {path}" in out and f"sasl_password_env: {PASSWORD_ENV}" in out
    for value in ("file-pw-a8b4", "env-pw-60f1", "key-pw-d3c7"):
        assert value not in out + done.stderr
    tree = {"kafka": {"sasl_password": "x1", "sasl_password_env": "NAME", "ssl_keyfile": "/k",
                      "sasl_oauth_token": "", "extra": [{"api_key": "k2"}]}}
    assert redact_secrets(tree) == {"kafka": {
        "sasl_password": "***", "sasl_password_env": "NAME", "ssl_keyfile": "/k",
        "sasl_oauth_token": "", "extra": [{"api_key": "***"}]}}


# ---- real connections -------------------------------------------------------------------------


@contextlib.contextmanager
def tansu(*extra: str, advertised_port: int | None = None):
    """A Tansu broker on a free port (advertising ``advertised_port`` if given); yields the
    port it listens on. Stopped with SIGINT: on SIGTERM Tansu waits for its clients."""
    from reidstream.ingest.broker import BrokerError, free_port, kafka_ping, tansu_binary

    try:
        binary = tansu_binary()
    except BrokerError as exc:
        pytest.skip(str(exc))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url",
             f"tcp://127.0.0.1:{advertised_port or port}", "--storage-engine", "memory://tansu/",
             *extra],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 20
            while not kafka_ping("127.0.0.1", port, timeout_s=0.5):
                assert proc.poll() is None and time.monotonic() < deadline, "Tansu did not start"
                time.sleep(0.1)
            yield port
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture(scope="module")
def auth_broker():
    """Tansu with ``--authentication``: SCRAM-SHA-256/512 and OAUTHBEARER, every login refused
    (Tansu adds users only over an authenticated connection, so none exists), after the whole
    SASL exchange: the password or token has been used and sent when the broker says no."""
    with tansu("--authentication") as port:
        yield f"127.0.0.1:{port}"


def run_verbose(args: list[str], env: dict[str, str]) -> tuple[str, str, int]:
    """Run ``reidstream -v ARGS``; returns (its /proc cmdline as read while it ran, output, rc)."""
    proc = subprocess.Popen(reidstream_cmd("-v", *args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # Popen returns after exec, so this is the command line `ps` shows for its whole life.
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    out, _ = proc.communicate(timeout=180)
    return cmdline, out, proc.returncode


@pytest.mark.slow
def test_sasl_logins_carry_no_secret_in_argv_or_verbose_logs(auth_broker, tmp_path):
    """SCRAM (password from a file, through `doctor`'s admin client: kafka-python logs its
    whole config at DEBUG) and OAUTHBEARER (token from env, through `events`' consumer:
    kafka-python logs the SASL request with the token at DEBUG) against a real broker."""
    path = secret_file(tmp_path, "scram-pw-Zq81")
    cmdline, out, rc = run_verbose(
        ["doctor", "--bootstrap-servers", auth_broker, "--timeout", "3",
         "kafka.security_protocol=SASL_PLAINTEXT", "kafka.sasl_mechanism=SCRAM-SHA-512",
         "kafka.sasl_username=reid", f"kafka.sasl_password_file={path}"],
        cli_env(),
    )
    assert "SaslAuthenticateRequest" in out and "sasl_plain_password" in out, out[-3000:]
    assert "unknown-user" in out  # the broker ran SCRAM to its end and refused the user
    assert rc == 1 and "scram-pw-Zq81" not in out and "scram-pw" not in cmdline
    assert "'sasl_plain_password': '***'" in out

    cmdline, out, rc = run_verbose(
        ["events", "--bootstrap-servers", auth_broker, "--idle-timeout", "1",
         "kafka.security_protocol=SASL_PLAINTEXT", "kafka.sasl_mechanism=OAUTHBEARER",
         "kafka.connect_timeout_ms=3000"],
        cli_env(REIDSTREAM_KAFKA_OAUTH_TOKEN="oauth-tok-Wp56"),
    )
    assert "auth=Bearer ***" in out, out[-3000:]  # the token went out, masked in the log
    assert rc == 2 and "oauth-tok-Wp56" not in out and "oauth-tok" not in cmdline


def test_scram_failure_is_reported_without_the_password(auth_broker, monkeypatch):
    from reidstream.ingest.kafka_clients import make_producer

    monkeypatch.setenv(PASSWORD_ENV, "scram-pw-Tt02")
    cfg = sasl_cfg(bootstrap_servers=auth_broker, sasl_mechanism="SCRAM-SHA-256")
    with pytest.raises(Exception) as err:  # noqa: B017 - kafka-python's own error types
        make_producer(cfg)
    assert "scram-pw-Tt02" not in str(err.value) + repr(err.value)


# ---- TLS with a client certificate ------------------------------------------------------------


class TlsFront:
    """A TLS front for a plaintext broker, as a TLS load balancer would be: terminates TLS,
    insists on a client certificate signed by ``ca``, and pipes the bytes through."""

    def __init__(self, sock: socket.socket, backend_port: int, cert: Path, key: Path, ca: Path):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.ctx.load_verify_locations(ca)
        self.sock, self.backend_port = sock, backend_port
        self.clients: list[str] = []  # common names of verified client certificates
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.refused += 1
            conn.close()
            return
        subject = dict(x[0] for x in tls.getpeercert()["subject"])
        self.clients.append(subject["commonName"])
        backend = socket.create_connection(("127.0.0.1", self.backend_port))
        threading.Thread(target=_pipe, args=(backend, tls), daemon=True).start()
        _pipe(tls, backend)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        src.close()
        dst.close()


def make_pki(folder: Path, key_password: str) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate whose key is
    encrypted with ``key_password``."""
    x509 = pytest.importorskip("cryptography.x509")
    import ipaddress

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def cert(cn, key, issuer_cn, issuer_key, ca=False, san=None):
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5))
             .not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def write(name, data):
        path = folder / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    pem = serialization.Encoding.PEM
    plain = serialization.NoEncryption()
    pkcs8 = serialization.PrivateFormat.PKCS8
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = cert("test-ca", ca_key, "test-ca", ca_key, ca=True)
    server = cert("localhost", server_key, "test-ca", ca_key,
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                       x509.DNSName("localhost")])
    client = cert("reidstream-client", client_key, "test-ca", ca_key)
    return {
        "ca": write("ca.pem", ca.public_bytes(pem)),
        "server_cert": write("server.pem", server.public_bytes(pem)),
        "server_key": write("server.key", server_key.private_bytes(pem, pkcs8, plain)),
        "client_cert": write("client.pem", client.public_bytes(pem)),
        "client_key": write("client.key", client_key.private_bytes(
            pem, pkcs8, serialization.BestAvailableEncryption(key_password.encode()))),
    }


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    """(bootstrap servers, pki, front): Tansu advertising the TLS front's address."""
    folder = tmp_path_factory.mktemp("pki")
    pki = make_pki(folder, "key-pw-R4n7")
    front_sock = socket.create_server(("127.0.0.1", 0))
    front_port = front_sock.getsockname()[1]
    try:
        with tansu(advertised_port=front_port) as port:
            front = TlsFront(front_sock, port, pki["server_cert"], pki["server_key"], pki["ca"])
            yield f"127.0.0.1:{front_port}", pki, front
    finally:
        front_sock.close()


def test_tls_client_certificate_with_an_encrypted_key(tls_broker, tmp_path, monkeypatch):
    from kafka import KafkaAdminClient

    servers, pki, front = tls_broker
    password_file = secret_file(tmp_path, "key-pw-R4n7")
    cfg = dataclasses.replace(
        load_config().kafka, bootstrap_servers=servers, security_protocol="SSL",
        ssl_cafile=str(pki["ca"]), ssl_certfile=str(pki["client_cert"]),
        ssl_keyfile=str(pki["client_key"]), ssl_password_file=str(password_file),
        connect_timeout_ms=5000, request_timeout_ms=5000,
    )
    kw = kafka_client_kwargs(cfg)
    assert kw["ssl_password"] == "key-pw-R4n7" and "key-pw" not in repr(kw)
    admin = KafkaAdminClient(**kw)
    try:
        assert isinstance(admin.list_topics(), list)
    finally:
        admin.close()
    assert "reidstream-client" in front.clients  # the front verified our certificate

    # The same key password from the env var; a wrong one fails, and so does no certificate.
    monkeypatch.setenv("REIDSTREAM_KAFKA_SSL_PASSWORD", "key-pw-R4n7")
    admin = KafkaAdminClient(**kafka_client_kwargs(dataclasses.replace(cfg, ssl_password_file="")))
    admin.close()
    short = {"bootstrap_timeout_ms": 2000}
    monkeypatch.setenv("REIDSTREAM_KAFKA_SSL_PASSWORD", "wrong-pw")
    with pytest.raises(Exception):  # noqa: B017 - ssl / kafka errors, whichever comes first
        KafkaAdminClient(**{**kafka_client_kwargs(
            dataclasses.replace(cfg, ssl_password_file="")), **short})
    refused = front.refused
    with pytest.raises(Exception):  # noqa: B017
        KafkaAdminClient(**{**kafka_client_kwargs(dataclasses.replace(
            cfg, ssl_certfile="", ssl_keyfile="", ssl_password_file="")), **short})
    assert front.refused > refused  # the front turned away the client without a certificate
