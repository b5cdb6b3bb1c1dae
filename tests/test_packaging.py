"""`pip install .` of the project into a fresh venv: console scripts, man pages where man(1)
finds them, LICENSE and the units.

The wheel is built from a copy of the tree (no stale build/ directory can leak in) with pip's
build isolation (setuptools from PyPI or pip's cache). The fresh venv gets the wheel without
dependencies; the test venv's site-packages are added to its path by a .pth file, so the
installed commands run without downloading trio, pyfuse3 & co again.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "run", "*.egg-info",
                                "__pycache__", ".pytest_cache", ".hypothesis", "bench")


@pytest.mark.timeout(240)
def test_pip_install_gives_commands_man_pages_and_license(tmp_path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE)
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                        str(wheels), str(src)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("zkfs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), names
    assert any(n.startswith("zkfsd/") for n in names) and "zkfs/leadership.py" in names

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = sysconfig.get_path("purelib")
    Path(purelib, "zz-test-deps.pth").write_text(deps + "\n")

    env = {k: v for k, v in os.environ.items() if k not in ("MANPATH", "PYTHONPATH")}
    env["PATH"] = f"{venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
    for command in ("zkfs", "zkfsd"):
        r = subprocess.run([command, "--version"], env=env, capture_output=True, text=True,
                           timeout=30, cwd=tmp_path)
        assert r.returncode == 0 and "0.1" in r.stdout and command in r.stdout, r
        # The installed copy runs, not the checkout's.
        assert str(ROOT) not in subprocess.run(
            [str(py), "-c", f"import {command}; print({command}.__file__)"], env=env,
            capture_output=True, text=True, cwd=tmp_path).stdout
    r = subprocess.run(["zkfs-mount", "--help"], env=env, capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    assert r.returncode == 0 and "mount.fuse3" in r.stdout, r

    for section, page in (("1", "zkfs"), ("5", "zkfs"), ("8", "zkfsd")):
        assert (venv / "share" / "man" / f"man{section}" / f"{page}.{section}").is_file()
    assert (venv / "share" / "doc" / "zkfs" / "systemd" / "zkfsd.service").is_file()
    if shutil.which("man") is None:
        pytest.fail("man is missing: scripts/setup.sh installs man-db")
    # man-db derives PREFIX/share/man from PREFIX/bin on PATH: `man zkfs` just works.
    for args, page in ((["zkfs"], "man1/zkfs.1"), (["5", "zkfs"], "man5/zkfs.5"),
                       (["zkfsd"], "man8/zkfsd.8")):
        r = subprocess.run(["man", "-w", *args], env=env, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == str(venv / "share" / "man" / page), r
    r = subprocess.run(["man", "-M", str(venv / "share" / "man"), "-P", "cat", "zkfs"],
                       env=dict(env, MANWIDTH="80"), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "elect" in r.stdout, r.stderr
