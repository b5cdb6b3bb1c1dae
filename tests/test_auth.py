"""Authenticated clients on the client side: the `zkfs` command line (--auth FILE, ZKFS_AUTH,
getacl/setacl, create --acl) and the mount (-o auth=, acl=, the user.zk.acl attribute),
against zkfsd and Apache ZooKeeper."""
from __future__ import annotations

import pytest
from kazoo.exceptions import NoAuthError
from kazoo.security import make_acl, make_digest_acl

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


def test_authenticated_mount_reads_and_writes_protected_nodes(target, mount, credentials) -> None:
    from mount_helpers import sh

    with kazoo_client(target.hosts) as k:
        k.create("/vault", b"v1", acl=[make_digest_acl("alice", "pw", all=True)])
    alice = mount(target.hosts, f"auth={credentials},acl=creator", name="alice")
    anon = mount(target.hosts, name="anon")
    a, b = alice.mountpoint, anon.mountpoint
    assert sh(f"cat {a}/vault").stdout == "v1"
    sh(f"echo v2 > {a}/vault")
    # Files this mount creates carry its identity's ACL (acl=creator).
    sh(f"echo mine > {a}/private")
    acl = sh(f"getfattr --only-values -n user.zk.acl {a}/private").stdout
    assert acl.startswith("digest:alice:") and acl.endswith(":cdrwa"), acl
    # The unauthenticated mount: EACCES at open, so the shell sees the failure.
    r = sh(f"echo hacked > {b}/vault", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    r = sh(f"cat {b}/private", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    # The ACL as an attribute: set it from the shell, see it from kazoo.
    sh(f"setfattr -n user.zk.acl -v 'world:anyone:r' {a}/private")
    assert sh(f"cat {b}/private").stdout == "mine\n"
    with kazoo_client(target.hosts) as k:
        assert [(x.id.scheme, x.id.id, x.perms) for x in k.get_acls("/private")[0]] == \
            [("world", "anyone", 1)]
        with pytest.raises(NoAuthError):
            k.get("/vault")
    assert sh(f"cat {a}/vault").stdout == "v2\n"


def test_ls_shows_what_the_mounts_identity_may_do(target, mount, credentials) -> None:
    from mount_helpers import sh

    with kazoo_client(target.hosts) as k:
        k.create("/open", b"x")
        k.create("/readonly", b"x", acl=[make_acl("world", "anyone", read=True)])
        k.create("/alices", b"x", acl=[make_digest_acl("alice", "pw", all=True)])
        k.create("/dir", None, acl=[make_acl("world", "anyone", read=True)])
    alice = mount(target.hosts, f"auth={credentials}", name="alice").mountpoint
    anon = mount(target.hosts, name="anon").mountpoint

    def modes(mnt) -> dict[str, str]:  # type: ignore[no-untyped-def]
        out = sh(f"stat -c '%n %A' {mnt}/open {mnt}/readonly {mnt}/alices {mnt}/dir").stdout
        return {line.split()[0].rsplit("/", 1)[1]: line.split()[1] for line in out.splitlines()}

    assert modes(anon) == {"open": "-rw-r--r--", "readonly": "-r--r--r--",
                           "alices": "----------", "dir": "dr-xr-xr-x"}
    assert modes(alice)["alices"] == "-rw-r--r--"
    # Without ADMIN the ACL cannot be changed; with it, the new bits show at once.
    r = sh(f"setfattr -n user.zk.acl -v 'world:anyone:rw' {alice}/readonly", check=False)
    assert r.returncode != 0 and "Permission denied" in r.stderr
    sh(f"setfattr -n user.zk.acl -v 'world:anyone:r' {alice}/alices")
    assert modes(alice)["alices"] == "-r--r--r--"
