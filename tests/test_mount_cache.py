"""Issue 11: the mount served from the kernel's caches without giving up coherence.

The kernel's page cache, attribute cache and directory cache serve repeated reads; a change
made on another host must never show torn (one version's size with another's pages, or a mix
of two versions' pages): a reader only ever sees whole contents.
"""
from __future__ import annotations

import os
import subprocess
import threading
import time

import pytest

from mount_helpers import sh, two_hosts, wait_for

pytestmark = [
    pytest.mark.skipif(not os.path.exists("/dev/fuse"), reason="no /dev/fuse"),
    pytest.mark.timeout(180),
]

# Lengths on both sides of page boundaries (4096), growing and shrinking.
CONTENTS = [b"a" * 5000, b"b" * 9000, b"c" * 100, b"d" * 12288, b"e" * 4096, b"f" * 8193,
            b"g" * 1, b"h" * 20000]


@pytest.fixture(params=["direct", "page_cache"])
def pair(request, zkfsd, mount):  # type: ignore[no-untyped-def]
    """Two mounts (host A, host B) of one zkfsd, through a fresh chroot; reads through direct
    I/O (the default) or the kernel's page cache (`-o page_cache`)."""
    options = "session_timeout=4" + (",page_cache" if request.param == "page_cache" else "")
    with two_hosts(zkfsd, mount, options) as (a, b, kz):
        yield a.mountpoint, b.mountpoint, kz


def test_cat_on_b_never_sees_a_torn_file_while_a_rewrites_it(pair, request) -> None:  # type: ignore[no-untyped-def]
    if "page_cache" in request.node.callspec.id:
        # The known race of `-o page_cache` (zkfs(5)): with several readers of the file and a
        # loaded machine the kernel may keep a stale size and zero-fill up to it. Seen in
        # test_coherence's three-reader stress test (4 in ~40 runs at load 5), not in this one.
        request.applymarker(pytest.mark.xfail(reason="known page_cache race", strict=False))
    A, B, kz = pair
    (A / "f").write_bytes(CONTENTS[0])
    wait_for(lambda: (B / "f").exists() and (B / "f").read_bytes() == CONTENTS[0],
             what="first content on B")
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        i = 1
        deadline = time.monotonic() + 8
        while not stop.is_set() and time.monotonic() < deadline:
            data = CONTENTS[i % len(CONTENTS)]
            if i % 3:
                with open(A / "f", "wb") as f:  # O_TRUNC rewrite through host A's mount
                    f.write(data)
            else:
                kz.set("/f", data)
            writes[0] += 1
            i += 1
            time.sleep(0.003)

    t = threading.Thread(target=writer)
    t.start()
    try:
        # Each cat's output on its own line (no content holds a newline); bounded in count
        # and time.
        r = subprocess.run(
            # (`if`, not `((...)) && break`: after 3000 fast iterations the last status must
            # not be the arithmetic test's 1.)
            ["bash", "-c", f"for i in $(seq 1 3000); do cat {B}/f || exit 1; echo; "
                           f"if ((SECONDS > 7)); then break; fi; done"],
            capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        stop.set()
        t.join(timeout=20)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split(b"\n")[:-1]
    assert len(lines) > 50 and writes[0] > 50, (len(lines), writes[0])
    allowed = set(CONTENTS)
    torn = [(len(x), x[:1], x[-1:], x.count(b"\0")) for x in lines if x not in allowed]
    assert not torn, f"{len(torn)} of {len(lines)} reads torn, e.g. {torn[:5]}"
    seen = {x[:1] for x in lines}
    assert len(seen) >= 3, f"B saw too few versions: {seen}"
    # And once A stops, B converges on the last version, for cat and stat alike.
    last = kz.get("/f")[0]
    wait_for(lambda: (B / "f").read_bytes() == last and os.stat(B / "f").st_size == len(last),
             what="B converging on the last version")


def test_reread_served_from_cache_stays_coherent(pair) -> None:  # type: ignore[no-untyped-def]
    """A cached file is re-read without the ensemble, and a remote change still shows at once
    after its event (content and size agree)."""
    A, B, kz = pair
    kz.create("/r", b"one")
    for _ in range(5):
        assert (B / "r").read_bytes() == b"one"
    for value in (b"two" * 3000, b"3", b"four" * 1025):
        kz.set("/r", value)
        wait_for(lambda v=value: (B / "r").read_bytes() == v, what="new value on B")
        assert os.stat(B / "r").st_size == len(value)
        assert sh(f"cat {B}/r").stdout.encode() == value
