"""kazoo's own SASL, TLS, read-only mode and reconfig tests, run against a zkfsd ensemble.

kazoo's test harness starts ZooKeeper as `java ... QuorumPeerMain zoo.cfg`; a `java` placed first
on PATH here starts zkfsd with that same zoo.cfg instead (adding the JAAS file and superDigest
and readonlymode.enabled that the harness passes as JVM properties, which zkfsd reads from
zoo.cfg keys). Everything else
is kazoo's, unchanged: its 3-member cluster, its JKS key and trust stores, its clients.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ZKFSD_BIN

SHIM = '''#!{python}
import os, sys
args = sys.argv[1:]
if "org.apache.zookeeper.server.quorum.QuorumPeerMain" not in args:
    os.execv({java!r}, [{java!r}, *args])
cfg = args[-1]
props = dict(a[2:].split("=", 1) for a in args if a.startswith("-D") and "=" in a)
lines = [open(cfg).read()]
jaas = props.get("java.security.auth.login.config")
if jaas and os.path.exists(jaas) and "DigestLoginModule" in open(jaas).read():
    lines.append("jaasLoginFile=" + jaas)
digest = props.get("zookeeper.DigestAuthenticationProvider.superDigest")
if digest:
    lines.append("DigestAuthenticationProvider.superDigest=" + digest)
if props.get("readonlymode.enabled") == "true":
    lines.append("readonlymode.enabled=true")
with open(cfg + ".zkfsd", "w") as f:
    f.write("\\n".join(lines) + "\\n")
os.execv({zkfsd!r}, [{zkfsd!r}, "--config", cfg + ".zkfsd", "--log-level", "INFO"])
'''


@pytest.mark.timeout(300)
def test_kazoos_sasl_and_tls_tests_pass_against_zkfsd(tmp_path: Path) -> None:
    pytest.importorskip("OpenSSL")
    pytest.importorskip("puresasl")
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java (kazoo's harness looks for it)")
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "java"
    shim.write_text(SHIM.format(python=sys.executable, java=java, zkfsd=str(ZKFSD_BIN)))
    shim.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ZOOKEEPER_", "ZKFS_"))}
    env.update(PATH=f"{shim_dir}{os.pathsep}{env.get('PATH', '')}", ZOOKEEPER_CLASSPATH="zkfsd",
               ZOOKEEPER_VERSION="3.8.0",
               ZOOKEEPER_PORT_OFFSET=str(21000 + 100 * random.randrange(100)))
    env.pop("CI", None)  # kazoo's CI mode expects ZooKeeper's own version checks
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--pyargs", "kazoo.tests.test_sasl", "kazoo.tests.test_client",
         "kazoo.tests.test_connection",
         "-k", "SASLDigestAuthentication or SSLClient or ReadOnlyMode or TestReconfig"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=280)
    tail = (result.stdout + result.stderr)[-3000:]
    assert result.returncode == 0, tail
    # 6 SASL/TLS/read-only tests and TestReconfig's 3 (its harness writes reconfigEnabled=true).
    assert "9 passed" in result.stdout, tail
