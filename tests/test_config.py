"""zoo.cfg parsing, defaults, overrides and error messages (pure; no processes)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from zkfsd.cli import main
from zkfsd.config import (
    DEFAULT_FOUR_LETTER_WORDS,
    ZOOKEEPER_FOUR_LETTER_WORDS,
    ConfigError,
    ServerConfig,
    build_config,
    load_zoo_cfg,
)


def write_cfg(tmp_path: Path, text: str, name: str = "zoo.cfg") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults_follow_zookeeper() -> None:
    cfg = ServerConfig(data_dir="/d")
    assert cfg.tick_time == 2000
    assert cfg.client_port == 2181
    assert cfg.client_address == "127.0.0.1"
    assert cfg.data_log_dir is None and cfg.log_dir == "/d"
    assert (cfg.min_timeout, cfg.max_timeout) == (4000, 40000)
    assert cfg.snap_count == 10000
    assert cfg.servers == {} and cfg.my_id is None and cfg.standalone
    assert cfg.four_letter_words == set(DEFAULT_FOUR_LETTER_WORDS)
    assert {"ruok", "srvr", "stat", "mntr", "conf", "cons", "wchs", "dump", "envi"} == cfg.four_letter_words


def test_session_timeouts_derive_from_tick_unless_set() -> None:
    assert (ServerConfig(data_dir="/d", tick_time=100).min_timeout,
            ServerConfig(data_dir="/d", tick_time=100).max_timeout) == (200, 2000)
    cfg = ServerConfig(data_dir="/d", tick_time=100, min_session_timeout=1000, max_session_timeout=5000)
    assert (cfg.min_timeout, cfg.max_timeout) == (1000, 5000)


def test_full_zoo_cfg(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "myid").write_text("2\n")
    path = write_cfg(
        tmp_path,
        f"""\
# a comment
! also a comment (java.util.Properties)

tickTime = 500
dataDir={data}
dataLogDir=/fast/disk
clientPort=2999
clientPortAddress=0.0.0.0
minSessionTimeout=1000
maxSessionTimeout=30000
snapCount=500
peerSecretFile=/etc/zkfs/secret
initLimit=10
syncLimit=5
someFutureKey=whatever
4lw.commands.whitelist=ruok, srvr,mntr
server.1=zk1.example:2888:3888
server.2=zk2.example:2888:3888:participant;2181
server.3=[fd00::3]:2888:3888:observer;0.0.0.0:2181
""",
    )
    with caplog.at_level(logging.INFO, logger="zkfsd.config"):
        cfg = build_config(path)
    assert cfg.tick_time == 500
    assert cfg.data_dir == str(data)
    assert cfg.data_log_dir == "/fast/disk" and cfg.log_dir == "/fast/disk"
    assert cfg.client_port == 2999
    assert cfg.client_address == "0.0.0.0"
    assert (cfg.min_timeout, cfg.max_timeout) == (1000, 30000)
    assert cfg.snap_count == 500
    assert (cfg.sync_limit, cfg.init_limit) == (5, 10)
    assert cfg.peer_secret_file == "/etc/zkfs/secret"
    assert cfg.four_letter_words == {"ruok", "srvr", "mntr"}
    assert cfg.servers == {
        1: ("zk1.example", 2888, 3888),
        2: ("zk2.example", 2888, 3888),
        3: ("fd00::3", 2888, 3888),
    }
    assert cfg.my_id == 2 and not cfg.standalone
    assert cfg.observers == {3} and cfg.participants == [1, 2] and not cfg.read_only_mode
    # Unknown and unused keys are kept and logged, never fatal.
    assert cfg.extra == {"someFutureKey": "whatever"}
    assert "someFutureKey" in caplog.text


def test_load_zoo_cfg_returns_only_keys_present(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, "clientPort=1234\n")
    assert load_zoo_cfg(path) == {"client_port": 1234}


def test_separators_and_continuation_lines(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, "dataDir: /d\nclientPort 3000\ntickTime=\\\n  700\n")
    assert load_zoo_cfg(path) == {"data_dir": "/d", "client_port": 3000, "tick_time": 700}


def test_four_letter_word_star_and_unsupported_words(tmp_path: Path) -> None:
    # "*" means every word ZooKeeper defines, as in ZooKeeper.
    star = load_zoo_cfg(write_cfg(tmp_path, "4lw.commands.whitelist=*\n"))["four_letter_words"]
    assert star == set(ZOOKEEPER_FOUR_LETTER_WORDS) and {"isro", "wchc"} <= star
    # Words nobody defines are dropped with a warning, so a shared file still works.
    words = load_zoo_cfg(write_cfg(tmp_path, "4lw.commands.whitelist=isro,ruok,xyzw\n"))["four_letter_words"]
    assert words == {"isro", "ruok"}
    with pytest.raises(ConfigError, match="unknown four-letter words"):
        ServerConfig(data_dir="/d", four_letter_words={"xyzw"})


def test_myid_is_read_from_data_dir(tmp_path: Path) -> None:
    (tmp_path / "myid").write_text("3")
    path = write_cfg(tmp_path, f"dataDir={tmp_path}\nserver.3=h:1:2\nserver.4=h:3:4\n")
    assert load_zoo_cfg(path)["my_id"] == 3
    assert build_config(path).my_id == 3


def test_client_port_from_server_line_only_when_clientport_absent(tmp_path: Path) -> None:
    (tmp_path / "myid").write_text("1")
    path = write_cfg(tmp_path, f"dataDir={tmp_path}\nserver.1=h:1:2;2345\nserver.2=h:3:4;2346\n")
    assert build_config(path).client_port == 2345
    path = write_cfg(tmp_path, f"dataDir={tmp_path}\nclientPort=4000\nserver.1=h:1:2;2345\n")
    assert build_config(path).client_port == 4000


def test_flags_override_file(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, "dataDir=/from/file\nclientPort=1111\ntickTime=3000\n")
    cfg = build_config(path, data_dir=str(tmp_path), client_port=2222, tick_time=None)
    assert cfg.data_dir == str(tmp_path)
    assert cfg.client_port == 2222
    assert cfg.tick_time == 3000  # None means "flag not given": the file's value stays


def test_overriding_data_dir_reads_that_dirs_myid(tmp_path: Path) -> None:
    file_dir = tmp_path / "a"
    flag_dir = tmp_path / "b"
    file_dir.mkdir()
    flag_dir.mkdir()
    (file_dir / "myid").write_text("1")
    (flag_dir / "myid").write_text("2")
    path = write_cfg(tmp_path, f"dataDir={file_dir}\nserver.1=h:1:2\nserver.2=h:3:4\n")
    assert build_config(path).my_id == 1
    assert build_config(path, data_dir=str(flag_dir)).my_id == 2
    assert build_config(path, data_dir=str(flag_dir), my_id=1).my_id == 1


def test_no_file_only_flags(tmp_path: Path) -> None:
    cfg = build_config(None, data_dir=str(tmp_path), client_port=5555, min_session_timeout=100)
    assert (cfg.data_dir, cfg.client_port, cfg.min_timeout) == (str(tmp_path), 5555, 100)


def test_single_server_line_implies_my_id(tmp_path: Path) -> None:
    cfg = build_config(write_cfg(tmp_path, f"dataDir={tmp_path}\nserver.7=h:1:2\n"))
    assert cfg.my_id == 7 and cfg.standalone


def test_unknown_override_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        build_config(None, data_dir=str(tmp_path), no_such_field=1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("clientPort=2181\n", "dataDir is required"),
        ("dataDir=/d\ntickTime=fast\n", "tickTime: expected an integer, got 'fast'"),
        ("dataDir=/d\ntickTime=0\n", "tickTime must be a positive"),
        ("dataDir=/d\nclientPort=70000\n", "clientPort must be between 0 and 65535"),
        ("dataDir=/d\nminSessionTimeout=9000\nmaxSessionTimeout=5000\n", "must not be larger than"),
        ("dataDir=/d\ntickTime=1000\nminSessionTimeout=30000\n", "must not be larger than"),
        ("dataDir=/d\nmaxSessionTimeout=-1\n", "maxSessionTimeout must be a positive"),
        ("dataDir=/d\nsnapCount=0\n", "snapCount must be a positive"),
        ("dataDir=/d\nsyncLimit=0\n", "syncLimit must be a positive number of ticks"),
        ("dataDir=/d\ninitLimit=-2\n", "initLimit must be a positive number of ticks"),
        ("dataDir=/d\nserver.1=h:1\n", "expected host:peerport:electionport"),
        ("dataDir=/d\nserver.1=h:1:99999\n", "port must be between 1 and 65535"),
        ("dataDir=/d\nserver.1=h:1:2\nserver.1=h:3:4\n", "defined twice"),
        ("dataDir=/d\nserver.1=a:1:2|b:1:2\n", "multiple addresses"),
        ("dataDir=/d\nserver.1=h:1:2\nserver.2=h:3:4\n", "myid is not set"),
        ("dataDir=\n", "empty value"),
        ("dataDir=/d\ntickTime=\\\n", "continued line"),
    ],
)
def test_bad_values_give_clear_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("|", r"\|")):
        build_config(write_cfg(tmp_path, text))


def test_bad_myid_file(tmp_path: Path) -> None:
    (tmp_path / "myid").write_text("one\n")
    with pytest.raises(ConfigError, match="must contain a server id"):
        build_config(None, data_dir=str(tmp_path))


def test_my_id_without_server_line(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, f"dataDir={tmp_path}\nserver.1=h:1:2\nserver.2=h:3:4\n")
    with pytest.raises(ConfigError, match="myid 5 has no server.5 line"):
        build_config(path, my_id=5)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        build_config(str(tmp_path / "nope.cfg"))
    assert issubclass(ConfigError, ValueError)


def test_cli_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "missing.cfg")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "configuration error: config file not found" in lines[0]
    result = CliRunner().invoke(main, ["--client-port", "2181"])
    assert result.exit_code == 2 and "dataDir is required" in result.output


def test_cli_help_lists_every_option() -> None:
    # A real subprocess: the console script must exist and --help must not import the server.
    exe = Path(sys.executable).parent / "zkfsd"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=True).stdout
    for option in (
        "--config", "--data-dir", "--data-log-dir", "--client-port", "--client-address",
        "--tick-time", "--min-session-timeout", "--max-session-timeout", "--my-id", "--log-level",
    ):
        assert option in out


def test_observers_and_read_only_mode(tmp_path: Path) -> None:
    path = write_cfg(tmp_path, f"""dataDir={tmp_path}
readonlymode.enabled=true
server.1=h1:2888:3888
server.2=h2:2888:3888:participant
server.3=h3:2888:3888:observer
server.4=[::1]:2888:3888:OBSERVER;2181
""")
    cfg = build_config(path, my_id=4)
    assert cfg.read_only_mode and cfg.observers == {3, 4} and cfg.participants == [1, 2]
    assert "isro" in cfg.four_letter_words  # as in ZooKeeper: read-only clients need it
    assert cfg.servers[4] == ("::1", 2888, 3888)
    only_observers = write_cfg(tmp_path, f"dataDir={tmp_path}\nserver.1=h1:1:2:observer\n"
                                         "server.2=h2:1:2:observer\n")
    with pytest.raises(ConfigError, match="at least one must vote"):
        build_config(only_observers, my_id=1)
    bad = write_cfg(tmp_path, f"dataDir={tmp_path}\nreadonlymode.enabled=maybe\n")
    with pytest.raises(ConfigError, match="readonlymode.enabled"):
        build_config(bad)


def test_reconfig_keys_and_dynamic_config_file(tmp_path: Path) -> None:
    """reconfigEnabled (off by default, as in ZooKeeper), the client part of server.N lines
    (for /zookeeper/config), and ZooKeeper 3.5's dynamicConfigFile holding the server.N lines."""
    assert build_config(None, data_dir=str(tmp_path)).reconfig_enabled is False
    dynamic = tmp_path / "zoo.cfg.dynamic.100000000"
    dynamic.write_text("server.1=zk1:2888:3888:participant;0.0.0.0:2181\n"
                       "server.2=zk2:2888:3888:observer;2182\nversion=100000000\n")
    path = write_cfg(tmp_path, f"dataDir={tmp_path}\nreconfigEnabled=true\n"
                               f"dynamicConfigFile={dynamic}\n")
    cfg = build_config(path, my_id=1)
    assert cfg.reconfig_enabled is True
    assert cfg.servers == {1: ("zk1", 2888, 3888), 2: ("zk2", 2888, 3888)}
    assert cfg.observers == {2}
    assert cfg.server_clients == {1: ("0.0.0.0", 2181), 2: ("0.0.0.0", 2182)}
    with pytest.raises(ConfigError, match="reconfigEnabled"):
        load_zoo_cfg(write_cfg(tmp_path, "reconfigEnabled=maybe\n", "bad.cfg"))
