"""The command line, `python -m influence_core <command>`: one module per command group."""

from .main import main

__all__ = ["main"]
