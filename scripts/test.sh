#!/usr/bin/env bash
# Run the full test suite. Needs scripts/setup.sh to have run once.
#
# Without arguments the suite runs as two pytest processes side by side (tests/conftest.py,
# SIDE_LANE_MODULES, says which modules go where and why): the tests that mostly wait on
# processes, sockets and timeouts in the foreground, the CPU-bound in-process ones (the Raft
# simulations, codecs, the tree) and a few long subprocess runs in the background. The
# background lane's output follows the foreground's; each lists its slowest tests. The exit
# status is non-zero if either lane failed or collected nothing.
#
# With arguments (`bash scripts/test.sh -k config -x`, a file, ...) or ZKFS_TEST_LANES=1, one
# pytest process runs everything selected, as before.
set -euo pipefail

# Everything below is one function, read whole before it runs: bash reads a script as it goes,
# and a checkout or an edit of this file during a long run would otherwise be read mid-line.
main() {
cd "$(dirname "$0")/.."

if [[ ! -x .venv/bin/pytest ]]; then
    echo "test: .venv/bin/pytest not found; run 'bash scripts/setup.sh' first" >&2
    exit 1
fi

# pytest's "no tests were collected" (5) must not look like success to CI.
no_tests() {
    if [[ $1 == 5 ]]; then
        echo "test: pytest collected no tests${2:+ in $2}; treating that as a failure" >&2
    fi
}

if (($#)) || [[ ${ZKFS_TEST_LANES:-2} == 1 ]]; then
    status=0
    .venv/bin/pytest -q --durations=25 "$@" || status=$?
    no_tests "$status"
    exit "$status"
fi

side_log=$(mktemp "${TMPDIR:-/tmp}/zkfs-test-side.XXXXXX")
side_pid=
stop_side() {
    # Ctrl-C or an error here: interrupt the background lane (by its PID) so that its fixtures
    # stop their servers and unmount, then wait for it.
    if [[ -n $side_pid ]] && kill -0 "$side_pid" 2>/dev/null; then
        kill -INT "$side_pid" 2>/dev/null || true
        wait "$side_pid" 2>/dev/null || true
    fi
    side_pid=
}
trap 'stop_side; rm -f "$side_log"' EXIT

# Its own cache directory: two pytest processes must not rewrite one lastfailed file. Job
# control (set -m) for the start only: without it bash starts a background job with SIGINT
# ignored, and pytest could not be interrupted cleanly (fixtures stopping servers, unmounting).
# At a lower priority (nice 10): its tests assert nothing about time, while the foreground's
# members must answer within election and session timeouts, so they get the CPU first.
set -m
nice -n 10 .venv/bin/pytest -q --durations=10 -m side_lane -o cache_dir=.pytest_cache/side-lane \
    >"$side_log" 2>&1 </dev/null &
side_pid=$!
set +m

main_status=0
.venv/bin/pytest -q --durations=25 -m "not side_lane" || main_status=$?
no_tests "$main_status" "the main lane"
if [[ $main_status == 2 ]]; then
    stop_side  # interrupted (Ctrl-C reaches the foreground lane only) or a usage error
fi

side_status=0
if [[ -n $side_pid ]]; then
    wait "$side_pid" || side_status=$?
    side_pid=
else
    side_status=2
fi
echo
echo "==================== side lane (tests marked side_lane, run alongside) ===================="
cat "$side_log" 2>/dev/null || true
no_tests "$side_status" "the side lane"

echo
echo "test: main lane exit status $main_status, side lane exit status $side_status"
if ((main_status)); then
    exit "$main_status"
fi
exit "$side_status"
}

main "$@"
