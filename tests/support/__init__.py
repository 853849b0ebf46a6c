"""Helpers shared by tests: private engine instances, loop file systems, S3 server."""
