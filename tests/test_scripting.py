"""`zkfs` for scripts: --json output of get, ls, stat and watch, shell completion, and usage
errors that exit 2 at once (without trying to connect)."""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import kazoo_client

ZKFS = Path(os.path.abspath(sys.executable)).parent / "zkfs"

pytestmark = pytest.mark.timeout(60)


def run(servers: str | None, *args: str, env: dict[str, str] | None = None,
        timeout: float = 20) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ZKFS_", "_ZKFS"))}
    if servers is not None:
        e["ZKFS_SERVERS"] = servers
    e.update(env or {})
    return subprocess.run([str(ZKFS), *args], env=e, capture_output=True, text=True,
                          timeout=timeout)


def one_json(r: subprocess.CompletedProcess[str]) -> dict:  # type: ignore[type-arg]
    assert r.returncode == 0, r
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    return json.loads(lines[0])


def test_json_get_ls_stat(zkfsd):  # type: ignore[no-untyped-def]
    with kazoo_client(zkfsd.hosts) as k:
        k.create("/j", b"text \xc3\xa9")
        k.create("/j/bin", b"\xff\x00\x01")
        k.create("/j/dir", None)
        k.create("/j/eph", b"", ephemeral=True)
        got = one_json(run(zkfsd.hosts, "get", "--json", "/j"))
        stat = k.exists("/j")
        assert got == {"path": "/j", "data": "text é", "stat": {
            "czxid": stat.czxid, "mzxid": stat.mzxid, "pzxid": stat.pzxid,
            "ctime": stat.ctime, "mtime": stat.mtime, "version": stat.version,
            "cversion": stat.cversion, "aversion": stat.aversion,
            "ephemeralOwner": stat.ephemeralOwner, "dataLength": stat.dataLength,
            "numChildren": stat.numChildren}}
        got = one_json(run(zkfsd.hosts, "get", "--json", "/j/bin"))
        assert got["data"] is None and base64.b64decode(got["data_base64"]) == b"\xff\x00\x01"
        assert one_json(run(zkfsd.hosts, "get", "--json", "/j/dir"))["data"] is None

        assert one_json(run(zkfsd.hosts, "ls", "--json", "/j")) == {
            "path": "/j", "children": ["bin", "dir", "eph"]}
        long = one_json(run(zkfsd.hosts, "ls", "-l", "--json", "/j"))
        assert [c["name"] for c in long["children"]] == ["bin", "dir", "eph"]
        eph = long["children"][2]["stat"]
        assert eph["ephemeralOwner"] == k.client_id[0]
        assert one_json(run(zkfsd.hosts, "ls", "-R", "--json", "/")) ["children"][:4] == [
            "j", "j/bin", "j/dir", "j/eph"]

        st = one_json(run(zkfsd.hosts, "stat", "--json", "/j/bin"))
        assert st["path"] == "/j/bin" and st["stat"]["dataLength"] == 3

    # Errors stay one line on stderr with the usual status, nothing on stdout.
    r = run(zkfsd.hosts, "get", "--json", "/missing")
    assert r.returncode == 3 and r.stdout == "" and len(r.stderr.splitlines()) == 1


def test_json_watch_one_object_per_line(zkfsd):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZKFS_")}
    env["ZKFS_SERVERS"] = zkfsd.hosts
    p = subprocess.Popen([str(ZKFS), "watch", "--json", "--ready", "-r", "-n", "3", "/w"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        assert json.loads(p.stdout.readline()) == {"event": "READY", "path": "/w"}
        with kazoo_client(zkfsd.hosts) as k:
            k.create("/w", b"")
            k.set("/w", b"x")
            k.delete("/w")
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"event": "CREATED", "path": "/w"}, {"event": "CHANGED", "path": "/w"},
        {"event": "DELETED", "path": "/w"}]


@pytest.mark.parametrize("servers", ["::::", "a:b:c", "host:99999", "[::1", "/chroot-only"])
def test_bad_connect_string_is_a_usage_error_without_connecting(servers):  # type: ignore[no-untyped-def]
    # No server anywhere: a usage error must come before any attempt to connect (which would
    # end in exit 7 after the timeout).
    r = run(servers, "ls", "/", timeout=10)
    assert r.returncode == 2, r
    assert len(r.stderr.splitlines()) == 1 and "invalid --servers" in r.stderr, r.stderr
    r = run(None, "--servers", servers, "elect", "/x", "--", "true", timeout=10)
    assert r.returncode == 2, r


def test_shell_completion(zkfsd):  # type: ignore[no-untyped-def]
    r = run(None, env={"_ZKFS_COMPLETE": "bash_source"})
    assert r.returncode == 0 and "_zkfs_completion()" in r.stdout and "complete " in r.stdout
    r = run(None, env={"_ZKFS_COMPLETE": "bash_complete", "COMP_WORDS": "zkfs el",
                       "COMP_CWORD": "1"})
    assert "plain,elect" in r.stdout.splitlines(), r.stdout
    r = run(None, env={"_ZKFS_COMPLETE": "bash_complete", "COMP_WORDS": "zkfs ls --j",
                       "COMP_CWORD": "2"})
    assert "plain,--json" in r.stdout.splitlines(), r.stdout
    # The same script works when sourced by a real bash.
    script = run(None, env={"_ZKFS_COMPLETE": "bash_source"}).stdout
    check = subprocess.run(["bash", "-c", script + "\ncomplete -p zkfs"], capture_output=True,
                           text=True, timeout=10)
    assert check.returncode == 0 and "_zkfs_completion" in check.stdout, check
