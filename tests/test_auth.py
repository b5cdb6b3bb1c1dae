"""Authenticated clients on the client side: the `zkfs` command line (--auth FILE, ZKFS_AUTH,
getacl/setacl, create --acl) and the mount (-o auth=, acl=, the user.zk.acl attribute),
against zkfsd and Apache ZooKeeper."""
from __future__ import annotations

import pytest
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl

from helpers import kazoo_client
from test_cli import fails, ok, zkfs

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def credentials(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "auth"
    path.write_text("# alice's credential\ndigest:alice:pw\n")
    path.chmod(0o600)
    return path


def test_cli_authenticates_from_a_private_file_or_the_environment(target, credentials) -> None:
    servers = target.hosts
    assert ok(servers, "--auth", str(credentials), "create", "/a", "secret", "--acl",
              "auth::cdrwa") == b"/a\n"
    assert "not authorized" in fails(servers, 8, "get", "/a")
    assert ok(servers, "--auth", str(credentials), "get", "/a") == b"secret"
    env = {"ZKFS_AUTH": "digest:alice:pw"}
    r = zkfs(servers, "getacl", "/a", env=env)
    assert r.returncode == 0 and r.stdout.startswith(b"digest:alice:") and \
        r.stdout.endswith(b":cdrwa\n")
    assert zkfs(servers, "setacl", "/a", "world:anyone:r", env=env).returncode == 0
    assert ok(servers, "get", "/a") == b"secret"
    assert "not authorized" in fails(servers, 8, "set", "/a", "x")
    with kazoo_client(servers) as k:
        with pytest.raises(NoAuthError):
            k.set("/a", b"x")


def test_cli_refuses_a_credentials_file_others_can_read(zkfsd, credentials) -> None:
    credentials.chmod(0o644)
    line = fails(zkfsd.hosts, 2, "--auth", str(credentials), "ls", "/")
    assert "chmod 600" in line
    assert "unknown permission" in fails(zkfsd.hosts, 2, "setacl", "/", "world:anyone:q")
