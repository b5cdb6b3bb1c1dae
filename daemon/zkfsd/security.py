"""zkfsd's security settings, read from zoo.cfg keys with ZooKeeper's names.

Every key in ZooKeeper's security namespace is either implemented here or refused: a security
setting that zkfsd would silently ignore would leave a server open that its operator believes
closed. `parse_security` raises SecurityError (one line, naming the key) for those.
"""
from __future__ import annotations

import hashlib
import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

from zkfsd import sasl, tls

# Keys in these namespaces are security settings: implemented below, or refused.
_PREFIXES = ("ssl.", "authProvider.", "quorum.auth.", "kerberos.", "enforce.auth.", "sasl.",
             "X509AuthenticationProvider.", "DigestAuthenticationProvider.", "zookeeper.ssl.",
             "zookeeper.authProvider.")
_NAMES = frozenset({
    "secureClientPort", "secureClientPortAddress", "sslQuorum", "requireClientAuthScheme",
    "serverCnxnFactory", "client.portUnification", "sessionRequireClientSASLAuth",
    "sslQuorumReloadCertFiles", "jaasLoginFile", "portUnification",
})
_PROVIDERS = {
    "org.apache.zookeeper.server.auth.SASLAuthenticationProvider": "sasl",
    "org.apache.zookeeper.server.auth.X509AuthenticationProvider": "x509",
    "org.apache.zookeeper.server.auth.DigestAuthenticationProvider": "digest",
}
_CNXN_FACTORIES = ("org.apache.zookeeper.server.NettyServerCnxnFactory",
                   "org.apache.zookeeper.server.NIOServerCnxnFactory")


class SecurityError(ValueError):
    """A security setting zkfsd cannot honour; the message names the key."""


@dataclass(frozen=True)
class Security:
    secure_client_port: int | None = None
    secure_client_address: str | None = None
    client_tls: tls.TlsSettings | None = None
    quorum_tls: tls.TlsSettings | None = None  # sslQuorum=true
    sasl_users: Mapping[str, str] | None = None  # SASL DIGEST-MD5 is offered when set
    require_sasl: bool = False  # requireClientAuthScheme=sasl
    super_ids: frozenset[tuple[str, str]] = field(default_factory=frozenset)

    @property
    def tls_only(self) -> bool:
        return self.secure_client_port is not None


def is_security_key(key: str) -> bool:
    return key in _NAMES or key.startswith(_PREFIXES)


def super_digest_id(user_password: str) -> str:
    """`user:password` -> ZooKeeper's digest id `user:base64(sha1(user:password))`."""
    user = user_password.split(":", 1)[0]
    digest = base64.b64encode(hashlib.sha1(user_password.encode()).digest()).decode()
    return f"{user}:{digest}"


def parse_security(keys: Mapping[str, str]) -> Security:
    """Security from zoo.cfg keys (all of them; only security keys are looked at)."""
    sec = {k: v for k, v in keys.items() if is_security_key(k)}
    used: set[str] = set()

    def take(key: str) -> str | None:
        if key in sec:
            used.add(key)
            return sec[key]
        return None

    def flag(key: str) -> bool:
        value = take(key)
        if value is None:
            return False
        if value.lower() not in ("true", "false"):
            raise SecurityError(f"{key}: expected true or false, got {value!r}")
        return value.lower() == "true"

    secure_port = take("secureClientPort")
    port: int | None = None
    if secure_port is not None:
        try:
            port = int(secure_port)
        except ValueError:
            raise SecurityError(f"secureClientPort: expected a port, got {secure_port!r}") from None
        if not 0 <= port <= 65535:
            raise SecurityError(f"secureClientPort: port must be between 0 and 65535, got {port}")
    factory = take("serverCnxnFactory")
    if factory is not None and factory not in _CNXN_FACTORIES:
        raise SecurityError(f"serverCnxnFactory: {factory} is not supported")

    client_tls = _tls_settings(take, "ssl.", "secureClientPort") if port is not None else None
    quorum_tls = _tls_settings(take, "ssl.quorum.", "sslQuorum") if flag("sslQuorum") else None

    providers = set()
    for key in [k for k in sec if k.startswith(("authProvider.", "zookeeper.authProvider."))]:
        value = take(key) or ""
        if value not in _PROVIDERS:
            raise SecurityError(f"{key}: authentication provider {value} is not supported "
                                f"(zkfsd has {', '.join(sorted(_PROVIDERS))})")
        providers.add(_PROVIDERS[value])

    users = None
    jaas = take("jaasLoginFile")
    if jaas is not None:
        try:
            with open(jaas, encoding="utf-8") as f:
                users = sasl.parse_jaas(f.read())
        except OSError as exc:
            raise SecurityError(f"jaasLoginFile: cannot read {jaas}: {exc.strerror}") from None
        except sasl.JaasError as exc:
            raise SecurityError(f"jaasLoginFile: {jaas}: {exc}") from None

    scheme = take("requireClientAuthScheme")
    if scheme is not None and scheme != "sasl":
        raise SecurityError(f"requireClientAuthScheme: only 'sasl' is supported, got {scheme!r}")
    require = scheme == "sasl" or flag("sessionRequireClientSASLAuth")
    if flag("enforce.auth.enabled"):
        schemes = take("enforce.auth.schemes") or ""
        if schemes != "sasl":
            raise SecurityError(f"enforce.auth.schemes: only 'sasl' is supported, got {schemes!r}")
        require = True
    if require and users is None:
        raise SecurityError("requireClientAuthScheme=sasl needs jaasLoginFile (SASL users)")

    super_ids: set[tuple[str, str]] = set()
    digest = take("DigestAuthenticationProvider.superDigest")
    if digest is not None:
        if ":" not in digest:
            raise SecurityError("DigestAuthenticationProvider.superDigest: expected "
                                "super:BASE64_SHA1 (see zkfsd(8))")
        super_ids.add(("digest", digest))
    x509_super = take("X509AuthenticationProvider.superUser")
    if x509_super is not None:
        super_ids.add(("x509", x509_super))

    secure_address = take("secureClientPortAddress")
    refused = sorted(set(sec) - used)
    if refused:
        raise SecurityError(f"{refused[0]}: security setting not supported by zkfsd (it would be "
                            f"ignored, so zkfsd refuses to start; see zkfsd(8), SECURITY)")
    return Security(port, secure_address, client_tls, quorum_tls, users,
                    require, frozenset(super_ids))


def _tls_settings(take, prefix: str, why: str) -> tls.TlsSettings:  # type: ignore[no-untyped-def]
    def store(kind: str, required: bool) -> tls.Store | None:
        location = take(f"{prefix}{kind}.location")
        password = take(f"{prefix}{kind}.password")
        password_path = take(f"{prefix}{kind}.passwordPath")
        given_type = take(f"{prefix}{kind}.type")
        if location is None:
            if required:
                raise SecurityError(f"{why} needs {prefix}{kind}.location")
            return None
        if password is None and password_path is not None:
            try:
                with open(password_path, encoding="utf-8") as f:
                    password = f.read().strip()
            except OSError as exc:
                raise SecurityError(f"{prefix}{kind}.passwordPath: {exc.strerror}") from None
        kind_type = tls.store_type(location, given_type)
        if kind_type not in tls.STORE_TYPES:
            raise SecurityError(f"{prefix}{kind}.type: {kind_type} stores are not supported "
                                f"(use PEM, PKCS12 or JKS)")
        return tls.Store(location, password, kind_type)

    key_store = store("keyStore", True)
    assert key_store is not None
    trust_store = store("trustStore", False)
    client_auth = (take(f"{prefix}clientAuth") or "need").lower()
    if client_auth not in tls.CLIENT_AUTH:
        raise SecurityError(f"{prefix}clientAuth: expected none, want or need, got {client_auth!r}")
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    enabled = take(f"{prefix}enabledProtocols")
    single = take(f"{prefix}protocol")
    if enabled:
        protocols = tuple(p.strip() for p in enabled.split(",") if p.strip())
    elif single:
        protocols = (single,) if single != "TLSv1.2" else ("TLSv1.2", "TLSv1.3")
    for p in protocols:
        if p not in tls.PROTOCOLS:
            raise SecurityError(f"{prefix}enabledProtocols: {p} is not supported "
                                f"({', '.join(tls.PROTOCOLS)})")
    verify = take(f"{prefix}hostnameVerification")
    hostname_verification = verify is None or verify.lower() == "true"
    if client_auth != "none" and trust_store is None:
        raise SecurityError(f"{prefix}clientAuth={client_auth} needs {prefix}trustStore.location")
    settings = tls.TlsSettings(key_store, trust_store, client_auth, protocols,
                               hostname_verification)
    try:
        tls.server_context(settings)  # read the stores now: a bad one is a start-up error
    except tls.TlsError as exc:
        raise SecurityError(f"{prefix}keyStore/trustStore: {exc}") from None
    return settings
