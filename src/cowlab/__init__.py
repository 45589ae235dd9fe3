"""cowlab: measure what copy-on-write storage under container engines really costs."""

__version__ = "0.1.0"
