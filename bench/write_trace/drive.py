"""One write at a time (create, 1 session x 1 in flight) against a fresh 3-member zkfsd
ensemble with ZKFSD_TRACE on, four phases: to the leader, to a follower, and both again. Writes
OUT/drive.json (member roles and pids, each write's client-side start and end, monotonic ns) and
the members' OUT/trace.<pid> files; path.py turns them into the per-hop breakdown.

    .venv/bin/python bench/write_trace/drive.py OUT N"""
import json, os, sys, tempfile, time, statistics
from pathlib import Path
sys.path.insert(0, os.getcwd())
out = sys.argv[1]
n = int(sys.argv[2])
os.environ["ZKFSD_TRACE"] = out + "/trace"
from bench.servers import ZkfsdEnsemble, _state
from bench.driver import Session
with tempfile.TemporaryDirectory(prefix="el-", dir="/tmp") as tmp:
    ens = ZkfsdEnsemble(Path(tmp), 2000)
    with ens:
        states = [_state(*a) for a in ens.addresses]
        pids = ens.pids()
        leader = states.index("leader")
        follower = states.index("follower")
        res = {"states": states, "pids": pids, "phases": {}}
        for name, idx in (("leader", leader), ("follower", follower), ("leader2", leader), ("follower2", follower)):
            with Session(*ens.addresses[idx]) as s:
                s.create(f"/{name}")
                for i in range(50):
                    s.create(f"/{name}/warm{i}")
                t0 = time.monotonic_ns()
                lat = []
                for i in range(n):
                    a = time.monotonic_ns()
                    s.create(f"/{name}/n{i}")
                    lat.append((a, time.monotonic_ns()))
                t1 = time.monotonic_ns()
            res["phases"][name] = {"t0": t0, "t1": t1, "lat": lat, "member": idx}
            print(name, "p50 ms", statistics.median(b - a for a, b in lat) / 1e6, flush=True)
    json.dump(res, open(out + "/drive.json", "w"))
