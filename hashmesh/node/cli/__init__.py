"""The command line: a thin layer over the node library (`hashmesh ...`)."""

from hashmesh.node.cli.main import main

__all__ = ["main"]
