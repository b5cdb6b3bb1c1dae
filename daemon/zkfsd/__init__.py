"""zkfsd: a ZooKeeper-compatible coordination server (importable as `zkfsd`)."""
