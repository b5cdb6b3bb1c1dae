#!/usr/bin/env bash
# The main job: a local three-member zkfsd ensemble on 127.0.0.1:2181-2183 with its data in
# ./run, and the tree mounted at /zk (ZKFS_MOUNT). Stays in the foreground; Ctrl-C or SIGTERM
# unmounts, stops the members (by PID) and keeps the data for the next run.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ! -x .venv/bin/zkfsd || ! -x .venv/bin/zkfs ]]; then
    echo "run: .venv/bin/zkfsd not found; run 'bash scripts/setup.sh' first" >&2
    exit 1
fi

RUN_DIR=${ZKFS_RUN_DIR:-$ROOT/run}
MOUNTPOINT=${ZKFS_MOUNT:-/zk}
BASE_PORT=${ZKFS_PORT:-2181}
mkdir -p "$RUN_DIR/logs"

servers=()
cfg="$RUN_DIR/zoo.cfg"
{
    echo "# written by scripts/run.sh"
    echo "tickTime=2000"
    echo "# the election timeout, in ticks (zkfsd(8))"
    echo "syncLimit=5"
    echo "initLimit=10"
    echo "dataDir=$RUN_DIR/data"
    for id in 1 2 3; do
        echo "server.$id=127.0.0.1:$((28880 + id)):$((38880 + id))"
    done
} > "$cfg"

pids=()
demo_pids=()
cleanup() {
    trap - INT TERM EXIT
    for pid in "${demo_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${demo_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if grep -qs " $MOUNTPOINT fuse" /proc/mounts; then
        fusermount3 -u "$MOUNTPOINT" 2>/dev/null || umount -l "$MOUNTPOINT" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "run: stopped; data kept in $RUN_DIR" >&2
}
trap cleanup INT TERM EXIT

for id in 1 2 3; do
    port=$((BASE_PORT + id - 1))
    servers+=("127.0.0.1:$port")
    .venv/bin/zkfsd --config "$cfg" --my-id "$id" --data-dir "$RUN_DIR/data/$id" \
        --client-port "$port" >"$RUN_DIR/logs/zkfsd.$id.log" 2>&1 &
    pids+=($!)
done
SERVERS=$(IFS=,; echo "${servers[*]}")

# Wait (bounded) until one member leads.
leader=""
for _ in $(seq 1 100); do
    for id in 1 2 3; do
        port=$((BASE_PORT + id - 1))
        if out=$(timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port; printf srvr >&3; cat <&3" 2>/dev/null) \
            && grep -q "Mode: leader" <<<"$out"; then
            leader=$id
        fi
    done
    [[ -n $leader ]] && break
    sleep 0.2
done
if [[ -z $leader ]]; then
    echo "run: no leader was elected; see $RUN_DIR/logs/" >&2
    exit 1
fi

if grep -qs " $MOUNTPOINT fuse" /proc/mounts; then
    fusermount3 -u "$MOUNTPOINT" 2>/dev/null || umount -l "$MOUNTPOINT"
fi
mkdir -p "$MOUNTPOINT"
.venv/bin/zkfs mount -o session_timeout=10 "$SERVERS" "$MOUNTPOINT"

# The election recipe at work: two candidates for /services/demo, as two hosts would run it
# (`zkfs elect PATH -- CMD` in a unit's ExecStart=). One runs its command; when it stops, the
# other takes over. Their output goes to $RUN_DIR/logs/elect-demo-N.log.
export ZKFS_SERVERS=$SERVERS
for n in 1 2; do
    .venv/bin/zkfs --timeout 4 elect /services/demo --id "demo-$n" -- \
        sh -c 'echo "$(date +%T) demo-'"$n"' leads; running until stopped"; exec sleep infinity' \
        >"$RUN_DIR/logs/elect-demo-$n.log" 2>&1 &
    demo_pids+=($!)
    sleep 0.5   # demo-1 joins first, so it leads
done
who_leads() {
    local who=""
    for _ in $(seq 1 50); do
        who=$(.venv/bin/zkfs elect --who /services/demo 2>/dev/null) && [[ $who == "$1" ]] && break
        sleep 0.2
    done
    echo "$who"
}
echo "run: election demo: zkfs elect --who /services/demo -> $(who_leads demo-1)" >&2
kill -TERM "${demo_pids[0]}" && wait "${demo_pids[0]}" 2>/dev/null || true
echo "run: demo-1 stopped (SIGTERM); zkfs elect --who /services/demo -> $(who_leads demo-2)" >&2

cat >&2 <<HINTS
zkfs: a 3-member ensemble ($SERVERS, member $leader leads) with the tree mounted at $MOUNTPOINT.
Logs in $RUN_DIR/logs; Ctrl-C stops everything. Try, from another terminal:
  ls -l $MOUNTPOINT
  echo master-1.foobar.com:2223 > $MOUNTPOINT/master-1 && cat $MOUNTPOINT/master-1
  mkdir $MOUNTPOINT/workers && setfattr -n user.zkfs.lifetime -v session $MOUNTPOINT/workers
  (set -C; echo \$\$ > $MOUNTPOINT/lock) && echo "got the lock"
  getfattr -d $MOUNTPOINT/master-1                  # every Stat field as user.zk.*
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs ls -l /
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs watch -r /workers
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs elect --who /services/demo       # demo-2 leads now
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs elect /services/demo --id me -- sh -c 'echo I lead; sleep 60'
                                                    # waits in line behind demo-2 (kill ${demo_pids[1]} to let it in)
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs register /workers -- sleep 60   # /workers/\$(hostname) while it runs
  ZKFS_SERVERS=$SERVERS .venv/bin/zkfs ls --json /services/demo
  /usr/share/zookeeper/bin/zkCli.sh -server $SERVERS get /master-1
  bash -c 'exec 3<>/dev/tcp/127.0.0.1/$BASE_PORT; printf srvr >&3; cat <&3'
HINTS

# Stay in the foreground for as long as the members run.
wait "${pids[@]}"
