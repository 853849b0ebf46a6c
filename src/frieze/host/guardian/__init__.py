"""The freeze guardian: a separate process that owns every freeze lease."""
