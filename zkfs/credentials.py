"""Credentials for the mount and the command line: `--auth FILE`, `-o auth=FILE`, ZKFS_AUTH.

One credential per line, `scheme:credential` as zkCli's `addauth` takes them
(`digest:alice:secret`); blank lines and `#` comments are skipped. A file must be readable by
its owner only (mode 0600 or stricter), or it is refused: a password file that others can read
is a leaked password.
"""
from __future__ import annotations

import os
import stat

__all__ = ["CredentialError", "parse_credentials", "load_credentials"]

ENV = "ZKFS_AUTH"


class CredentialError(ValueError):
    """The credentials cannot be used; the message names the file or variable."""


def parse_credentials(text: str, where: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        scheme, sep, credential = line.partition(":")
        if not sep or not scheme or not credential:
            raise CredentialError(f"{where}:{n}: expected scheme:credential "
                                  f"(e.g. digest:user:password)")
        out.append((scheme, credential.encode()))
    return out


def load_credentials(path: str | None, env: dict[str, str] | None = None
                     ) -> list[tuple[str, bytes]]:
    """Credentials from `path` (if given) and the ZKFS_AUTH variable (if set)."""
    env = os.environ if env is None else env
    out: list[tuple[str, bytes]] = []
    if path:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise CredentialError(f"{path}: {exc.strerror}") from None
        with os.fdopen(fd, encoding="utf-8") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CredentialError(f"{path}: not a regular file")
            if st.st_mode & 0o077:
                raise CredentialError(f"{path}: readable or writable by others "
                                      f"(mode {st.st_mode & 0o777:o}); chmod 600 it")
            out += parse_credentials(f.read(), path)
    if env.get(ENV):
        out += parse_credentials(env[ENV], ENV)
    return out
