"""Debian's zkCli.sh (ZooKeeper 3.8's own command-line client) against zkfsd.

Every command runs as `zkCli.sh -server 127.0.0.1:PORT <cmd>` (one JVM, one session, one
command). The same script runs against zkfsd and against the reference Apache ZooKeeper, in
parallel, and the normalized outputs must match: exit status, stdout (data, child lists, Stat
fields other than zxids and times) and stderr (zkCli's error messages).

zkCli does not close its session when a one-shot command exits, so an ephemeral node it creates
lives until the session times out. zkCli asks for 30 s; the comparison runs zkfsd with the
reference's session bounds (maximum 40 s) so both grant it, and the script still never lists a
directory holding an ephemeral node.
"""
from __future__ import annotations

import concurrent.futures
import re
import uuid
from collections.abc import Callable

import pytest

from helpers import ZKCLI, ApacheZooKeeper, ZkfsdProcess, apache_zookeeper_missing, run_zkcli

pytestmark = pytest.mark.skipif(
    not ZKCLI.exists() or apache_zookeeper_missing() is not None,
    reason="zkCli.sh or Java missing (run scripts/setup.sh)")

# Lines zkCli prints on every run, whatever the command.
_NOISE = re.compile(r"^(Connecting to |WATCHER::$|WatchedEvent state:SyncConnected type:None "
                    r"path:null$|SLF4J: )")
_ZXID = re.compile(r"^(cZxid|mZxid|pZxid) = 0x[0-9a-f]+$")
_TIME = re.compile(r"^(ctime|mtime) = .+$")
_OWNER = re.compile(r"^ephemeralOwner = 0x[0-9a-f]*[1-9a-f][0-9a-f]*$")


def _normalize(text: str, base: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.strip() or _NOISE.match(line):
            continue
        line = line.replace(base, "~")
        line = _ZXID.sub(lambda m: f"{m.group(1)} = <zxid>", line)
        line = _TIME.sub(lambda m: f"{m.group(1)} = <time>", line)
        line = _OWNER.sub("ephemeralOwner = <session>", line)
        lines.append(line)
    return lines


def zkcli(hosts: str, base: str, command: str) -> tuple[str, int, list[str], list[str]]:
    """(command, exit status, stdout lines, stderr lines), normalized; `~` in command = base."""
    args = command.replace("~", base).split(" ")
    result = run_zkcli(hosts, *args, timeout=30)
    return (command, result.returncode, _normalize(result.stdout, base),
            _normalize(result.stderr, base))


# One command per line; '~' is the script's unique base path.
SCRIPT = """\
create ~ top
create ~/a hello
get ~/a
set ~/a world
get -s ~/a
stat ~/a
create ~/a again
create ~/missing/child x
set -v 5 ~/a nope
set -v 1 ~/a v2
create -s ~/a/s- one
create -s ~/a/s- two
create ~/a/plain
ls ~/a
ls -s ~
create ~/null
get ~/null
create ~/empty
delete ~/a
delete -v 3 ~/a/s-0000000000
delete ~/a/s-0000000000
delete ~/a/missing
ls ~/a
get ~/missing
ls ~/missing
stat ~/missing
create -e ~/null/eph e
create ~/null/eph/child x
create -c ~/container
create -t 60000 ~/ttl t
stat ~/container
getAcl ~/a
setAcl ~/empty world:anyone:r
set ~/empty x
getAcl ~/empty
getAllChildrenNumber ~/a
sync ~
whoami
ls /zookeeper
deleteall ~
get ~
"""


def _run_script(hosts: str, base: str) -> list[tuple[str, int, list[str], list[str]]]:
    return [zkcli(hosts, base, line) for line in SCRIPT.splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_zkcli_outputs_match_zookeeper(zkfsd_factory: Callable[..., ZkfsdProcess],
                                       apache_zk: ApacheZooKeeper) -> None:
    # The reference's session timeout bounds (4 s .. 40 s), so zkCli's sessions last as long.
    zkfsd = zkfsd_factory("zkfsd", extra_args=["--min-session-timeout", "4000",
                                               "--max-session-timeout", "40000"])
    base = f"/zkcli-{uuid.uuid4().hex[:12]}"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ours_future = pool.submit(_run_script, zkfsd.hosts, base)
        ref_future = pool.submit(_run_script, apache_zk.hosts, base)
        ours, ref = ours_future.result(), ref_future.result()

    diffs = [f"{a[0]!r}:\n  zkfsd:     {a[1:]!r}\n  zookeeper: {b[1:]!r}"
             for a, b in zip(ours, ref) if a != b]
    assert not diffs, "\n".join(diffs)

    # And the outputs are the expected ones, not merely equal (both could be broken the same way).
    by_command = {command: (rc, out, err) for command, rc, out, err in ours}
    assert by_command["get ~/a"] == (0, ["hello"], [])
    assert by_command["get -s ~/a"][1][0] == "world"
    assert "dataVersion = 1" in by_command["stat ~/a"][1]
    assert "dataLength = 5" in by_command["stat ~/a"][1]
    assert "ephemeralOwner = 0x0" in by_command["stat ~/a"][1]
    assert by_command["create ~/a again"][0] == 1
    assert by_command["create ~/a again"][2] == ["Node already exists: ~/a"]
    assert by_command["create ~/missing/child x"][2] == ["Node does not exist: ~/missing/child"]
    assert by_command["set -v 5 ~/a nope"][2] == ["version No is not valid : ~/a"]
    assert by_command["create -s ~/a/s- one"][2] == ["Created ~/a/s-0000000000"]
    assert by_command["create -s ~/a/s- two"][2] == ["Created ~/a/s-0000000001"]
    assert by_command["ls ~/a"] == (0, ["[plain, s-0000000001]"], [])
    assert by_command["get ~/null"] == (0, ["null"], [])
    assert by_command["delete ~/a"][0] == 1
    assert by_command["delete ~/a"][2] == ["Node not empty: ~/a"]
    assert by_command["get ~/missing"][2] == ["Node does not exist: ~/missing"]
    assert by_command["create ~/null/eph/child x"][2] == [
        "Ephemerals cannot have children: ~/null/eph/child"]
    assert by_command["getAcl ~/a"] == (0, ["'world,'anyone", ": cdrwa"], [])
    assert by_command["set ~/empty x"][2] == ["Insufficient permission : ~/empty"]
    assert by_command["whoami"][1] == ["Auth scheme: User", "ip: 127.0.0.1"]
    assert by_command["sync ~"][1] == ["Sync is OK"]
    assert by_command["ls /zookeeper"] == (0, ["[config, quota]"], [])
    assert by_command["get ~"][0] == 1


@pytest.mark.timeout(60)
def test_zkcli_basic_commands_zkfsd(zkfsd: ZkfsdProcess) -> None:
    """The everyday commands against zkfsd alone, with their exact outputs."""
    base = "/basic"
    steps = [zkcli(zkfsd.hosts, base, cmd) for cmd in (
        "create ~ data", "get ~", "set ~ new", "get ~", "ls /", "delete ~", "get ~")]
    assert steps[0][1:] == (0, [], ["Created ~"])
    assert steps[1][1:] == (0, ["data"], [])
    assert steps[2][1:] == (0, [], [])
    assert steps[3][1:] == (0, ["new"], [])
    assert steps[4][1:] == (0, ["[basic, zookeeper]"], [])
    assert steps[5][1:] == (0, [], [])
    assert steps[6][1:] == (1, [], ["Node does not exist: ~"])
