"""Prometheus metrics of the coordinator (one registry per process). Labels never carry secrets:
only operation types, states, HTTP methods, route templates and status codes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

HTTP_REQUESTS = Counter("frieze_http_requests_total", "HTTP requests", ["method", "route", "status"],
                        registry=REGISTRY)
OPS_SUBMITTED = Counter("frieze_operations_submitted_total", "Operations submitted", ["type"], registry=REGISTRY)
OPS_FINISHED = Counter("frieze_operations_finished_total", "Operations finished", ["type", "state"],
                       registry=REGISTRY)
FREEZE_WINDOW = Histogram("frieze_freeze_window_seconds", "Freeze window an application saw", ["kind"],
                          buckets=(0.01, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60), registry=REGISTRY)
BYTES_MOVED = Counter("frieze_mover_bytes_total", "Bytes the mover received from agents", registry=REGISTRY)
RESTORE_POINTS = Counter("frieze_restore_points_total", "Restore points recorded", ["consistency"],
                         registry=REGISTRY)
HOSTS = Gauge("frieze_hosts", "Hosts by state", ["state"], registry=REGISTRY)
