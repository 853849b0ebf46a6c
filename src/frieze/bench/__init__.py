"""Benchmarks that print figures and ratios against the peers (restic, borg) on the same data, in one run."""
