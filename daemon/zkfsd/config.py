"""zkfsd configuration: ZooKeeper-style zoo.cfg files plus command-line overrides.

The file format and key names are ZooKeeper's own, so an existing zoo.cfg (or one written from
ZooKeeper's documentation) works unchanged: keys zkfsd has no use for are kept in
`ServerConfig.extra` and logged, never rejected, because operators share one file between tools.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

from zkfsd import wire
from zkfsd.security import Security, SecurityError, is_security_key, parse_security

log = logging.getLogger(__name__)

# Four-letter words enabled unless 4lw.commands.whitelist says otherwise. ZooKeeper's own default
# is only "srvr"; zkfsd enables these because none of them changes state or exposes secrets.
DEFAULT_FOUR_LETTER_WORDS: frozenset[str] = frozenset(
    {"ruok", "srvr", "stat", "mntr", "conf", "cons", "wchs", "dump", "envi"}
)
# Every word ZooKeeper 3.8 defines: what "4lw.commands.whitelist=*" enables, and what a whitelist
# may name. Whether zkfsd implements a word is the server's business (it answers unknown ones
# like ZooKeeper does); the config only keeps out words that cannot be meant.
ZOOKEEPER_FOUR_LETTER_WORDS: frozenset[str] = wire.FOUR_LETTER_WORDS

# Standard ZooKeeper keys that zkfsd accepts but does not (yet) use: logged at INFO, not WARNING,
# since they are expected in real-world files.
_KNOWN_UNUSED_KEYS = frozenset(
    {
        "autopurge.snapRetainCount",
        "autopurge.purgeInterval",
        "preAllocSize",
        "globalOutstandingLimit",
        "leaderServes",
        "cnxTimeout",
        "standaloneEnabled",
        "quorumListenOnAllIPs",
        "metricsProvider.exportJvmInfo",
        "electionAlg",
        "syncEnabled",
        "forceSync",
        "jute.maxbuffer",
        "localSessionsEnabled",
        "localSessionsUpgradingEnabled",
        "maxCnxns",
    }
)


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message is meant for the operator."""


@dataclass(kw_only=True)
class ServerConfig:
    """Everything zkfsd needs to start. Times are milliseconds, as in ZooKeeper."""

    tick_time: int = 2000
    # In ticks, as in ZooKeeper (whose sample zoo.cfg and Debian's say 5 and 10). syncLimit: how
    # long a member may go unheard before the others act (a follower campaigns after syncLimit
    # to 2*syncLimit ticks without its leader, a leader steps down after syncLimit ticks without
    # a majority), the Raft election timeout. initLimit: how long a snapshot transfer to a
    # lagging follower may take before the leader sends it again.
    sync_limit: int = 5
    init_limit: int = 10
    data_dir: str
    data_log_dir: str | None = None
    # None: no plaintext port (a TLS-only configuration, secureClientPort without clientPort).
    client_port: int | None = 2181
    client_address: str = "127.0.0.1"
    min_session_timeout: int | None = None
    max_session_timeout: int | None = None
    # server id -> (host, peer port, election port), from `server.N=host:peer:election` lines.
    servers: dict[int, tuple[str, int, int]] = field(default_factory=dict)
    # The ids among `servers` whose line ends in `:observer`: they get the log and serve
    # clients but never vote (ZooKeeper's observers; Raft learners).
    observers: set[int] = field(default_factory=set)
    # readonlymode.enabled (a Java system property in ZooKeeper, a zoo.cfg key here): a member
    # cut off from the majority keeps serving clients that asked for read-only sessions.
    read_only_mode: bool = False
    # The `;[address:]port` client part of each server.N line, for /zookeeper/config.
    server_clients: dict[int, tuple[str, int]] = field(default_factory=dict)
    # reconfigEnabled: the reconfig request is answered ReconfigDisabled unless this is on
    # (ZooKeeper's default is off too).
    reconfig_enabled: bool = False
    my_id: int | None = None
    snap_count: int = 10000
    peer_secret_file: str | None = None
    four_letter_words: set[str] = field(default_factory=lambda: set(DEFAULT_FOUR_LETTER_WORDS))
    # Connections from one address at a time (ZooKeeper's maxClientCnxns; 0 = no limit).
    max_client_cnxns: int = 60
    # A connection that sends no handshake is closed after this (ZooKeeper's 10 s).
    sessionless_timeout: int = 10000
    # Replies queued for all clients together; past it the slowest reader is dropped.
    max_client_reply_bytes: int = 128 << 20
    # clientWorkers (zkfs): processes that serve the client port, this member's own process
    # included; 1 serves clients in the member process only. Each extra one is a worker that
    # shares the port (SO_REUSEPORT), applies the committed log in memory, answers reads and
    # forwards writes and sessions to the member (workers.py, worker.py).
    client_workers: int = 1
    security: Security = field(default_factory=Security)
    # ZooKeeper's AdminServer (admin.*): HTTP commands under /commands/. zkfs: off by default
    # and on loopback, like the client port (ZooKeeper's is on, on every address).
    admin_enabled: bool = False
    admin_port: int = 8080
    admin_address: str = "127.0.0.1"
    # metricsProvider.*: the Prometheus endpoint, when className names ZooKeeper's provider.
    metrics_prometheus: bool = False
    metrics_port: int = 7000
    metrics_address: str = "127.0.0.1"
    # Keys from zoo.cfg that zkfsd does not interpret, kept so tools can still see them.
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def min_timeout(self) -> int:
        """Smallest session timeout granted to a client (ZooKeeper: 2 ticks unless configured)."""
        if self.min_session_timeout is not None:
            return self.min_session_timeout
        return 2 * self.tick_time

    @property
    def max_timeout(self) -> int:
        """Largest session timeout granted to a client (ZooKeeper: 20 ticks unless configured)."""
        if self.max_session_timeout is not None:
            return self.max_session_timeout
        return 20 * self.tick_time

    @property
    def log_dir(self) -> str:
        """Where the write-ahead log lives: dataLogDir if set, else dataDir (as in ZooKeeper)."""
        return self.data_log_dir or self.data_dir

    @property
    def standalone(self) -> bool:
        return len(self.servers) <= 1

    @property
    def participants(self) -> list[int]:
        """The voting members' ids (every server line that is not an observer)."""
        return sorted(sid for sid in self.servers if sid not in self.observers)

    def validate(self) -> None:
        if not isinstance(self.tick_time, int) or self.tick_time <= 0:
            raise ConfigError(f"tickTime must be a positive number of milliseconds, got {self.tick_time!r}")
        for name, value in (("syncLimit", self.sync_limit), ("initLimit", self.init_limit)):
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of ticks, got {value!r}")
        if not self.data_dir:
            raise ConfigError("dataDir is required (set dataDir in zoo.cfg or pass --data-dir)")
        # Port 0 is allowed on purpose: in-process tests bind to any free port.
        if self.client_port is None:
            if self.security.secure_client_port is None:
                raise ConfigError("no client port: set clientPort or secureClientPort")
        elif not isinstance(self.client_port, int) or not 0 <= self.client_port <= 65535:
            raise ConfigError(f"clientPort must be between 0 and 65535, got {self.client_port!r}")
        if not self.client_address:
            raise ConfigError("clientPortAddress must not be empty")
        for name, value in (
            ("minSessionTimeout", self.min_session_timeout),
            ("maxSessionTimeout", self.max_session_timeout),
        ):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ConfigError(f"{name} must be a positive number of milliseconds, got {value!r}")
        if self.min_timeout > self.max_timeout:
            raise ConfigError(
                f"minSessionTimeout ({self.min_timeout} ms) must not be larger than "
                f"maxSessionTimeout ({self.max_timeout} ms)"
            )
        for name, value, low in (("maxClientCnxns", self.max_client_cnxns, 0),
                                 ("sessionlessCnxnTimeout", self.sessionless_timeout, 1),
                                 ("maxClientReplyBytes", self.max_client_reply_bytes, 1 << 20),
                                 ("clientWorkers", self.client_workers, 1)):
            if not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
        if not isinstance(self.snap_count, int) or self.snap_count <= 0:
            raise ConfigError(f"snapCount must be a positive integer, got {self.snap_count!r}")
        if self.client_workers > 1 and self.client_port is None:
            raise ConfigError("clientWorkers serve the plaintext clientPort: set clientPort, or "
                              "clientWorkers=1 for a TLS-only server")
        self.four_letter_words = set(self.four_letter_words)
        if self.read_only_mode:
            # As ZooKeeper does whatever the whitelist says: read-only clients ask `isro` to
            # find a read-write member again.
            self.four_letter_words.add("isro")
        unknown_words = self.four_letter_words - ZOOKEEPER_FOUR_LETTER_WORDS
        if unknown_words:
            raise ConfigError(
                f"unknown four-letter words {sorted(unknown_words)}; "
                f"known: {sorted(ZOOKEEPER_FOUR_LETTER_WORDS)}"
            )
        for sid, (host, peer_port, election_port) in self.servers.items():
            if not isinstance(sid, int) or sid < 0:
                raise ConfigError(f"server id must be a non-negative integer, got {sid!r}")
            if not host:
                raise ConfigError(f"server.{sid}: empty host")
            for port in (peer_port, election_port):
                if not isinstance(port, int) or not 1 <= port <= 65535:
                    raise ConfigError(f"server.{sid}: port must be between 1 and 65535, got {port!r}")
        self.observers = set(self.observers)
        if not self.observers <= set(self.servers):
            raise ConfigError(f"observers {sorted(self.observers - set(self.servers))} have no "
                              "server.N line")
        if self.servers and not self.participants:
            raise ConfigError("every server.N line is an observer: at least one must vote "
                              "(drop ':observer' from one)")
        if self.my_id is not None and (not isinstance(self.my_id, int) or self.my_id < 0):
            raise ConfigError(f"myid must be a non-negative integer, got {self.my_id!r}")
        if self.servers:
            if self.my_id is None:
                if len(self.servers) == 1:
                    # A single server line needs no myid to be unambiguous (ZooKeeper runs such a
                    # file standalone too).
                    self.my_id = next(iter(self.servers))
                else:
                    raise ConfigError(
                        "myid is not set: with several server.N lines, write this server's id into "
                        "DATA_DIR/myid or pass --my-id"
                    )
            if self.my_id not in self.servers:
                raise ConfigError(
                    f"myid {self.my_id} has no server.{self.my_id} line (servers: {sorted(self.servers)})"
                )


# zoo.cfg key -> ServerConfig field, for keys whose value is a plain int or string.
_INT_KEYS = {
    "tickTime": "tick_time",
    "syncLimit": "sync_limit",
    "initLimit": "init_limit",
    "clientPort": "client_port",
    "minSessionTimeout": "min_session_timeout",
    "maxSessionTimeout": "max_session_timeout",
    "snapCount": "snap_count",
    "maxClientCnxns": "max_client_cnxns",
    # zkfs-specific (ZooKeeper has these as system properties or fixed values).
    "sessionlessCnxnTimeout": "sessionless_timeout",
    "maxClientReplyBytes": "max_client_reply_bytes",
    "clientWorkers": "client_workers",
}
_STR_KEYS = {
    "dataDir": "data_dir",
    "dataLogDir": "data_log_dir",
    "clientPortAddress": "client_address",
    # zkfs-specific: file holding the shared secret peers use to authenticate each other.
    "peerSecretFile": "peer_secret_file",
}

_SERVER_KEY = re.compile(r"^server\.(\d+)$")

PROMETHEUS_PROVIDER = "org.apache.zookeeper.metrics.prometheus.PrometheusMetricsProvider"
# ZooKeeper's default provider exports nothing; naming it is the same as leaving the key out.
_NULL_PROVIDER = "org.apache.zookeeper.metrics.impl.DefaultMetricsProvider"
_MONITORING_KEYS = frozenset({"admin.enableServer", "admin.serverPort", "admin.serverAddress",
                              "metricsProvider.className", "metricsProvider.httpPort",
                              "metricsProvider.httpHost"})


def _parse_monitoring(where: str, key: str, value: str) -> dict[str, Any]:
    if key == "admin.enableServer":
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return {"admin_enabled": value.lower() == "true"}
    if key == "admin.serverPort":
        return {"admin_port": _parse_port(where, value)}
    if key == "metricsProvider.httpPort":
        return {"metrics_port": _parse_port(where, value)}
    if not value:
        raise ConfigError(f"{where}: empty value")
    if key == "admin.serverAddress":
        return {"admin_address": value}
    if key == "metricsProvider.httpHost":
        return {"metrics_address": value}
    if value not in (PROMETHEUS_PROVIDER, _NULL_PROVIDER):
        raise ConfigError(f"{where}: zkfsd provides only {PROMETHEUS_PROVIDER}, not {value}")
    return {"metrics_prometheus": value == PROMETHEUS_PROVIDER}


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value, 10)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r}") from None


def _parse_port(key: str, value: str) -> int:
    port = _parse_int(key, value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{key}: port must be between 1 and 65535, got {port}")
    return port


def parse_server_line(key: str, value: str) -> tuple[tuple[str, int, int], int | None]:
    """Parse `host:peerport:electionport[:participant|:observer][;[clientaddr:]clientport]`.

    Returns ((host, peer_port, election_port), client_port or None). IPv6 hosts are written in
    brackets, as ZooKeeper requires: `[::1]:2888:3888`. `server_line_role` gives the role.
    """
    addr_part, _, client_part = value.partition(";")
    addr_part = addr_part.strip()
    if "|" in addr_part:
        raise ConfigError(f"{key}: multiple addresses per server ('|') are not supported by zkfsd")
    if addr_part.startswith("["):
        close = addr_part.find("]")
        if close < 0:
            raise ConfigError(f"{key}: unterminated '[' in {value!r}")
        host = addr_part[1:close]
        rest = addr_part[close + 1 :].lstrip(":").split(":")
    else:
        host, *rest = addr_part.split(":")
    if rest and rest[-1].lower() in ("participant", "observer"):
        rest.pop()
    if len(rest) != 2 or not host:
        raise ConfigError(
            f"{key}: expected host:peerport:electionport[:participant|:observer][;clientport], got {value!r}"
        )
    peer_port = _parse_port(key, rest[0])
    election_port = _parse_port(key, rest[1])
    client_port: int | None = None
    client_part = client_part.strip()
    if client_part:
        # Either `port` or `address:port`; the address is ignored (clientPortAddress decides).
        client_port = _parse_port(key, client_part.rsplit(":", 1)[-1])
    return (host, peer_port, election_port), client_port


def server_line_role(value: str) -> str:
    """'observer' or 'participant' (the default) for a server.N value."""
    addr_part = value.partition(";")[0].strip()
    last = addr_part.rsplit("]", 1)[-1].rsplit(":", 1)[-1].strip().lower()
    return "observer" if last == "observer" else "participant"


def _parse_bool(key: str, value: str) -> bool:
    if value.strip().lower() in ("true", "yes", "1"):
        return True
    if value.strip().lower() in ("false", "no", "0"):
        return False
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _read_properties(path: str) -> list[tuple[int, str, str]]:
    """Read a java.util.Properties-style file: `key=value`, `key: value` or `key value`,
    `#`/`!` comments, and lines continued with a trailing backslash."""
    try:
        with open(path, encoding="utf-8") as f:
            raw_lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None

    entries: list[tuple[int, str, str]] = []
    pending = ""
    pending_lineno = 0
    for lineno, line in enumerate(raw_lines, start=1):
        stripped = line.strip()
        if not pending and (not stripped or stripped[0] in "#!"):
            continue
        if not pending:
            pending_lineno = lineno
        # An odd number of trailing backslashes continues the line.
        trailing = len(stripped) - len(stripped.rstrip("\\"))
        if trailing % 2 == 1:
            pending += stripped[:-1]
            continue
        logical = pending + stripped
        pending = ""
        m = re.match(r"^([^=:\s]+)\s*[=:]?\s*(.*)$", logical)
        if m is None:  # pragma: no cover - the regex matches any non-empty line
            raise ConfigError(f"{path}:{lineno}: cannot parse {logical!r}")
        entries.append((pending_lineno, m.group(1), m.group(2).strip()))
    if pending:
        raise ConfigError(f"{path}:{pending_lineno}: file ends inside a continued line")
    return entries


def read_myid(data_dir: str) -> int | None:
    """The server id in DATA_DIR/myid, or None if there is no such file."""
    path = os.path.join(data_dir, "myid")
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}") from None
    try:
        return int(text, 10)
    except ValueError:
        raise ConfigError(f"{path} must contain a server id (an integer), got {text!r}") from None


def load_zoo_cfg(path: str) -> dict[str, Any]:
    """Parse a zoo.cfg into a dict of ServerConfig field values.

    Only keys present in the file appear in the result (so callers can tell "unset" from
    "default"). `my_id` is read from DATA_DIR/myid when the file names a dataDir. Keys zkfsd
    does not use go into `extra`, each with a log line.
    """
    result: dict[str, Any] = {}
    servers: dict[int, tuple[str, int, int]] = {}
    server_client_ports: dict[int, int] = {}
    extra: dict[str, str] = {}
    security: dict[str, str] = {}

    def add_server(where: str, sid: int, value: str) -> None:
        if sid in servers:
            raise ConfigError(f"{where}: server.{sid} is defined twice")
        servers[sid], client_port = parse_server_line(where, value)
        if server_line_role(value) == "observer":
            result.setdefault("observers", set()).add(sid)
        if client_port is not None:
            server_client_ports[sid] = client_port
            client_host = value.partition(";")[2].strip().rpartition(":")[0].strip("[]")
            result.setdefault("server_clients", {})[sid] = (client_host or "0.0.0.0",
                                                            client_port)

    for lineno, key, value in _read_properties(path):
        where = f"{path}:{lineno}: {key}"
        if key in _INT_KEYS:
            result[_INT_KEYS[key]] = _parse_int(where, value)
        elif key in _STR_KEYS:
            if not value:
                raise ConfigError(f"{where}: empty value")
            result[_STR_KEYS[key]] = value
        elif key == "4lw.commands.whitelist":
            words = {w.strip() for w in value.split(",") if w.strip()}
            if "*" in words:
                result["four_letter_words"] = set(ZOOKEEPER_FOUR_LETTER_WORDS)
            else:
                unknown_words = words - ZOOKEEPER_FOUR_LETTER_WORDS
                if unknown_words:
                    # Like ZooKeeper, which skips words it does not know rather than refusing to
                    # start (a whitelist may be shared with a newer ZooKeeper).
                    log.warning("%s: ignoring unknown four-letter words: %s",
                                where, ", ".join(sorted(unknown_words)))
                result["four_letter_words"] = words & ZOOKEEPER_FOUR_LETTER_WORDS
        elif key in _MONITORING_KEYS:
            result.update(_parse_monitoring(where, key, value))
        elif m := _SERVER_KEY.match(key):
            add_server(where, int(m.group(1)), value)
        elif key == "dynamicConfigFile":
            # ZooKeeper 3.5's split configuration: the server.N lines live in that file.
            for dyn_lineno, dyn_key, dyn_value in _read_properties(value):
                dyn_where = f"{value}:{dyn_lineno}: {dyn_key}"
                if dm := _SERVER_KEY.match(dyn_key):
                    add_server(dyn_where, int(dm.group(1)), dyn_value)
                elif dyn_key != "version":
                    log.warning("%s: unknown setting in a dynamic configuration file, ignored",
                                dyn_where)
        elif key == "reconfigEnabled":
            result["reconfig_enabled"] = _parse_bool(where, value)
        elif key == "readonlymode.enabled":
            result["read_only_mode"] = _parse_bool(where, value)
        elif key == "peerType":
            # ZooKeeper's way for an observer to say so about itself; its server.N line must
            # say the same, which is what zkfsd (and every other member) reads.
            if value.strip().lower() not in ("observer", "participant"):
                raise ConfigError(f"{where}: expected observer or participant, got {value!r}")
            log.info("%s: the role comes from the server.N lines", where)
        elif is_security_key(key):
            security[key] = value
        else:
            extra[key] = value
            if key in _KNOWN_UNUSED_KEYS:
                log.info("%s: ZooKeeper setting not used by zkfsd, ignored", where)
            else:
                log.warning("%s: unknown setting, ignored", where)
    if servers:
        result["servers"] = servers
    if extra:
        result["extra"] = extra
    if security:
        try:
            result["security"] = parse_security(security)
        except SecurityError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    if "data_dir" in result:
        my_id = read_myid(result["data_dir"])
        if my_id is not None:
            result["my_id"] = my_id
    # ZooKeeper 3.5+ lets `server.N=...;clientport` replace clientPort; honour that only when
    # clientPort itself is absent, as ZooKeeper does.
    if "client_port" not in result and result.get("my_id") in server_client_ports:
        result["client_port"] = server_client_ports[result["my_id"]]
    return result


_FIELD_NAMES = frozenset(f.name for f in fields(ServerConfig))


def build_config(cfg_file: str | None = None, **overrides: Any) -> ServerConfig:
    """Build a ServerConfig from an optional zoo.cfg and explicit overrides.

    Overrides use ServerConfig field names; a value of None means "not given" (how click passes
    an omitted option), so it never masks the file. Explicit values always win over the file.
    """
    unknown = set(overrides) - _FIELD_NAMES
    if unknown:
        raise TypeError(f"unknown ServerConfig fields: {sorted(unknown)}")
    values: dict[str, Any] = load_zoo_cfg(cfg_file) if cfg_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "data_dir" in given and given["data_dir"] != values.get("data_dir"):
        # The myid file belongs to the data directory actually used, not the one the file named.
        values.pop("my_id", None)
    values.update(given)
    if "data_dir" not in values:
        raise ConfigError("dataDir is required (set dataDir in zoo.cfg or pass --data-dir)")
    security = values.get("security")
    if security is not None and security.tls_only and "client_port" not in values:
        # ZooKeeper opens only the ports it is given: TLS only means no plaintext port.
        values["client_port"] = None
    if "my_id" not in values:
        my_id = read_myid(values["data_dir"])
        if my_id is not None:
            values["my_id"] = my_id
    elif "my_id" in given:
        on_disk = read_myid(values["data_dir"])
        if on_disk is not None and on_disk != given["my_id"]:
            log.warning("--my-id %s overrides %s/myid (%s)", given["my_id"], values["data_dir"], on_disk)
    return ServerConfig(**values)
