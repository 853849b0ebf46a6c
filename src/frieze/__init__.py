"""frieze: application-consistent snapshot backups of a fleet, from one place."""

__version__ = "0.1.0"
