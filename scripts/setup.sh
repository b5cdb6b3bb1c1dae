#!/usr/bin/env bash
# Install everything zkfs needs on Debian 12 and create .venv in the repository root.
# Idempotent: packages already installed are not fetched again, and an existing .venv is reused.
set -euo pipefail

cd "$(dirname "$0")/.."

# System packages: Python build tools, FUSE (for the mount), Apache ZooKeeper and a JRE (the
# reference server the tests compare against, and zkCli.sh), inotify-tools/attr (filesystem
# tests), man-db (to read man/zkfsd.8), vim (the mount tests edit a file with it, as users do),
# strace (the benchmarks count fsync syscalls with it), systemd (systemd-analyze checks the
# units in contrib/systemd; nothing is started), patch (pyfuse3's lock patch, below).
APT_PACKAGES=(
    python3-venv python3-dev gcc patch
    fuse3 libfuse3-dev pkg-config
    zookeeper default-jre-headless
    inotify-tools attr man-db
    vim strace systemd
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    SUDO=()
    if [[ $(id -u) != 0 ]]; then SUDO=(sudo); fi
    echo "setup: installing ${missing[*]}" >&2
    # Only refresh the package lists when something actually has to be installed.
    "${SUDO[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
else
    echo "setup: system packages already installed" >&2
fi

# python3 is whatever is first on PATH (Debian's /usr/bin/python3 or a pyenv shim); both are 3.11.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: $PYTHON is $("$PYTHON" --version 2>&1); zkfs needs Python 3.11 or newer" >&2
    exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
    echo "setup: creating .venv with $("$PYTHON" --version 2>&1)" >&2
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet -e '.[test]'

# pyfuse3 with FUSE's lock operations and interrupt delivery, which upstream lacks
# (libfuse/pyfuse3#79): the pinned sdist from PyPI, patched with contrib/pyfuse3's patch and
# built with Cython from PyPI. The installed version names the patch (3.5.0+zkfs.<hash>), so
# a re-run with the same patch does nothing and a changed patch is rebuilt.
PYFUSE3_VERSION=3.5.0
PYFUSE3_PATCH=contrib/pyfuse3/pyfuse3-$PYFUSE3_VERSION-locks-interrupts.patch
PYFUSE3_WANT="$PYFUSE3_VERSION+zkfs.$(sha256sum "$PYFUSE3_PATCH" | cut -c1-12)"
PYFUSE3_HAVE=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pyfuse3"))' \
               2>/dev/null || true)
if [[ "$PYFUSE3_HAVE" != "$PYFUSE3_WANT" ]]; then
    echo "setup: building pyfuse3 $PYFUSE3_WANT (was ${PYFUSE3_HAVE:-not installed})" >&2
    build=$(mktemp -d)
    trap 'rm -rf "$build"' EXIT
    .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d "$build" \
        "pyfuse3==$PYFUSE3_VERSION"
    tar -xzf "$build/pyfuse3-$PYFUSE3_VERSION.tar.gz" -C "$build"
    src="$build/pyfuse3-$PYFUSE3_VERSION"
    patch -d "$src" -p1 --quiet < "$PYFUSE3_PATCH"
    # Generated from the unpatched .pyx; Cython (a build requirement) generates it anew.
    rm -f "$src/src/pyfuse3/__init__.c"
    SETUPTOOLS_SCM_PRETEND_VERSION="$PYFUSE3_WANT" \
        .venv/bin/python -m pip install --quiet --no-deps --force-reinstall "$src"
fi

# A regular `pip install .` puts the man pages in .venv/share/man (pyproject.toml data-files);
# an editable install does not, so link them there: with .venv/bin on PATH, `man zkfs` finds
# them (man-db looks in ../share/man of every PATH entry).
for page in man/*.[158]; do
    section=${page##*.}
    mkdir -p ".venv/share/man/man$section"
    ln -sfn "$PWD/$page" ".venv/share/man/man$section/$(basename "$page")"
done

# `mount -t fuse.zkfs SERVERS /zk` and fstab lines of type fuse.zkfs: mount(8) runs the helper
# /sbin/mount.fuse.zkfs (it tries mount.<type> before mount.fuse3). Link it to this venv's
# console script; re-running replaces the link, so it always names the latest setup.
HELPER=/sbin/mount.fuse.zkfs
if [[ -w /sbin || $(id -u) == 0 ]]; then
    ln -sfn "$PWD/.venv/bin/mount.fuse.zkfs" "$HELPER"
else
    sudo ln -sfn "$PWD/.venv/bin/mount.fuse.zkfs" "$HELPER"
fi
echo "setup: $HELPER -> $(readlink "$HELPER")" >&2
echo "setup: done; .venv/bin/zkfsd is $(.venv/bin/zkfsd --version)" >&2
