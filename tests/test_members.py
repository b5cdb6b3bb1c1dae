"""Observers and read-only mode on real zkfsd processes (issue 14, items 2 and 3).

Observers: `server.N=host:port:port:observer` members get the log, serve reads, forward writes
and hold sessions, but never vote: killing one changes nothing for the quorum, and two voters
down stop writes even with the observer up.

Read-only mode: with `readonlymode.enabled=true`, a member cut off from the majority keeps
serving clients that asked for read-only sessions (kazoo's `read_only=True`), answers their
writes with NotReadOnly, and sends them back to read-write service once the quorum returns.
"""
from __future__ import annotations

import time

import pytest
from kazoo.client import KazooState
from kazoo.exceptions import ConnectionLoss, NotReadOnlyCallError, SessionExpiredError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from ensemble_helpers import Ensemble, ensemble
from helpers import LOCALHOST, four_letter_word


def _wait(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _isro(ens: Ensemble, sid: int) -> str:
    try:
        return four_letter_word(LOCALHOST, ens.client_ports[sid], "isro", timeout=1.0)
    except OSError:
        return "down"


def test_observer_serves_reads_forwards_writes_and_never_votes(tmp_path):
    with ensemble(tmp_path, 4, observers=[4]) as ens:
        st = ens.srvr(4)
        assert st["Mode"] == "observer" and st["serving"] == "yes", st
        assert ens.mntr(4).get("zk_server_state") == "observer"
        # Reads and writes through the observer only; a session lives on it.
        with ens.client(4, timeout=4.0) as k:
            k.create("/obs", b"via-observer")
            k.create("/obs/eph", b"", ephemeral=True)
            assert k.get("/obs")[0] == b"via-observer"
            with ens.client(1) as k1:
                assert k1.get("/obs")[0] == b"via-observer"
                k1.set("/obs", b"from-voter")
            k.sync("/obs")
            assert k.get("/obs")[0] == b"from-voter"
            # Longer than the session timeout (4 s), pinged only through the observer: the
            # leader hears of it through the observer's session reports and keeps it.
            time.sleep(6)
            assert k.exists("/obs/eph") is not None
        # Killing the observer changes nothing for the voters.
        lead = ens.wait_stable([1, 2, 3])
        mntr = _wait(lambda: (m := ens.mntr(lead)).get("zk_synced_observers") == "1" and m,
                     10, "the leader to count its observer")
        assert mntr["zk_synced_followers"] == "2", mntr
        ens.kill9(4)
        assert ens.wait_stable([1, 2, 3]) == lead
        with ens.client([1, 2, 3]) as k:
            k.set("/obs", b"observer-down")
        ens.start_member(4)
        ens.wait_stable()
        with ens.client(4) as k:
            k.sync("/obs")
            assert k.get("/obs")[0] == b"observer-down"
        # Two voters down: no quorum, even though the observer is up; it stops serving.
        others = [s for s in (1, 2, 3) if s != lead][:1] + [lead]
        for sid in others:
            ens.kill9(sid)
        ens.wait_not_serving(4, timeout=15)
        with pytest.raises(KazooTimeoutError):
            with ens.client([4], connect_timeout=2.0):
                pass
        remaining = next(s for s in (1, 2, 3) if s not in others)
        assert ens.srvr(remaining).get("Mode") != "leader"
        # One voter back: a majority of voters again, the observer serves again.
        ens.start_member(others[0])
        ens.wait_stable([remaining, others[0], 4], timeout=20)
        with ens.client(4) as k:
            k.set("/obs", b"quorum-back")


def test_read_only_mode_serves_reads_refuses_writes_and_hands_back(tmp_path):
    ens = Ensemble(tmp_path, 3, proxied=True, extra_cfg=["readonlymode.enabled=true"])
    try:
        ens.start()
        lead = ens.wait_stable()
        member = next(s for s in ens.ids if s != lead)
        with ens.client(lead) as k:
            k.create("/ro", b"before")
        assert _isro(ens, member) == "rw"
        states: list[str] = []
        client_cm = ens.client(member, timeout=4.0, read_only=True,
                               connection_retry=KazooRetry(max_tries=-1, max_delay=0.5))
        with client_cm as k:
            k.add_listener(lambda state: states.append(state))
            k.sync("/ro")
            assert k.get("/ro")[0] == b"before"
            assert k.client_state == "CONNECTED"

            ens.mesh.isolate(member)
            _wait(lambda: _isro(ens, member) == "ro", 20, "the member to turn read-only")
            st = ens.srvr(member)
            assert st.get("Mode") == "read-only", st
            _wait(lambda: k.client_state == "CONNECTED_RO", 20, "a read-only session")

            def read() -> bytes | None:
                try:
                    return k.get("/ro")[0]
                except (ConnectionLoss, SessionExpiredError):
                    return None
            assert _wait(read, 10, "a read in read-only mode") == b"before"
            with pytest.raises(NotReadOnlyCallError):
                k.create("/ro/write", b"x")
            with pytest.raises(NotReadOnlyCallError):
                k.set("/ro", b"x")
            # A client that did not ask for read-only is refused meanwhile.
            with pytest.raises(KazooTimeoutError):
                with ens.client([member], connect_timeout=2.0):
                    pass

            ens.mesh.heal()
            _wait(lambda: _isro(ens, member) == "rw", 30, "the member to rejoin")
            _wait(lambda: k.client_state == "CONNECTED", 30, "read-write again")

            def write() -> bool:
                try:
                    k.set("/ro", b"after")
                    return True
                except (ConnectionLoss, SessionExpiredError, NotReadOnlyCallError):
                    return False
            _wait(write, 20, "a write after healing")
            assert k.get("/ro")[0] == b"after"
        assert KazooState.CONNECTED in states
    finally:
        ens.stop_all()


def test_without_read_only_mode_a_cut_off_member_refuses_read_only_clients(tmp_path):
    ens = Ensemble(tmp_path, 3, proxied=True, extra_cfg=["4lw.commands.whitelist=*"])
    try:
        ens.start()
        lead = ens.wait_stable()
        member = next(s for s in ens.ids if s != lead)
        ens.mesh.isolate(member)
        ens.wait_not_serving(member, timeout=20)
        assert _isro(ens, member) == "null"
        with pytest.raises(KazooTimeoutError):
            with ens.client([member], connect_timeout=2.0, read_only=True):
                pass
    finally:
        ens.stop_all()
