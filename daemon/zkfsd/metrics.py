"""The figures ZooKeeper users monitor: `mntr` rows and the Prometheus text exposition.

Both are built from one list of typed `Metric`s so that a key means the same thing in `mntr`,
in the AdminServer's `/commands/mntr` JSON and on `/metrics`. Names follow ZooKeeper 3.8
(`zk_<name>` in mntr, `<name>` in its PrometheusMetricsProvider); figures of the consensus
layer, which ZooKeeper does not have in this form, are named `zkfs_raft_*` on /metrics.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from zkfsd.server import ZkServer

__all__ = ["MNTR_WITHOUT_MEANING", "Metric", "Summary", "collect", "latency", "mntr_rows",
           "prometheus_text"]


@dataclass
class Summary:
    """ZooKeeper's AvgMinMaxCounter: count, sum, min and max of observed values."""
    count: int = 0
    total: float = 0.0
    min: float = math.inf
    max: float = 0.0

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)


@dataclass(frozen=True)
class Metric:
    """One figure. `value` is a number, or text for the few mntr rows that are text (version,
    server_state), which /metrics leaves out. A `summary` expands to ZooKeeper's avg/min/max/
    cnt/sum rows in mntr and to a Prometheus summary (name_count, name_sum)."""
    name: str
    value: float | int | str = 0
    help: str = ""
    summary: Summary | None = None
    labels: dict[str, str] = field(default_factory=dict)
    mntr: bool = True  # False: /metrics only (labelled or zkfs-only consensus figures)


def _reasons(reason: str, *names: str) -> dict[str, str]:
    return {name: reason for name in names}


def _family(*bases: str) -> tuple[str, ...]:
    # ZooKeeper prints every summary as avg/min/max/cnt/sum, some also with percentiles.
    return tuple(f"zk_{p}_{b}" for b in bases
                 for p in ("avg", "min", "max", "cnt", "sum", "p50", "p95", "p99", "p999"))


# Keys ZooKeeper 3.8's mntr prints that zkfsd leaves out, and why. tests/test_monitoring.py
# checks that zkfsd prints every other key of a real ZooKeeper's mntr.
MNTR_WITHOUT_MEANING: dict[str, str] = {
    **_reasons(
        "ZooKeeper's Java request pipeline (prep/sync/commit/final processors, Netty buffers, "
        "response caches, throttling, JVM pauses): zkfsd has no such stages",
        "zk_prep_processor_request_queued", "zk_sync_processor_request_queued",
        "zk_request_commit_queued", "zk_outstanding_changes_queued",
        "zk_outstanding_changes_removed", "zk_requests_not_forwarded_to_commit_processor",
        "zk_skip_learner_request_to_next_processor_count", "zk_response_packet_cache_hits",
        "zk_response_packet_cache_misses", "zk_response_packet_get_children_cache_hits",
        "zk_response_packet_get_children_cache_misses", "zk_request_throttle_wait_count",
        "zk_throttled_ops", "zk_stale_requests", "zk_stale_requests_dropped", "zk_stale_replies",
        "zk_large_requests_rejected", "zk_connection_drop_probability",
        "zk_connection_drop_count", "zk_connection_request_count",
        "zk_connection_revalidate_count", "zk_revalidate_count", "zk_dead_watchers_queued",
        "zk_dead_watchers_cleared", "zk_add_dead_watcher_stall_time",
        "zk_cnxn_closed_without_zk_server_running", "zk_digest_mismatches_count",
        *_family("prep_processor_queue_size", "prep_processor_queue_time_ms",
                 "prep_process_time", "sync_processor_queue_size",
                 "sync_processor_batch_size", "sync_processor_queue_time_ms",
                 "sync_processor_queue_flush_time_ms",
                 "sync_processor_queue_and_flush_time_ms", "sync_process_time",
                 "commit_process_time", "read_commit_proc_req_queued",
                 "write_commit_proc_req_queued", "commit_commit_proc_req_queued",
                 "read_commit_proc_issued", "write_commit_proc_issued",
                 "read_commitproc_time_ms", "write_commitproc_time_ms",
                 "om_commit_process_time_ms", "om_proposal_process_time_ms",
                 "read_final_proc_time_ms", "write_final_proc_time_ms",
                 "write_batch_time_in_commit_processor",
                 "concurrent_request_processing_in_commit_processor",
                 "time_waiting_empty_pool_in_commit_processor_read_ms",
                 "session_queues_drained", "reads_issued_from_session_queue",
                 "reads_after_write_in_session_queue", "requests_in_session_queue",
                 "pending_session_queue_size", "netty_queued_buffer_capacity",
                 "connection_token_deficit", "request_throttle_queue_time_ms",
                 "jvm_pause_time_ms", "dead_watchers_cleaner_latency",
                 "close_session_prep_time", "learner_request_processor_queue_size",
                 "inflight_diff_count", "inflight_snap_count", "proposal_ack_creation_latency",
                 "socket_closing_time")),
    **_reasons(
        "ZooKeeper's Zab protocol (proposals, learner sync by DIFF/SNAP, election rounds, quorum "
        "SASL): zkfsd replicates with Raft, whose figures are zk_epoch, zk_commit_index, "
        "zk_applied_index, zk_peer_N_state and zkfs_raft_* on /metrics",
        "zk_proposal_count", "zk_learner_proposal_received_count",
        "zk_learner_commit_received_count", "zk_diff_count", "zk_looking_count",
        "zk_commit_count", "zk_quit_leading_due_to_disloyal_voter", "zk_ensemble_auth_success",
        "zk_ensemble_auth_fail", "zk_ensemble_auth_skip",
        *_family("proposal_latency", "proposal_process_time", "quorum_ack_latency",
                 "commit_propagation_latency", "propagation_latency", "election_time",
                 "follower_sync_time", "observer_sync_time", "leader_unavailable_time",
                 "unavailable_time", "local_write_committed_time_ms",
                 "server_write_committed_time_ms")),
    **_reasons(
        "not measured by zkfsd (yet): per-request latency split, reply sizes, watch fan-out, "
        "TLS handshakes and refusal counters",
        "zk_last_client_response_size", "zk_max_client_response_size",
        "zk_min_client_response_size", "zk_auth_failed_count", "zk_outstanding_tls_handshake",
        "zk_tls_handshake_exceeded", "zk_unsuccessful_handshake", "zk_connection_rejected",
        "zk_sessionless_connections_expired", "zk_stale_sessions_expired",
        "zk_insecure_admin_count", "zk_unrecoverable_error_count", "zk_watch_bytes",
        "zk_bytes_received_count", "zk_response_bytes",
        *_family("readlatency", "updatelatency", "node_created_watch_count",
                 "node_deleted_watch_count", "node_changed_watch_count",
                 "node_children_watch_count")),
}


def _summary_rows(name: str, s: Summary) -> list[tuple[str, float | int | str]]:
    # ZooKeeper prints avg as a float and min/max/sum as whole numbers.
    lo = 0 if s.count == 0 else math.floor(s.min)
    return [(f"zk_avg_{name}", round(s.total / s.count, 4) if s.count else 0.0),
            (f"zk_min_{name}", lo), (f"zk_max_{name}", math.ceil(s.max)),
            (f"zk_cnt_{name}", s.count), (f"zk_sum_{name}", round(s.total))]


def latency(server: ZkServer) -> tuple[float, float, float]:
    """min, avg and max request latency in ms (0s before the first request)."""
    s = server.stats
    if not s.latency_count:
        return 0.0, 0.0, 0.0
    # ZooKeeper reports whole milliseconds for min and max; rounding outwards keeps
    # min <= avg <= max true for scripts that check it.
    return (math.floor(s.latency_min), s.latency_total / s.latency_count,
            math.ceil(s.latency_max))


def collect(server: ZkServer, version: str) -> list[Metric]:
    """Every figure of `server` now."""
    s = server.stats
    lo, avg, hi = latency(server)
    try:
        fds = psutil.Process().num_fds()
    except (AttributeError, psutil.Error):
        fds = 0
    local = sum(1 for c in server.connections if str(c.peer[0]).startswith(("127.", "::1")))
    storage = server.storage
    m = [
        Metric("version", version),
        Metric("server_state", server.role()),
        Metric("avg_latency", round(avg, 4), "Average request latency (ms)"),
        Metric("max_latency", hi, "Maximum request latency (ms)"),
        Metric("min_latency", lo, "Minimum request latency (ms)"),
        Metric("packets_received", s.packets_received, "Packets received"),
        Metric("packets_sent", s.packets_sent, "Packets sent"),
        Metric("num_alive_connections", len(server.connections), "Open client connections"),
        Metric("non_mtls_remote_conn_count", len(server.connections) - local,
               "Client connections from other hosts"),
        Metric("non_mtls_local_conn_count", local, "Client connections from this host"),
        Metric("outstanding_requests", server.outstanding, "Writes waiting to be committed"),
        Metric("znode_count", server.tree.node_count, "Znodes"),
        Metric("watch_count", server.watches.count(), "Watches set"),
        Metric("ephemerals_count", sum(len(server.tree.ephemerals(sid))
                                       for sid in server.tree.sessions), "Ephemeral znodes"),
        Metric("approximate_data_size", server.tree.approximate_data_size,
               "Path plus data bytes of all znodes"),
        Metric("open_file_descriptor_count", fds, "Open file descriptors"),
        Metric("max_file_descriptor_count", os.sysconf("SC_OPEN_MAX"),
               "File descriptor limit"),
        Metric("global_sessions", len(server.tree.sessions), "Sessions"),
        # zkfs: every session is global (replicated); ZooKeeper's local sessions do not exist.
        Metric("local_sessions", 0, "Local sessions (always 0 in zkfsd)"),
        Metric("last_zxid", f"0x{server.tree.last_zxid:x}"),
        Metric("fsync_count", s.fsyncs, "fsync calls of the transaction log"),
        Metric("txn_count", s.txns, "Transactions applied"),
        Metric("uptime", int((time.time() - s.started) * 1000), "Uptime (ms)"),
        Metric("snap_count", storage.snapshot_ms.count, "Snapshots written"),
        Metric("fsynctime", summary=storage.fsync_ms, help="Transaction log fsync time (ms)"),
        Metric("snapshottime", summary=storage.snapshot_ms, help="Snapshot write time (ms)"),
        Metric("dbinittime", summary=storage.load_ms, help="Data directory load time (ms)"),
        Metric("startup_snap_load_time", summary=storage.load_ms,
               help="Snapshot and log load time at start-up (ms)"),
        Metric("startup_txns_loaded", summary=storage.loaded_entries,
               help="Log entries loaded at start-up"),
        Metric("startup_txns_load_time", summary=storage.load_ms,
               help="Log load time at start-up (ms)"),
    ]
    hub = server.workers
    if hub is not None:
        # clientWorkers: the worker processes' own figures are in their own mntr answers.
        m += [Metric("client_workers", server.config.client_workers,
                     "Client-serving processes, this member's included (clientWorkers)"),
              Metric("client_workers_running", 1 + len(hub.pids()),
                     "Client-serving processes running, this member's included"),
              Metric("client_worker_connections", hub.connections(),
                     "Client connections of the worker processes (last reported)")]
    core = server.core
    if core is not None:
        states = server.peer_states()
        if not server.standalone:
            m += [Metric("epoch", core.term), Metric("leader_id", core.leader_id),
                  Metric("commit_index", core.commit), Metric("applied_index", core.applied),
                  Metric("quorum_size", len(server.voters))]
            if server.is_leader:
                synced = {sid for sid, st in states.items() if st.startswith("synced")}
                observers = set(server.observers)
                # As ZooKeeper: followers are the voting learners, observers are counted apart.
                m += [Metric("followers", len(states)), Metric("learners", len(states)),
                      Metric("synced_followers", len(synced - observers)),
                      Metric("synced_observers", len(synced & observers))]
            m += [Metric(f"peer_{sid}_state", state) for sid, state in states.items()]
        # The consensus figures, for every server (a standalone one is an ensemble of one).
        m += [Metric("zkfs_raft_term", core.term, "Raft term (ZooKeeper's epoch)", mntr=False),
              Metric("zkfs_raft_commit_index", core.commit, "Highest committed log index",
                     mntr=False),
              Metric("zkfs_raft_applied_index", core.applied, "Highest applied log index",
                     mntr=False),
              Metric("zkfs_raft_leader", core.leader_id, "Leader's server id (0: none)",
                     mntr=False),
              Metric("zkfs_raft_is_leader", int(server.is_leader), "1 on the leader",
                     mntr=False)]
        progress = core.status().get("progress", {})
        for sid in sorted(progress):
            if sid != server.member_id:
                m.append(Metric("zkfs_raft_peer_lag", max(0, core.commit - progress[sid]["match"]),
                                "Committed entries a member has yet to store (leader only)",
                                labels={"peer": str(sid)}, mntr=False))
    return m


def mntr_rows(server: ZkServer, version: str) -> list[tuple[str, float | int | str]]:
    rows: list[tuple[str, float | int | str]] = []
    for metric in collect(server, version):
        if not metric.mntr:
            continue
        if metric.summary is not None:
            rows += _summary_rows(metric.name, metric.summary)
        else:
            rows.append((f"zk_{metric.name}", metric.value))
    return rows


def _number(value: float | int) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN"
    return repr(float(value)) if isinstance(value, float) else str(value)


def prometheus_text(server: ZkServer, version: str) -> str:
    """The Prometheus text exposition format (version 0.0.4)."""
    out: list[str] = []
    seen: set[str] = set()
    for metric in collect(server, version):
        if isinstance(metric.value, str) and metric.summary is None:
            continue
        name = metric.name
        if name not in seen:
            seen.add(name)
            kind = "summary" if metric.summary is not None else "gauge"
            out.append(f"# HELP {name} {metric.help or name}")
            out.append(f"# TYPE {name} {kind}")
        if metric.summary is not None:
            out.append(f"{name}_count {metric.summary.count}")
            out.append(f"{name}_sum {_number(metric.summary.total)}")
            continue
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(metric.labels.items()))
        out.append(f"{name}{{{labels}}} {_number(metric.value)}" if labels
                   else f"{name} {_number(metric.value)}")
    return "\n".join(out) + "\n"
