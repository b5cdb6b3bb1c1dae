"""zkfs benchmarks: zkfsd side by side with Apache ZooKeeper, the mount side by side with tmpfs.

Entry point: `.venv/bin/python -m bench` (see bench/README.md).
"""
