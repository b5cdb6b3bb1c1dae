#!/usr/bin/env bash
# The main job: a standalone zkfsd on 127.0.0.1:2181 with its data in ./run/data, in the
# foreground (Ctrl-C or SIGTERM stops it; the data stays for the next run).
# Later this grows into a three-member ensemble plus a FUSE mount.
set -euo pipefail

cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/zkfsd ]]; then
    echo "run: .venv/bin/zkfsd not found; run 'bash scripts/setup.sh' first" >&2
    exit 1
fi

PORT=${ZKFS_PORT:-2181}
DATA_DIR=${ZKFS_DATA_DIR:-$PWD/run/data}
mkdir -p "$DATA_DIR"

cat >&2 <<EOF
zkfsd: standalone server on 127.0.0.1:$PORT, data in $DATA_DIR (stop with Ctrl-C).
Try, from another terminal:
  bash -c 'exec 3<>/dev/tcp/127.0.0.1/$PORT; printf ruok >&3; cat <&3'; echo   # -> imok (also srvr, stat, mntr, ...)
  /usr/share/zookeeper/bin/zkCli.sh -server 127.0.0.1:$PORT create /hello world
  /usr/share/zookeeper/bin/zkCli.sh -server 127.0.0.1:$PORT get /hello
  /usr/share/zookeeper/bin/zkCli.sh -server 127.0.0.1:$PORT      # interactive shell
  .venv/bin/python -c 'from kazoo.client import KazooClient as K; z=K("127.0.0.1:$PORT"); z.start(); print(z.get_children("/")); z.stop()'

EOF

# exec: the server itself receives SIGTERM/SIGINT, so it shuts down cleanly.
exec .venv/bin/zkfsd --data-dir "$DATA_DIR" --client-port "$PORT" --client-address 127.0.0.1 "$@"
