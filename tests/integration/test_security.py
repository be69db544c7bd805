"""Security: TLS with verification, a least-privilege ACL user, no password anywhere
(docs/security.md).

* TLS: a test CA and a server certificate are made here (``cryptography``). The group
  round trip (producer, two consumers of one group, ``Admin.describe_group``) runs over
  ``rediss://…?ssl_ca_certs=<ca>`` with verification on: against the server's own TLS
  port when the binary was built with TLS, and always through a TLS-terminating proxy
  in front of the plain server (the client side is the same either way). A client
  that trusts another CA, or only the system's, is refused.
* ACL: a user allowed only the keys ``~<namespace>:*`` and the commands in
  :data:`ACL_RULES` (the line ``docs/security.md`` gives) runs the same round trip, and
  is refused a key outside its prefix.
* Password scan: with a distinctive password, every log record of ``redcurrent``, the
  repr of every client object and the text of every exception raised by failing
  calls (wrong password, unreachable host, NOPERM) is searched: 0 occurrences.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import ssl
import subprocess
import traceback
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio
import redis
import redis.asyncio
from support.consuming import make_consumer, start_processing, stop_all
from support.eventually import eventually
from support.servers import HOST, ServerProcess, find_free_port

from redcurrent import (
    Admin,
    ConfigError,
    Message,
    Producer,
    Record,
    RedcurrentConnectionError,
    RedcurrentError,
)

x509 = pytest.importorskip(
    "cryptography.x509", reason="the TLS tests make their CA with cryptography"
)
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

PASSWORD = "s3cr3t-PASSWORD-xyz"
# The commands redcurrent needs (Redis 6.2+, Valkey): streams, hashes, sets, sorted
# sets and strings through @read/@write, EVALSHA and SCRIPT LOAD (@scripting), HELLO,
# AUTH, PING and CLIENT SETINFO (@connection), minus everything @dangerous, plus INFO
# (the version probe at connect) and TIME (called by the coordinator script).
ACL_RULES = (
    "resetchannels -@all +@read +@write +@stream +@scripting +@connection -@dangerous +info +time"
)
TOPIC = "secure"


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the server certificate
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _write_cert(cert: Any, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, Any]:
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_pki(directory: Path) -> Pki:
    ca_key, ca_cert = _ca("redcurrent test CA")
    _, other_cert = _ca("redcurrent other CA")
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address(HOST)),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "other-ca.pem",
    )
    _write_cert(ca_cert, pki.ca)
    _write_cert(other_cert, pki.other_ca)
    _write_cert(cert, pki.cert)
    _write_key(key, pki.key)
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_url(port: int, ca: Path) -> str:
    return f"rediss://{HOST}:{port}/0?ssl_ca_certs={quote(str(ca))}"


# --------------------------------------------------------------------------- the group round trip


async def group_round_trip(url: str, namespace: str, messages: int = 40) -> None:
    """Producer, two consumers of group g, Admin: every message handled once, then a
    group with two members, nothing pending, no lag."""
    async with Admin(url, namespace=namespace) as admin:
        await admin.create_topic(TOPIC, 4)
        seen: list[Message] = []

        async def handle(msg: Message) -> None:
            seen.append(msg)

        a = make_consumer(url, namespace, TOPIC, start="earliest", member_id="a")
        b = make_consumer(url, namespace, TOPIC, start="earliest", member_id="b")
        ta, tb = start_processing(a, handle), start_processing(b, handle)
        try:
            async with Producer(url, namespace=namespace) as producer:
                await producer.send_batch(
                    TOPIC, [Record({"n": i}, key=f"k{i % 7}") for i in range(messages)]
                )
            await eventually(
                lambda: len(seen) >= messages, timeout=10, message="messages not consumed"
            )

            async def settled() -> Any:
                info = await admin.describe_group(TOPIC, "g")
                return (
                    info if len(info.members) == 2 and info.pending == 0 and info.lag == 0 else None
                )

            info = await eventually(settled, timeout=10)
            assert {m.member_id for m in info.members} == {"a", "b"}
        finally:
            await stop_all((a, ta), (b, tb))
    assert sorted(m.value["n"] for m in seen) == list(range(messages))


# --------------------------------------------------------------------------- TLS


class TlsServerProcess(ServerProcess):
    """A server that listens on TLS only (``--port 0``); clients verify it against the CA."""

    def __init__(self, binary: str, pki: Pki) -> None:
        super().__init__(binary)
        self.pki = pki

    def command_line(self) -> list[str]:
        return [*super().command_line(),
                "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", str(self.pki.cert), "--tls-key-file", str(self.pki.key),
                "--tls-ca-cert-file", str(self.pki.ca), "--tls-auth-clients", "no"]  # fmt: skip

    def client(self, **kwargs: Any) -> redis.Redis:
        kwargs.setdefault("ssl", True)
        kwargs.setdefault("ssl_ca_certs", str(self.pki.ca))
        return super().client(**kwargs)

    @property
    def url(self) -> str:
        return tls_url(self.port, self.pki.ca)


def _no_tls_reason(binary: str, log: str) -> str | None:
    """Why ``binary`` cannot serve TLS, from its startup log (None if that is not why it failed)."""
    for line in log.splitlines():
        if "TLS support" in line or ("Bad directive" in line and "tls" in log.lower()):
            version = subprocess.run(
                [binary, "--version"], capture_output=True, text=True
            ).stdout.strip()
            return f"{Path(binary).name} has no TLS support ({version.split(' sha=')[0]}): {line.split('# ')[-1].strip()}"
    return None


@pytest.fixture(scope="module")
def tls_server(server_binary: str, pki: Pki) -> Iterator[TlsServerProcess]:
    server = TlsServerProcess(server_binary, pki)
    try:
        server.start()
    except RuntimeError:
        reason = _no_tls_reason(server_binary, server.log_tail(50))
        server.stop()
        if reason is None:
            raise
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


async def test_tls_server_round_trip_with_verification(
    tls_server: TlsServerProcess, namespace: str
) -> None:
    await group_round_trip(tls_server.url, namespace)


class TlsTerminator:
    """TLS on the outside, the plain server inside: a rediss:// endpoint for any binary."""

    def __init__(self, upstream_port: int, pki: Pki) -> None:
        self.upstream_port = upstream_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.cert, pki.key)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.handshakes = 0

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def __aenter__(self) -> TlsTerminator:
        self._server = await asyncio.start_server(self._serve, HOST, 0, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.handshakes += 1
        up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            for w in (writer, up_writer):
                w.transport.abort()
            self._tasks.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while chunk := await reader.read(65536):
        writer.write(chunk)
        await writer.drain()
    writer.transport.abort()


@pytest_asyncio.fixture
async def terminator(redis_url: str, pki: Pki) -> AsyncIterator[TlsTerminator]:
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    async with TlsTerminator(port, pki) as started:
        yield started


async def test_tls_round_trip_with_verification_through_a_tls_terminator(
    terminator: TlsTerminator, pki: Pki, namespace: str
) -> None:
    await group_round_trip(tls_url(terminator.port, pki.ca), namespace)
    assert terminator.handshakes >= 3  # every client really went through TLS


async def test_tls_refuses_a_server_signed_by_another_ca(
    terminator: TlsTerminator, pki: Pki
) -> None:
    wrong = tls_url(terminator.port, pki.other_ca)
    system_trust_only = f"rediss://{HOST}:{terminator.port}/0"
    for url in (wrong, system_trust_only):
        for client in (Producer(url), Admin(url)):
            with pytest.raises(RedcurrentConnectionError) as err:
                await client.start()
            assert "certificate" in str(err.value).lower() or "ssl" in str(err.value).lower()


# --------------------------------------------------------------------------- ACL


@pytest.fixture(scope="module")
def acl_server(server_binary: str) -> Iterator[ServerProcess]:
    """A server of its own: the ACL users made here never touch the shared one."""
    with ServerProcess(server_binary) as server:
        yield server


@dataclass(frozen=True)
class AclUser:
    name: str
    url: str  # redis://name:password@host:port
    namespace: str


@pytest.fixture
def acl_user(acl_server: ServerProcess, namespace: str) -> Iterator[AclUser]:
    name = "rc-" + uuid.uuid4().hex[:8]
    with acl_server.client() as admin:
        admin.execute_command(
            "ACL",
            "SETUSER",
            name,
            "reset",
            "on",
            f">{PASSWORD}",
            f"~{namespace}:*",
            *ACL_RULES.split(),
        )
    yield AclUser(name, f"redis://{name}:{PASSWORD}@{HOST}:{acl_server.port}/0", namespace)
    with acl_server.client() as admin:
        admin.execute_command("ACL", "DELUSER", name)


def acl_denials(server: ServerProcess, user: str) -> list[Any]:
    with server.client() as admin:
        entries = admin.acl_log()

    def text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    assert all("username" in e for e in entries), entries[:1]
    return [e for e in entries if text(e["username"]) == user]


async def test_acl_user_limited_to_its_prefix_runs_the_group_suite(
    acl_server: ServerProcess, acl_user: AclUser
) -> None:
    with acl_server.client() as admin:
        admin.acl_log_reset()
    await group_round_trip(acl_user.url, acl_user.namespace)
    async with Admin(acl_user.url, namespace=acl_user.namespace) as admin:
        assert await admin.list_topics() == [TOPIC]
        assert await admin.trim(TOPIC) >= 0
        assert await admin.count_dead_letters(TOPIC, "g") == 0
        await admin.delete_topic(TOPIC)
    assert acl_denials(acl_server, acl_user.name) == []  # not one command refused on the way


async def test_acl_user_is_refused_keys_outside_its_prefix(acl_user: AclUser) -> None:
    raw = redis.asyncio.Redis.from_url(acl_user.url)
    try:
        assert await raw.set(f"{acl_user.namespace}:probe", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            await raw.set("elsewhere:probe", 1)
    finally:
        await raw.aclose()
    # Through the library: a namespace outside the prefix is refused with a typed error.
    async with Admin(acl_user.url, namespace="elsewhere") as admin:
        with pytest.raises(RedcurrentError, match=r"(?i)permission"):
            await admin.create_topic(TOPIC)
    async with Producer(acl_user.url, namespace="elsewhere") as producer:
        with pytest.raises(RedcurrentError, match=r"(?i)permission"):
            await producer.send(TOPIC, 1)


# --------------------------------------------------------------------------- password scan


def _texts(exc: BaseException) -> list[str]:
    """str, repr and the formatted traceback of an exception and its whole chain."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current), *map(repr, current.args)]
        current = current.__cause__ or current.__context__
    out += traceback.format_exception(exc)
    return out


async def _failure(coro: Any, texts: list[str]) -> BaseException:
    try:
        await coro
    except Exception as exc:
        texts.extend(_texts(exc))
        return exc
    raise AssertionError("expected a failure")


async def test_the_password_never_appears_in_logs_reprs_or_errors(
    acl_server: ServerProcess, acl_user: AclUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redcurrent")
    texts: list[str] = []
    url, ns = acl_user.url, acl_user.namespace

    # Working clients: their reprs and their connections'.
    admin, producer = Admin(url, namespace=ns), Producer(url, namespace=ns)
    consumer = make_consumer(url, ns, TOPIC, start="earliest")
    await admin.start()
    await admin.create_topic(TOPIC, 2)
    await producer.start()
    await producer.send(TOPIC, {"hello": "world"})
    await consumer.start()
    for obj in (
        admin,
        producer,
        consumer,
        admin.connection,
        admin.connection.client,
        admin.connection.client.connection_pool,
        producer._conn,
        consumer._conn,
    ):
        texts += [repr(obj), str(obj)]
    await consumer.stop()
    await producer.close()
    await admin.close()

    # Failing calls, each with the password in its URL.
    wrong_user = url.replace(acl_user.name, "nobody")
    closed = f"redis://{acl_user.name}:{PASSWORD}@{HOST}:{find_free_port()}/0"
    query = f"redis://{HOST}:{find_free_port()}/0?password={PASSWORD}"
    errors = [
        await _failure(Producer(wrong_user, namespace=ns).start(), texts),
        await _failure(Admin(wrong_user, namespace=ns).start(), texts),
        await _failure(make_consumer(wrong_user, ns, TOPIC).start(), texts),
        await _failure(Producer(closed, namespace=ns).start(), texts),
        await _failure(make_consumer(closed, ns, TOPIC).start(), texts),
        await _failure(Admin(query, namespace=ns).start(), texts),
    ]
    assert all(isinstance(e, RedcurrentConnectionError) for e in errors), errors
    async with Admin(url, namespace="elsewhere") as outside:  # NOPERM
        errors.append(await _failure(outside.create_topic(TOPIC), texts))
        texts += [repr(outside), repr(outside.connection)]
    async with Producer(url, namespace="elsewhere") as outside_producer:
        errors.append(await _failure(outside_producer.send(TOPIC, 1), texts))

    for record in caplog.records:
        texts += [record.getMessage(), str(record.args), record.exc_text or ""]
        if record.exc_info and record.exc_info[1] is not None:
            texts += _texts(record.exc_info[1])
    assert len(texts) > 50 and caplog.records  # the scan did look at something
    leaks = [t for t in texts if PASSWORD in t or quote(PASSWORD) in t]
    assert leaks == [], leaks[:3]


async def test_a_malformed_url_never_shows_its_password() -> None:
    for url in (f"redis//user:{PASSWORD}@{HOST}:1/0", f"redis:/user:{PASSWORD}@{HOST}:1/0"):
        with pytest.raises(ConfigError) as err:
            await Producer(url).start()
        assert PASSWORD not in str(err.value)
