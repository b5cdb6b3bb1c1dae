"""The reference server itself works: every comparison test depends on this fixture."""
from __future__ import annotations

import uuid

from helpers import ApacheZooKeeper, four_letter_word, kazoo_client, run_zkcli


def test_apache_zookeeper_answers_kazoo_zkcli_and_4lw(apache_zk: ApacheZooKeeper) -> None:
    # The session-scoped server is shared: use a name no other test uses.
    path = f"/reference-{uuid.uuid4().hex}"

    assert "Mode: standalone" in four_letter_word(apache_zk.host, apache_zk.port, "srvr")

    with kazoo_client(apache_zk.hosts) as zk:
        zk.create(path, b"from-kazoo")
        data, stat = zk.get(path)
        assert data == b"from-kazoo"
        assert stat.version == 0

    # zkCli.sh runs one command given after -server and exits (status 1 if the command failed).
    result = run_zkcli(apache_zk.hosts, "get", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "from-kazoo" in result.stdout.splitlines()

    result = run_zkcli(apache_zk.hosts, "set", path, "from-zkcli")
    assert result.returncode == 0, result.stdout + result.stderr

    with kazoo_client(apache_zk.hosts) as zk:
        data, stat = zk.get(path)
        assert data == b"from-zkcli"
        assert stat.version == 1
        zk.delete(path)
        assert zk.exists(path) is None

    result = run_zkcli(apache_zk.hosts, "get", path)
    assert result.returncode != 0
    assert "Node does not exist" in result.stdout + result.stderr
