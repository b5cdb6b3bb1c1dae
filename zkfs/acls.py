"""ACLs as text, in zkCli's form: `scheme:id:perms` entries separated by commas.

`world:anyone:cdrwa`, `digest:alice:X3x...=:rw`, `ip:10.0.0.0/8:r`, `sasl:bob:cdrwa`,
`auth::cdrwa` (the creator's authenticated ids). Perms are letters of c(reate), d(elete),
r(ead), w(rite), a(dmin). The id is whatever lies between the first and the last colon, so
digest ids (user:hash) need no quoting.
"""
from __future__ import annotations

from zkfs.constants import Perm
from zkfs.jute import ACL, Id

__all__ = ["AclTextError", "parse_acl", "format_acl", "CREATOR_ALL", "OPEN"]

_LETTERS = (("c", Perm.CREATE), ("d", Perm.DELETE), ("r", Perm.READ), ("w", Perm.WRITE),
            ("a", Perm.ADMIN))

OPEN = [ACL(int(Perm.ALL), Id("world", "anyone"))]
CREATOR_ALL = [ACL(int(Perm.ALL), Id("auth", ""))]


class AclTextError(ValueError):
    pass


def parse_acl(text: str) -> list[ACL]:
    entries: list[ACL] = []
    for item in filter(None, (part.strip() for part in text.strip().split(","))):
        scheme, sep, rest = item.partition(":")
        ident, sep2, perms_text = rest.rpartition(":")
        if not sep or not sep2 or not scheme:
            raise AclTextError(f"{item!r}: expected scheme:id:perms (e.g. world:anyone:r)")
        perms = 0
        for ch in perms_text.lower():
            match = [p for letter, p in _LETTERS if letter == ch]
            if not match:
                raise AclTextError(f"{item!r}: unknown permission {ch!r} (use c, d, r, w, a)")
            perms |= int(match[0])
        entries.append(ACL(perms, Id(scheme, ident)))
    if not entries:
        raise AclTextError("empty ACL")
    return entries


def format_acl(acl: list[ACL]) -> str:
    def perms(p: int) -> str:
        return "".join(letter for letter, bit in _LETTERS if p & int(bit))
    return ",".join(f"{a.id.scheme}:{a.id.id}:{perms(a.perms)}" for a in acl)
