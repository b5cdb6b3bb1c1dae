"""SASL for zkfsd clients: DIGEST-MD5 as ZooKeeper serves it, sans-IO.

ZooKeeper's SASL exchange rides on requests of op 102: the client sends tokens
(GetSASLRequest), the server answers each with a token (SetSASLResponse). For DIGEST-MD5
(RFC 2831) the client starts with an empty token, gets the server's challenge, answers it with
its response, and gets `rspauth` back; on success the session is authenticated as
("sasl", username). Realm and digest-uri are ZooKeeper's: `zk-sasl-md5` and
`zookeeper/zk-sasl-md5`, which is what kazoo (pure-sasl) and ZooKeeper's Java client send.

Users come from a JAAS login file in ZooKeeper's format (zoo.cfg `jaasLoginFile`):

    Server {
        org.apache.zookeeper.server.auth.DigestLoginModule required
        user_bob="bobsecret";
    };
"""
from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

REALM = "zk-sasl-md5"
DIGEST_URI = f"zookeeper/{REALM}"
DIGEST_MODULE = "org.apache.zookeeper.server.auth.DigestLoginModule"


class SaslError(Exception):
    """Authentication failed; the message is for the server log."""


class JaasError(ValueError):
    """The JAAS file cannot be used; the message is for the operator."""


def parse_jaas(text: str, section: str = "Server") -> dict[str, str]:
    """The DigestLoginModule users of `section`: name -> password."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.S)
    m = re.search(r"(?:^|[\s;}])" + re.escape(section) + r"\s*\{(.*?)\}\s*;", text, re.S)
    if m is None:
        raise JaasError(f"no '{section} {{ ... }};' section")
    users: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in m.group(1).split(";"))):
        parts = entry.split(None, 2)
        if len(parts) < 2:
            raise JaasError(f"cannot parse login module entry {entry!r}")
        module = parts[0]
        if module != DIGEST_MODULE:
            raise JaasError(f"login module {module} is not supported (only {DIGEST_MODULE})")
        for key, value in re.findall(r'(\S+?)\s*=\s*"((?:[^"\\]|\\.)*)"', parts[2] if len(parts) > 2 else ""):
            if key.startswith("user_"):
                users[key[len("user_"):]] = value.replace('\\"', '"').replace("\\\\", "\\")
    if not users:
        raise JaasError(f"section {section} defines no users (user_NAME=\"password\")")
    return users


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _hex_md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _parse_directives(token: bytes) -> dict[str, str]:
    try:
        text = token.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError("response is not UTF-8") from None
    out: dict[str, str] = {}
    for m in re.finditer(r'\s*([A-Za-z-]+)\s*=\s*("((?:[^"\\]|\\.)*)"|[^,]*)\s*(?:,|$)', text):
        value = m.group(3) if m.group(3) is not None else m.group(2)
        out[m.group(1).lower()] = re.sub(r"\\(.)", r"\1", value)
    return out


@dataclass
class SaslStep:
    token: bytes  # to send back to the client
    username: str | None = None  # set once authentication is complete


class DigestMd5Server:
    """One DIGEST-MD5 exchange with one client (auth only: qop=auth)."""

    def __init__(self, users: Mapping[str, str], nonce: str | None = None) -> None:
        self._users = users
        self._nonce = nonce or secrets.token_urlsafe(24)
        self._state = "start"

    def step(self, token: bytes) -> SaslStep:
        if self._state == "start":
            self._state = "challenged"
            challenge = (f'realm="{REALM}",nonce="{self._nonce}",qop="auth",charset=utf-8,'
                         f"algorithm=md5-sess")
            return SaslStep(challenge.encode())
        if self._state != "challenged":
            raise SaslError("the exchange is already over")
        self._state = "done"
        d = _parse_directives(token)
        username = d.get("username")
        if not username or d.get("nonce") != self._nonce:
            raise SaslError("response without a username or with a foreign nonce")
        if d.get("qop", "auth") != "auth":
            raise SaslError(f"qop {d.get('qop')!r} is not offered")
        password = self._users.get(username)
        if password is None:
            raise SaslError(f"unknown user {username!r}")
        realm, cnonce, nc = d.get("realm", REALM), d.get("cnonce", ""), d.get("nc", "")
        uri = d.get("digest-uri", "")
        if uri != DIGEST_URI:
            raise SaslError(f"digest-uri {uri!r} is not {DIGEST_URI!r}")
        a1 = _md5(f"{username}:{realm}:{password}".encode()) + f":{self._nonce}:{cnonce}".encode()
        if d.get("authzid"):
            a1 += f":{d['authzid']}".encode()
        ha1 = _hex_md5(a1)

        def kd(a2: str) -> str:
            return _hex_md5(f"{ha1}:{self._nonce}:{nc}:{cnonce}:auth:{_hex_md5(a2.encode())}"
                            .encode())

        if not secrets.compare_digest(kd(f"AUTHENTICATE:{uri}"), d.get("response", "")):
            raise SaslError(f"wrong password for user {username!r}")
        return SaslStep(f"rspauth={kd(f':{uri}')}".encode(), username=username)
