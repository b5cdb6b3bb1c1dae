"""Dynamic reconfiguration with real processes: kazoo's `reconfig` against a zkfsd ensemble
(and the same requests against an Apache ZooKeeper 3.8 ensemble where the answers could
differ).

The main scenario: three members, a fourth and a fifth added, one removed, then the leader
killed with kill -9 while a reconfig is on its way; a writer keeps writing throughout, and in
the end every acknowledged write is on every member and /zookeeper/config is the same,
ZooKeeper-formatted membership on every member.
"""
from __future__ import annotations

import base64
import dataclasses
import hashlib
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kazoo.exceptions import (BadArgumentsError, BadVersionError, ConnectionLoss, KazooException,
                              NewConfigNoQuorumError, NoAuthError, ReconfigDisabledError,
                              ReconfigInProcessError, SessionExpiredError, UnimplementedError,
                              ZookeeperError)

from ensemble_helpers import Ensemble, assert_converged
from helpers import (LOCALHOST, ApacheZooKeeper, ZkfsdProcess, apache_zookeeper_missing,
                     four_letter_word, free_port, kazoo_client)

SUPER = ("digest", "super:test")
SUPER_DIGEST = "super:" + base64.b64encode(hashlib.sha1(b"super:test").digest()).decode()
RECONFIG_CFG = ["reconfigEnabled=true", f"DigestAuthenticationProvider.superDigest={SUPER_DIGEST}"]


def config_of(client: Any) -> tuple[bytes, Any]:
    client.sync("/zookeeper/config")
    return client.get("/zookeeper/config")


def members_in(data: bytes) -> dict[int, str]:
    lines = data.decode().splitlines()
    assert lines[-1].startswith("version="), data
    int(lines[-1].split("=", 1)[1], 16)
    return {int(line.split("=")[0].split(".")[1]): line for line in lines[:-1]}


def configs_by_member(ens: Ensemble, timeout: float = 20.0) -> dict[int, bytes]:
    """/zookeeper/config as each running member serves it (after a sync through it)."""
    out: dict[int, bytes] = {}
    deadline = time.monotonic() + timeout
    for sid in ens.running():
        while True:
            try:
                with ens.client(sid, connect_timeout=5.0) as k:
                    out[sid] = config_of(k)[0]
                break
            except (KazooException, OSError, Exception):  # noqa: BLE001 - still electing
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    return out


def wait_config_everywhere(ens: Ensemble, expected: bytes | None = None,
                           timeout: float = 30.0) -> bytes:
    """Every running member serves the same /zookeeper/config (`expected`, if given)."""
    deadline = time.monotonic() + timeout
    while True:
        configs = configs_by_member(ens)
        values = set(configs.values())
        if len(values) == 1 and (expected is None or expected in values):
            return values.pop()
        if time.monotonic() > deadline:
            raise AssertionError(f"members disagree on /zookeeper/config: {configs}")
        time.sleep(0.3)


class Writer(threading.Thread):
    """Creates /rc/wN one after another until stopped; remembers every acknowledged one."""

    def __init__(self, hosts: str) -> None:
        super().__init__(daemon=True)
        self.hosts = hosts
        self.acked: dict[str, bytes] = {}
        self.stopping = threading.Event()
        self.errors = 0

    def run(self) -> None:
        i = 0
        with kazoo_client(self.hosts, timeout=10.0) as k:
            k.ensure_path("/rc")
            while not self.stopping.is_set():
                path, data = f"/rc/w{i:05d}", b"%d" % i
                try:
                    k.create(path, data)
                    self.acked[path] = data
                    i += 1
                except (ConnectionLoss, SessionExpiredError):
                    # Unknown outcome: it may or may not have committed; never claimed.
                    self.errors += 1
                    time.sleep(0.1)
                    i += 1
                except KazooException:
                    self.errors += 1
                    time.sleep(0.1)
                    i += 1
                time.sleep(0.01)


def reconfig_retrying(client: Any, timeout: float = 30.0, **kwargs: Any) -> tuple[bytes, Any]:
    """kazoo's reconfig, retried while the ensemble is busy electing or finishing a change."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return client.reconfig(**kwargs)
        except (ConnectionLoss, ReconfigInProcessError, NewConfigNoQuorumError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@pytest.mark.timeout(240)
def test_grow_shrink_and_kill_the_leader_during_a_reconfig(tmp_path: Path) -> None:
    ens = Ensemble(tmp_path, 3, extra_cfg=RECONFIG_CFG)
    writer: Writer | None = None
    try:
        ens.start()
        ens.wait_stable()
        initial = wait_config_everywhere(ens)
        assert set(members_in(initial)) == {1, 2, 3}
        assert initial.endswith(b"version=0")
        writer = Writer(ens.hosts())
        writer.start()
        with ens.client(auth_data=[SUPER]) as admin:
            # Grow to four, then five: each new member is started first, with a zoo.cfg naming
            # the current members and itself, and is caught up before it votes.
            for sid in (4, 5):
                ens.add_member(sid)
                ens.start_member(sid)
                line = ens.server_line(sid)
                data, stat = reconfig_retrying(admin, joining=line, leaving=None,
                                               new_members=None)
                assert line.encode() in data
                assert stat.version == -1 and stat.mzxid == int(data.rsplit(b"=", 1)[1], 16)
                assert set(members_in(data)) == set(range(1, sid + 1))
                wait_config_everywhere(ens, data)
                assert ens.srvr(sid).get("Mode") in ("follower", "leader")
            # Remove a follower.
            leader = ens.wait_stable()
            gone = next(s for s in (1, 2, 3) if s != leader)
            data, _ = reconfig_retrying(admin, joining=None, leaving=str(gone), new_members=None)
            assert gone not in members_in(data)
            ens.drop_member(gone)
            wait_config_everywhere(ens, data)
            ens.wait_stable()
        # kill -9 the leader while a reconfig (removing another follower) is on its way.
        leader = ens.wait_stable()
        victim = next(s for s in ens.ids if s != leader)
        outcome: dict[str, Any] = {}

        def reconfig() -> None:
            try:
                with ens.client(victim, auth_data=[SUPER]) as k:
                    outcome["data"] = k.reconfig(joining=None, leaving=str(leader),
                                                 new_members=None)[0]
            except (KazooException, ZookeeperError) as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=reconfig)
        thread.start()
        time.sleep(0.05)
        ens.kill9(leader)
        thread.join(60)
        ens.wait_stable(ids=[s for s in ens.ids if s != leader], timeout=30)
        survivors = [s for s in ens.ids if s != leader]
        config = wait_config_everywhere(ens)
        if "data" in outcome:
            # Acknowledged: the leader's removal committed, and stays so.
            assert config == outcome["data"] and leader not in members_in(config)
        if leader in members_in(config):
            # The change did not happen (or was refused): the old leader comes back as a member.
            ens.start_member(leader)
            wait_config_everywhere(ens, config)
        else:
            ens.drop_member(leader)
        assert set(members_in(config)) >= set(survivors)
        time.sleep(0.5)
        writer.stopping.set()
        writer.join(30)
        assert len(writer.acked) > 20, (writer.errors, outcome)
        assert_converged(ens, "/rc", writer.acked)
        for sid, data in configs_by_member(ens).items():
            assert data == config, sid
    except BaseException:
        print(ens.log_tails(40))
        raise
    finally:
        if writer is not None:
            writer.stopping.set()
        ens.stop_all()


@pytest.mark.timeout(120)
def test_reconfig_refusals_and_restart(tmp_path: Path) -> None:
    """The errors as ZooKeeper gives them, what zkfsd refuses on purpose, and a membership that
    survives a restart of the whole ensemble (it lives in the log and snapshots)."""
    ens = Ensemble(tmp_path, 3, extra_cfg=[*RECONFIG_CFG, "snapCount=5"])
    try:
        ens.start()
        ens.wait_stable()
        # Not through member 3, which this test removes (its clients lose their connection).
        with ens.client([1, 2], auth_data=[SUPER]) as admin:
            data, _ = config_of(admin)
            version = int(data.rsplit(b"=", 1)[1], 16)
            with pytest.raises(BadVersionError):
                admin.reconfig(joining=None, leaving="3", new_members=None,
                               from_config=version + 1)
            with pytest.raises(BadArgumentsError):  # two voters at once: zkfsd refuses
                admin.reconfig(joining=None, leaving=None, new_members=",".join(
                    [ens.server_line(1), "server.8=127.0.0.1:1:2:participant;3",
                     "server.9=127.0.0.1:4:5:participant;6"]))
            with pytest.raises(NewConfigNoQuorumError):  # a voter that is not there
                admin.reconfig(joining="server.7=127.0.0.1:1:2:participant;3", leaving=None,
                               new_members=None)
            # Non-incremental, one voter fewer, from the current version.
            new = ",".join(ens.server_line(s) for s in (1, 2))
            data, _ = admin.reconfig(joining=None, leaving=None, new_members=new,
                                     from_config=version)
            assert set(members_in(data)) == {1, 2}
            for i in range(12):  # past snapCount: the change ends up in a snapshot
                admin.create(f"/n{i}", b"x")
        with ens.client(1) as anyone:
            with pytest.raises(NoAuthError):
                anyone.reconfig(joining="server.50=127.0.0.1:1:2:observer;3", leaving=None,
                                new_members=None)
        ens.drop_member(3)
        for sid in (1, 2):
            ens.stop(sid)
        for sid in (1, 2):
            ens.start_member(sid)
        ens.wait_stable()
        assert wait_config_everywhere(ens) == data
    except BaseException:
        print(ens.log_tails(40))
        raise
    finally:
        ens.stop_all()


class _ZooKeeperPeer(ApacheZooKeeper):
    """A member of an Apache ZooKeeper ensemble (QuorumPeerMain), reconfig on, superDigest."""

    def __init__(self, base_dir: Path, port: int, sid: int, lines: list[str]) -> None:
        super().__init__(base_dir, port, tick_time=500)
        self.sid, self.lines = sid, lines

    def is_ready(self) -> bool:
        try:
            return "Mode: " in four_letter_word(self.host, self.port, "srvr", timeout=1.0) and \
                "standalone" not in four_letter_word(self.host, self.port, "srvr", timeout=1.0)
        except OSError:
            return False

    def write_config(self) -> None:
        super().write_config()
        (self.data_dir / "myid").write_text(f"{self.sid}\n")
        with open(self.cfg_path, "a") as f:
            f.write("\n".join(["initLimit=10", "syncLimit=5", "reconfigEnabled=true",
                               *self.lines, ""]))

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("org.apache.zookeeper.server.ZooKeeperServerMain")] = \
            "org.apache.zookeeper.server.quorum.QuorumPeerMain"
        cmd.insert(1, f"-Dzookeeper.DigestAuthenticationProvider.superDigest={SUPER_DIGEST}")
        return cmd


def _zookeeper_ensemble(base: Path) -> tuple[list[_ZooKeeperPeer], str]:
    ports = [free_port() for _ in range(9)]
    lines = [f"server.{i + 1}={LOCALHOST}:{ports[3 + i]}:{ports[6 + i]}" for i in range(3)]
    peers = [_ZooKeeperPeer(base / f"zk{i + 1}", ports[i], i + 1, lines) for i in range(3)]
    return peers, ",".join(f"{LOCALHOST}:{p}" for p in ports[:3])


@pytest.fixture(params=["zkfsd", "zookeeper"])
def reconfig_ensemble(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(hosts) of a 3-member ensemble with reconfig on, zkfsd's or Apache ZooKeeper's."""
    if request.param == "zkfsd":
        ens = Ensemble(tmp_path, 3, extra_cfg=RECONFIG_CFG)
        try:
            ens.start()
            ens.wait_stable()
            yield ens.hosts()
        finally:
            ens.stop_all()
        return
    missing = apache_zookeeper_missing()
    if missing:
        pytest.skip(f"Apache ZooKeeper unavailable: {missing}")
    peers, hosts = _zookeeper_ensemble(tmp_path)
    threads = [threading.Thread(target=p.start) for p in peers]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        yield hosts
    finally:
        for p in peers:
            p.stop()


@pytest.mark.timeout(180)
def test_same_answers_as_zookeeper(reconfig_ensemble: str) -> None:
    """kazoo's add/remove-observer steps, the refusals, the Stat of /zookeeper/config and its
    watch: the same on zkfsd and on Apache ZooKeeper."""
    hosts = reconfig_ensemble
    with kazoo_client(hosts, auth_data=[SUPER]) as admin, kazoo_client(hosts) as plain:
        before, stat = config_of(plain)
        assert set(members_in(before)) == {1, 2, 3} and stat.version == -1
        assert stat.aversion == -1 and plain.get_acls("/zookeeper/config")[0][0].perms == 1
        events: list[Any] = []
        fired = threading.Event()
        plain.get("/zookeeper/config", watch=lambda e: (events.append(e), fired.set()))
        joining = f"server.100={LOCALHOST}:{free_port()}:{free_port()}:observer;0.0.0.0:{free_port()}"
        with pytest.raises(NoAuthError):
            plain.reconfig(joining=joining, leaving=None, new_members=None)
        data, stat = admin.reconfig(joining=joining, leaving=None, new_members=None)
        assert joining.encode() in data and stat.version == -1
        assert fired.wait(10) and events[0].type == "CHANGED"
        assert config_of(plain)[0] == data
        data, _ = admin.reconfig(joining=None, leaving="100", new_members=None)
        assert joining.encode() not in data and set(members_in(data)) == {1, 2, 3}
        version = int(data.rsplit(b"=", 1)[1], 16)
        with pytest.raises(BadVersionError):
            admin.reconfig(joining=joining, leaving=None, new_members=None,
                           from_config=version + 1)
        for bad in ("some thing", "server.9=127.0.0.1:1:2:observer", "server.9=127.0.0.1:1;4"):
            with pytest.raises(BadArgumentsError):
                admin.reconfig(joining=bad, leaving=None, new_members=None)
        with pytest.raises(BadArgumentsError):  # fewer than two voters left
            admin.reconfig(joining=None, leaving=None,
                           new_members=members_in(data)[1])
        assert config_of(plain)[0] == data


@pytest.mark.timeout(90)
def test_disabled_and_standalone_answers(tmp_path: Path) -> None:
    """reconfigEnabled off (ZooKeeper's default): ReconfigDisabled; a standalone server with
    it on: Unimplemented, as ZooKeeper's standalone server answers."""
    ens = Ensemble(tmp_path / "ens", 3)
    try:
        ens.start()
        ens.wait_stable()
        with ens.client(1, auth_data=[SUPER]) as k:
            with pytest.raises(ReconfigDisabledError):
                k.reconfig(joining=None, leaving="2", new_members=None)
    finally:
        ens.stop_all()
    cfg = tmp_path / "standalone.cfg"
    cfg.write_text("reconfigEnabled=true\n")
    with ZkfsdProcess(tmp_path / "standalone", extra_args=["--config", str(cfg)]) as server:
        with kazoo_client(server.hosts) as k:
            with pytest.raises(UnimplementedError):
                k.reconfig(joining=None, leaving="2", new_members=None)


@pytest.mark.timeout(180)
def test_zkcli_reconfig(tmp_path: Path) -> None:
    """zkCli.sh's `reconfig -add/-remove` and `config`, in one zkCli session (addauth first)."""
    import subprocess

    from helpers import ZKCLI

    if not ZKCLI.exists() or apache_zookeeper_missing() is not None:
        pytest.skip("zkCli.sh or Java missing (run scripts/setup.sh)")
    ens = Ensemble(tmp_path, 3, extra_cfg=RECONFIG_CFG)
    try:
        ens.start()
        ens.wait_stable()
        observer = f"server.60={LOCALHOST}:{free_port()}:{free_port()}:observer;{free_port()}"
        script = "\n".join(["addauth digest super:test",
                            f"reconfig -add {observer}",
                            "config",
                            "reconfig -remove 60",
                            "config",
                            "quit", ""])
        result = subprocess.run(["bash", str(ZKCLI), "-server", ens.hosts([1])], input=script,
                                capture_output=True, text=True, timeout=120)
        out = result.stdout
        assert "Committed new configuration:" in out, out + result.stderr
        added = observer.split(";")[0] + f";0.0.0.0:{observer.rsplit(';', 1)[1]}"
        assert out.count(added) == 2, out  # in reconfig's answer and in `config`
        with ens.client(2) as k:
            data, _ = config_of(k)
        assert b"server.60" not in data and data.decode() in out
    except BaseException:
        print(ens.log_tails(20))
        raise
    finally:
        ens.stop_all()



@pytest.mark.timeout(120)
def test_removing_the_leader(tmp_path: Path) -> None:
    """The leader removes itself: it answers, steps down once the change commits, a remaining
    voter leads, and the removed member stops serving."""
    ens = Ensemble(tmp_path, 3, extra_cfg=RECONFIG_CFG)
    try:
        ens.start()
        leader = ens.wait_stable()
        rest = [s for s in ens.ids if s != leader]
        with ens.client(rest, auth_data=[SUPER]) as admin:
            admin.create("/before", b"1")
            data, _ = reconfig_retrying(admin, joining=None, leaving=str(leader),
                                        new_members=None)
            assert set(members_in(data)) == set(rest)
        # Its followers lose their leader, as in any leader change: clients reconnect.
        ens.wait_not_serving(leader, timeout=15)
        new_leader = ens.wait_stable(rest, timeout=20)
        assert new_leader in rest
        ens.drop_member(leader)
        with ens.client() as k:
            k.create("/after", b"2")
        assert wait_config_everywhere(ens) == data
        assert_converged(ens, "/before", {"/before": b"1"})
        assert_converged(ens, "/after", {"/after": b"2"})
    except BaseException:
        print(ens.log_tails(30))
        raise
    finally:
        ens.stop_all()

# -- the request and the format, without processes --------------------------------------------

def test_server_specs_and_config_format() -> None:
    from zkfsd import reconfig as rc

    spec = rc.parse_server("server.100", "0.0.0.0:1:2:observer;0.0.0.0:3")
    assert spec.line() == "server.100=0.0.0.0:1:2:observer;0.0.0.0:3"
    assert rc.parse_server("server.4", "h:1:2;5").line() == "server.4=h:1:2:participant;0.0.0.0:5"
    assert rc.parse_server("server.5", "[::1]:1:2").line() == "server.5=[::1]:1:2:participant"
    for key, value in (("server.x", "h:1:2"), ("server.1", "h:1"), ("server.1", "h:1:70000"),
                       ("srv.1", "h:1:2"), ("server.1", "h:1:2;a:b:c")):
        with pytest.raises(rc.ReconfigError):
            rc.parse_server(key, value)
    members = rc.Membership((spec, rc.parse_server("server.1", "h:1:2;5")), 0x100000003)
    data = members.config_data()
    assert data == (b"server.1=h:1:2:participant;0.0.0.0:5\n"
                    b"server.100=0.0.0.0:1:2:observer;0.0.0.0:3\nversion=100000003")
    assert rc.parse_config_data(data) == rc.Membership(
        tuple(sorted(members.servers, key=lambda s: s.sid)), 0x100000003)
    assert members.conf.voters == (1,) and members.conf.learners == (100,)


def test_next_membership_rules() -> None:
    from zkfs.constants import Err
    from zkfsd import reconfig as rc
    from zkfsd import txns
    from zkfsd.consensus import Entry

    three = rc.Membership(tuple(rc.parse_server(f"server.{i}", f"h{i}:1:2;3") for i in (1, 2, 3)),
                          7)

    def plan(**kw: Any) -> rc.ReconfigPlan:
        return rc.parse_request(kw.get("joining"), kw.get("leaving"), kw.get("new"),
                                kw.get("version", -1))

    assert rc.next_membership(three, plan(leaving="3")).voters == (1, 2)
    grown = rc.next_membership(three, plan(joining="server.4=h4:1:2;3", version=7))
    assert grown.voters == (1, 2, 3, 4)
    observer = rc.next_membership(three, plan(joining="server.9=h9:1:2:observer;3,"
                                                      "server.8=h8:1:2:observer;3"))
    assert observer.observers == (8, 9) and observer.voters == (1, 2, 3)
    cases = [(plan(leaving="2,3"), Err.BAD_ARGUMENTS),  # one voter left
             (plan(new="server.1=h1:1:2;3,server.7=h7:1:2;3,server.8=h8:1:2;3"),
              Err.BAD_ARGUMENTS),  # four voters changed at once
             (plan(joining="server.4=h1:1:2;3"), Err.BAD_ARGUMENTS),  # server.1's address
             (plan(leaving="3", version=6), Err.BAD_VERSION)]
    for p, err in cases:
        with pytest.raises(rc.ReconfigError) as info:
            rc.next_membership(three, p)
        assert info.value.err == err
    with pytest.raises(rc.ReconfigError):  # joining needs all three ports
        plan(joining="server.4=h4:1:2")
    request = plan(joining="server.4=h4:1:2;3")
    asked = rc.reconfig_txn(request, 5, [("super", "x")])
    assert rc.entry_conf(txns.encode(asked)) is None  # undecided: no membership yet
    decided = dataclasses.replace(asked, body=request.to_txn(grown))
    assert txns.decode(txns.encode(decided)) == decided
    conf = rc.entry_conf(txns.encode(decided))
    assert conf is not None and conf.voters == (1, 2, 3, 4)
    members = rc.entry_membership(Entry(9, 1, txns.encode(decided)))
    assert members is not None and members.version == 0x100000009
    refused = dataclasses.replace(asked, body=request.to_txn(None, Err.NEW_CONFIG_NO_QUORUM))
    assert rc.entry_conf(txns.encode(refused)) is None
    # Other entries are skipped without decoding, even one whose data names the mark's key.
    assert rc.entry_conf(txns.encode(txns.Txn(txns.SetData("/members", b"members", -1)))) is None
