"""vcon-capture: the command line, the daemon and its configuration."""

__version__ = "0.1.0"
