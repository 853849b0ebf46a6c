"""frieze.api: the REST API (FastAPI, /v1)."""
