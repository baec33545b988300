"""Package version, read by setup.py and stored in saved models."""

__version__ = "0.1.0"
