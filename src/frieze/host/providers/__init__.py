"""Snapshot providers. The port is :class:`frieze.host.providers.base.SnapshotProvider`."""
