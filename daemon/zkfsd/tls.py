"""TLS contexts from ZooKeeper's ssl.* settings, and x509 auth ids from client certificates.

Key stores: PEM (private key and certificate chain in one file, as ZooKeeper's PEM key store),
PKCS#12 or JKS (Java's own format, read with pyjks, the library kazoo's test harness uses to
write them). Trust stores: the same three.
"""
from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

STORE_TYPES = ("PEM", "PKCS12", "JKS")
CLIENT_AUTH = ("none", "want", "need")
PROTOCOLS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class TlsError(ValueError):
    """A store cannot be read; the message names the file and is meant for the operator."""


@dataclass(frozen=True)
class Store:
    location: str
    password: str | None
    type: str  # one of STORE_TYPES


@dataclass(frozen=True)
class TlsSettings:
    key_store: Store
    trust_store: Store | None
    client_auth: str = "need"  # ZooKeeper's default
    protocols: tuple[str, ...] = ("TLSv1.2", "TLSv1.3")
    hostname_verification: bool = True


def store_type(location: str, given: str | None) -> str:
    """ZooKeeper infers the type from the file name when ssl.*.type is not set."""
    if given:
        return given.upper()
    ext = os.path.splitext(location)[1].lower()
    return {".p12": "PKCS12", ".pfx": "PKCS12", ".jks": "JKS"}.get(ext, "PEM")


def _read(store: Store) -> bytes:
    try:
        with open(store.location, "rb") as f:
            return f.read()
    except OSError as exc:
        raise TlsError(f"cannot read {store.location}: {exc.strerror}") from None


def _pkcs12(store: Store) -> tuple[object, x509.Certificate | None, list[x509.Certificate]]:
    password = store.password.encode() if store.password else None
    try:
        return pkcs12.load_key_and_certificates(_read(store), password)
    except ValueError as exc:
        raise TlsError(f"{store.location}: not a PKCS#12 store or wrong password ({exc})") from None


def _jks(store: Store) -> Any:
    import jks  # pyjks

    try:
        return jks.KeyStore.loads(_read(store), store.password or "")
    except Exception as exc:  # pyjks raises its own types for a bad file or password
        raise TlsError(f"{store.location}: not a JKS store or wrong password ({exc})") from None


def _der_to_pem(kind: str, der: bytes) -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return b"".join([f"-----BEGIN {kind}-----\n".encode(), *(x + b"\n" for x in lines),
                     f"-----END {kind}-----\n".encode()])


def _key_store_pem(store: Store) -> bytes:
    """Key and certificate chain of a PKCS#12 or JKS store, as one PEM text."""
    if store.type == "JKS":
        entries = list(_jks(store).private_keys.values())
        if not entries:
            raise TlsError(f"{store.location}: the JKS store holds no private key")
        entry = entries[0]
        pem = _der_to_pem("PRIVATE KEY", entry.pkey_pkcs8)
        return pem + b"".join(_der_to_pem("CERTIFICATE", der) for _t, der in entry.cert_chain)
    key, cert, chain = _pkcs12(store)
    if key is None or cert is None:
        raise TlsError(f"{store.location}: the PKCS#12 store holds no key and certificate")
    pem = key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                            serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in [cert, *chain])


def _load_key_store(ctx: ssl.SSLContext, store: Store) -> None:
    if store.type == "PEM":
        try:
            ctx.load_cert_chain(store.location, password=store.password or None)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"{store.location}: no usable PEM key and certificate ({exc})") from None
        return
    pem = _key_store_pem(store)
    # ssl loads key material from files only: a private file that lives for this call.
    with tempfile.TemporaryDirectory(prefix="zkfsd-tls-") as tmp:
        path = os.path.join(tmp, "key.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        ctx.load_cert_chain(path)


def _load_trust_store(ctx: ssl.SSLContext, store: Store) -> None:
    if store.type == "PEM":
        try:
            ctx.load_verify_locations(cafile=store.location)
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"{store.location}: no usable PEM certificates ({exc})") from None
        return
    if store.type == "JKS":
        ks = _jks(store)
        ders = [c.cert for c in ks.certs.values()]
        ders += [der for e in ks.private_keys.values() for _t, der in e.cert_chain]
        if not ders:
            raise TlsError(f"{store.location}: the JKS store holds no certificates")
        ctx.load_verify_locations(cadata=b"".join(_der_to_pem("CERTIFICATE", d) for d in ders)
                                  .decode())
        return
    _key, cert, chain = _pkcs12(store)
    certs = [c for c in [cert, *chain] if c is not None]
    if not certs:
        raise TlsError(f"{store.location}: the PKCS#12 store holds no certificates")
    ctx.load_verify_locations(cadata="".join(
        c.public_bytes(serialization.Encoding.PEM).decode() for c in certs))


def _context(settings: TlsSettings, purpose: ssl.Purpose) -> ssl.SSLContext:
    ctx = ssl.create_default_context(purpose)
    versions = sorted(PROTOCOLS[p] for p in settings.protocols)
    ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    _load_key_store(ctx, settings.key_store)
    if settings.trust_store is not None:
        _load_trust_store(ctx, settings.trust_store)
    return ctx


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """For accepting clients (or members): client certificates per ssl.clientAuth."""
    ctx = _context(settings, ssl.Purpose.CLIENT_AUTH)
    ctx.verify_mode = {"none": ssl.CERT_NONE, "want": ssl.CERT_OPTIONAL,
                       "need": ssl.CERT_REQUIRED}[settings.client_auth]
    return ctx


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """For dialling another member: its certificate must chain to our trust store."""
    ctx = _context(settings, ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = settings.hostname_verification
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def x509_id(der: bytes) -> str:
    """The auth id ZooKeeper's X509AuthenticationProvider gives a client certificate: its
    subject's distinguished name in RFC 2253/4514 form (most specific first, `CN=...,O=...`)."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()
