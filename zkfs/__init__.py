"""zkfs: ZooKeeper's data model as a filesystem (client side: library, mount, CLI)."""

__version__ = "0.1.0"
