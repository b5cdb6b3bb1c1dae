"""Security on the client port: TLS (secureClientPort, client certificates, x509 ids), SASL
DIGEST-MD5 (with requireClientAuthScheme), the administrator's superDigest, and refusing every
security setting zkfsd does not implement."""
from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import AuthFailedError, NoAuthError
from kazoo.security import make_acl, make_digest_acl

from helpers import LOCALHOST, ZKFSD_BIN, free_port, is_ok
from tls_helpers import TestCA

pytestmark = pytest.mark.timeout(90)


@contextlib.contextmanager
def zkfsd_with(tmp_path: Path, *lines: str, name: str = "zk") -> Iterator[Path]:
    """zkfsd started from a zoo.cfg alone (no --client-port, so the file decides which ports
    open); yields the log path once it serves; stopped by PID."""
    cfg = tmp_path / f"{name}.cfg"
    cfg.write_text("\n".join([f"dataDir={tmp_path / name}", "tickTime=200", *lines]) + "\n")
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(ZKFSD_BIN), "--config", str(cfg)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while "serving clients on" not in log.read_text(errors="replace"):
            assert proc.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "zkfsd did not start serving"
            time.sleep(0.05)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def refused(*lines: str, tmp_path: Path) -> str:
    """Start zkfsd with a bad configuration: it must exit 2 with one line."""
    cfg = tmp_path / "bad.cfg"
    cfg.write_text("\n".join([f"dataDir={tmp_path / 'bad'}", *lines]) + "\n")
    res = subprocess.run([str(ZKFSD_BIN), "--config", str(cfg)], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines_out = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines_out) == 1, res.stderr
    return lines_out[0]


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((LOCALHOST, port)) == 0


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


def tls_lines(ca: TestCA, port: int, *, p12: bool = False, client_auth: str = "need") -> list[str]:
    server = ca.issue("server")
    store = [f"ssl.keyStore.location={server.p12}", "ssl.keyStore.password=changeit"] if p12 \
        else [f"ssl.keyStore.location={server.key_pem}"]
    return [f"secureClientPort={port}", f"secureClientPortAddress={LOCALHOST}",
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory", *store,
            f"ssl.trustStore.location={ca.ca_pem}", f"ssl.clientAuth={client_auth}",
            "authProvider.x509=org.apache.zookeeper.server.auth.X509AuthenticationProvider"]


def tls_client(ca: TestCA, port: int, cn: str | None = "client") -> KazooClient:
    kw: dict[str, object] = {}
    if cn is not None:
        cert = ca.issue(cn)
        kw = {"certfile": str(cert.cert_pem), "keyfile": str(cert.key_only)}
    return KazooClient(f"{LOCALHOST}:{port}", use_ssl=True, ca=str(ca.ca_pem),
                       verify_certs=True, **kw)


# -- TLS ----------------------------------------------------------------------------------------
def test_tls_only_opens_no_plaintext_port_and_serves_kazoo_over_tls(tmp_path, ca) -> None:
    port = free_port()
    with zkfsd_with(tmp_path, *tls_lines(ca, port)) as log:
        assert "(TLS)" in log.read_text() and not listening(2181) or "2181" not in log.read_text()
        k = tls_client(ca, port)
        k.start(timeout=15)
        try:
            k.create("/tls", b"over tls")
            assert k.get("/tls")[0] == b"over tls"
            # The client certificate is an x509 id that ACLs can name.
            me = ca.issue("client").subject
            k.create("/mine", b"x", acl=[make_acl("x509", me, all=True)])
            assert k.get("/mine")[0] == b"x"
        finally:
            k.stop()
            k.close()


def test_client_certificate_needed_and_x509_acl_enforced(tmp_path, ca) -> None:
    tls_port, plain_port = free_port(), free_port()
    with zkfsd_with(tmp_path, f"clientPort={plain_port}", f"clientPortAddress={LOCALHOST}",
                    *tls_lines(ca, tls_port)):
        assert is_ok(LOCALHOST, plain_port)  # both ports side by side
        anonymous = tls_client(ca, tls_port, cn=None)
        with pytest.raises(Exception):
            anonymous.start(timeout=3)
        anonymous.stop()
        anonymous.close()
        owner = tls_client(ca, tls_port, "owner")
        owner.start(timeout=15)
        other = KazooClient(f"{LOCALHOST}:{plain_port}")
        other.start(timeout=15)
        try:
            owner.create("/owned", b"secret", acl=[make_acl("x509", ca.issue("owner").subject,
                                                            all=True)])
            with pytest.raises(NoAuthError):
                other.get("/owned")
        finally:
            for k in (owner, other):
                k.stop()
                k.close()


def test_pkcs12_key_store(tmp_path, ca) -> None:
    port = free_port()
    with zkfsd_with(tmp_path, *tls_lines(ca, port, p12=True, client_auth="none")):
        k = tls_client(ca, port, cn=None)
        k.start(timeout=15)
        try:
            assert k.exists("/") is not None
        finally:
            k.stop()
            k.close()


def test_ensemble_members_talk_over_tls(tmp_path, ca) -> None:
    from ensemble_helpers import ensemble

    member = ca.issue("member")
    lines = ["sslQuorum=true", f"ssl.quorum.keyStore.location={member.key_pem}",
             f"ssl.quorum.trustStore.location={ca.ca_pem}"]
    with ensemble(tmp_path / "ens", 3, extra_cfg=lines) as ens:
        with ens.client() as k:
            k.create("/quorum-tls", b"replicated")
        for sid in ens.ids:
            with ens.client(sid) as k:
                k.sync("/")
                assert k.get("/quorum-tls")[0] == b"replicated"


# -- SASL ---------------------------------------------------------------------------------------
JAAS = """
Server {
       org.apache.zookeeper.server.auth.DigestLoginModule required
       user_super="adminsecret"
       user_bob="bobsecret";
};
"""


def sasl_lines(tmp_path: Path, *more: str) -> list[str]:
    jaas = tmp_path / "jaas.conf"
    jaas.write_text(JAAS)
    return [f"clientPort={free_port()}", f"clientPortAddress={LOCALHOST}",
            "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider",
            f"jaasLoginFile={jaas}", *more]


def port_of(lines: list[str]) -> int:
    return int(next(v for v in lines if v.startswith("clientPort=")).split("=")[1])


def sasl_client(port: int, user: str, password: str) -> KazooClient:
    return KazooClient(f"{LOCALHOST}:{port}", sasl_options={
        "mechanism": "DIGEST-MD5", "username": user, "password": password})


def test_sasl_digest_md5(tmp_path) -> None:
    lines = sasl_lines(tmp_path)
    with zkfsd_with(tmp_path, *lines):
        bob = sasl_client(port_of(lines), "bob", "bobsecret")
        bob.start(timeout=15)
        anyone = KazooClient(f"{LOCALHOST}:{port_of(lines)}")
        anyone.start(timeout=15)
        try:
            bob.create("/bob", b"mine", acl=[make_acl("sasl", "bob", all=True)])
            assert bob.get("/bob")[0] == b"mine"
            with pytest.raises(NoAuthError):
                anyone.get("/bob")
        finally:
            for k in (bob, anyone):
                k.stop()
                k.close()
        # kazoo reports CONNECTED before its SASL exchange; the failure ends the session.
        wrong = sasl_client(port_of(lines), "bob", "guess")
        seen: list[str] = []
        wrong.add_listener(lambda state: seen.append(state))
        try:
            with contextlib.suppress(AuthFailedError):
                wrong.start(timeout=5)
            deadline = time.monotonic() + 5
            while wrong.client_state not in ("AUTH_FAILED", "CLOSED") and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            assert wrong.client_state in ("AUTH_FAILED", "CLOSED") and "LOST" in seen
        finally:
            wrong.stop()
            wrong.close()


def test_require_client_auth_scheme_sasl(tmp_path) -> None:
    lines = sasl_lines(tmp_path, "requireClientAuthScheme=sasl")
    with zkfsd_with(tmp_path, *lines) as log:
        plain = KazooClient(f"{LOCALHOST}:{port_of(lines)}", connection_retry={"max_tries": 0})
        plain.start(timeout=15)
        try:
            with pytest.raises(Exception):
                plain.get("/", )
        finally:
            plain.stop()
            plain.close()
        assert "before authenticating with SASL" in log.read_text()
        bob = sasl_client(port_of(lines), "bob", "bobsecret")
        bob.start(timeout=15)
        try:
            assert bob.exists("/") is not None
        finally:
            bob.stop()
            bob.close()


def test_super_digest_passes_every_acl(tmp_path) -> None:
    from zkfsd.security import super_digest_id

    port = free_port()
    with zkfsd_with(tmp_path, f"clientPort={port}", f"clientPortAddress={LOCALHOST}",
                    f"DigestAuthenticationProvider.superDigest={super_digest_id('super:adm1n')}"):
        owner = KazooClient(f"{LOCALHOST}:{port}", auth_data=[("digest", "alice:pw")])
        admin = KazooClient(f"{LOCALHOST}:{port}", auth_data=[("digest", "super:adm1n")])
        for k in (owner, admin):
            k.start(timeout=15)
        try:
            owner.create("/alice", b"hers", acl=[make_digest_acl("alice", "pw", all=True)])
            assert admin.get("/alice")[0] == b"hers"
            admin.set("/alice", b"admin was here")
        finally:
            for k in (owner, admin):
                k.stop()
                k.close()


# -- what zkfsd does not implement is refused ----------------------------------------------------
@pytest.mark.parametrize("line,key", [
    ("ssl.crl=true", "ssl.crl"),
    ("ssl.ocsp=true", "ssl.ocsp"),
    ("client.portUnification=true", "client.portUnification"),
    ("authProvider.1=com.example.MyProvider", "authProvider.1"),
    ("quorum.auth.enableSasl=true", "quorum.auth.enableSasl"),
    ("requireClientAuthScheme=kerberos", "requireClientAuthScheme"),
    ("requireClientAuthScheme=sasl", "jaasLoginFile"),
])
def test_unimplemented_security_settings_stop_zkfsd(tmp_path, line, key) -> None:
    message = refused("clientPort=0", line, tmp_path=tmp_path)
    assert key in message


def test_unknown_store_types_are_refused(tmp_path, ca) -> None:
    message = refused(f"secureClientPort={free_port()}", "ssl.keyStore.location=/etc/k.bcfks",
                      "ssl.keyStore.type=BCFKS", tmp_path=tmp_path)
    assert "ssl.keyStore.type" in message and "PKCS12" in message


def test_jks_key_and_trust_stores(tmp_path, ca) -> None:
    """Java's own store format, as kazoo's test harness and many ZooKeeper setups write it."""
    port = free_port()
    server = ca.issue("server")
    with zkfsd_with(tmp_path, f"secureClientPort={port}", f"secureClientPortAddress={LOCALHOST}",
                    f"ssl.keyStore.location={server.jks}", "ssl.keyStore.password=changeit",
                    f"ssl.trustStore.location={ca.trust_jks}", "ssl.trustStore.password=changeit"):
        k = tls_client(ca, port)
        k.start(timeout=15)
        try:
            assert k.exists("/") is not None
        finally:
            k.stop()
            k.close()


# Debian's zookeeper.jar names no netty in its manifest, but ZooKeeper's TLS client is netty's.
_NETTY = [f"/usr/share/java/netty-{part}.jar"
          for part in ("resolver", "codec", "handler", "buffer", "common", "transport")]


def test_zkcli_connects_over_tls(tmp_path, ca) -> None:
    import shutil

    from helpers import ZOOKEEPER_JAR

    java = shutil.which("java")
    jars = [str(ZOOKEEPER_JAR), *_NETTY]
    if java is None or not all(Path(j).exists() for j in jars):
        pytest.skip("ZooKeeper's Java client or netty jars are not installed")
    port = free_port()
    client = ca.issue("zkcli")
    with zkfsd_with(tmp_path, *tls_lines(ca, port)):
        flags = ["-Dzookeeper.clientCnxnSocket=org.apache.zookeeper.ClientCnxnSocketNetty",
                 "-Dzookeeper.client.secure=true",
                 f"-Dzookeeper.ssl.keyStore.location={client.key_pem}",
                 "-Dzookeeper.ssl.keyStore.type=PEM",
                 f"-Dzookeeper.ssl.trustStore.location={ca.ca_pem}",
                 "-Dzookeeper.ssl.trustStore.type=PEM"]

        def zkcli(*args: str) -> str:
            r = subprocess.run([java, "-cp", ":".join(jars), *flags,
                                "org.apache.zookeeper.ZooKeeperMain", "-server",
                                f"{LOCALHOST}:{port}", *args],
                               capture_output=True, text=True, timeout=60)
            return r.stdout + r.stderr

        assert "Created /from-zkcli" in zkcli("create", "/from-zkcli", "over-tls")
        assert "over-tls" in zkcli("get", "/from-zkcli")
