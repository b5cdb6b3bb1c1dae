"""Whether an identity may write a znode, judged from the znode's ACL on the client side.

The mount must refuse a write it cannot commit at open(2), because the shells ignore close()
errors of redirections (DESIGN.md §3, "When errors come"). The server is the authority; this
only answers "certainly not" when no ACL entry could match the mount's identities, and
"maybe" otherwise, so it never refuses what the server would allow.

A session's identities are `world:anyone`, `ip:<its address>` (implicit in ZooKeeper) and
whatever it authenticated as (whoami). An entry of any other scheme can only match an identity
the session authenticated with that same scheme.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from zkfs.constants import Perm
from zkfs.jute import ACL

__all__ = ["Identity", "may"]


@dataclass(frozen=True)
class Identity:
    scheme: str
    #: For digest: the user name only (what whoami reports); for ip: the address.
    id: str


def _ip_matches(entry: str, address: str) -> bool:
    try:
        net = ipaddress.ip_network(entry, strict=False)
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False


def _could_match(entry_scheme: str, entry_id: str, identities: Iterable[Identity]) -> bool:
    if entry_scheme == "world":
        return entry_id == "anyone"
    for ident in identities:
        if ident.scheme != entry_scheme:
            continue
        if entry_scheme == "ip":
            if _ip_matches(entry_id, ident.id):
                return True
        elif entry_scheme == "digest":
            # whoami tells only the user name; the hash decides on the server.
            if entry_id.split(":", 1)[0] == ident.id:
                return True
        elif entry_id == ident.id:
            return True
    return False


def may(acl: Sequence[ACL], perm: Perm, identities: Sequence[Identity],
        ip_known: bool = True) -> bool:
    """False only if no entry of `acl` granting `perm` can match any of `identities`.

    `ip_known`: whether `identities` holds the session's ip identity; if not, every ip entry
    is a possible match.
    """
    if any(i.scheme == "super" for i in identities):
        return True
    for entry in acl:
        if not entry.perms & perm:
            continue
        scheme = entry.id.scheme or ""
        ident = entry.id.id or ""
        if scheme == "ip" and not ip_known:
            return True
        if _could_match(scheme, ident, identities):
            return True
    return False
