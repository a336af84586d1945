"""Every upstream kind, registered: import the registry from here, never from a kind's module."""

from __future__ import annotations

from hashmesh.node.bridges import (  # noqa: F401  (each registers its kind)
    ncmec,
    stopncii,
    threatexchange,
)
from hashmesh.node.bridges.upstream import Upstream, registered
from hashmesh.node.errors import NodeError


def kinds() -> dict[str, type[Upstream]]:
    return registered()


def kind_of(name: str) -> type[Upstream]:
    known = registered()
    if name not in known:
        raise NodeError(f"bridge kind {name[:40]!r}: must be one of {', '.join(sorted(known))}")
    return known[name]
