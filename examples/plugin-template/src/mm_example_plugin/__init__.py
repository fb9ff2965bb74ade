"""An example third-party mm plugin."""

__version__ = "0.1.0"
