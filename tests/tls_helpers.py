"""A throwaway certificate authority for TLS tests: PEM and PKCS#12 stores on disk."""
from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import jks
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID


@dataclass
class Issued:
    key_pem: Path  # key and certificate in one PEM file (ZooKeeper's PEM key store)
    cert_pem: Path
    key_only: Path
    p12: Path  # the same as PKCS#12, password "changeit"
    jks: Path  # and as JKS, password "changeit"
    subject: str  # RFC 4514, as an x509 auth id


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "zkfs tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


class TestCA:
    __test__ = False  # not a pytest class

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name("zkfs test CA")).issuer_name(_name("zkfs test CA"))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.ca_pem = self.dir / "ca.pem"
        self.ca_pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.trust_jks = self.dir / "trust.jks"
        jks.KeyStore.new("jks", [jks.TrustedCertEntry.new(
            "ca", self.cert.public_bytes(serialization.Encoding.DER))]).save(
            str(self.trust_jks), "changeit")

    def issue(self, cn: str) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(_name(cn)).issuer_name(self.cert.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.SubjectAlternativeName([
                    x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                    critical=False)
                .sign(self.key, hashes.SHA256()))
        key_bytes = key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        cert_bytes = cert.public_bytes(serialization.Encoding.PEM)
        out = Issued(self.dir / f"{cn}.pem", self.dir / f"{cn}.crt", self.dir / f"{cn}.key",
                     self.dir / f"{cn}.p12", self.dir / f"{cn}.jks", cert.subject.rfc4514_string())
        pkcs8_der = key.private_bytes(serialization.Encoding.DER,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
        jks.KeyStore.new("jks", [jks.PrivateKeyEntry.new(
            cn, [cert.public_bytes(serialization.Encoding.DER)], pkcs8_der, "pkcs8")]).save(
            str(out.jks), "changeit")
        out.key_pem.write_bytes(key_bytes + cert_bytes)
        out.cert_pem.write_bytes(cert_bytes)
        out.key_only.write_bytes(key_bytes)
        out.p12.write_bytes(pkcs12.serialize_key_and_certificates(
            cn.encode(), key, cert, [self.cert],
            serialization.BestAvailableEncryption(b"changeit")))
        return out
