"""The statement kinds hashmesh knows, in one registry.

Listed here rather than registered by import side effect: a parser's accepted kinds are
then readable in one place, and do not depend on which modules happen to be loaded. Each
kind module exports KINDS; add a new module's KINDS below.
"""

from __future__ import annotations

from hashmesh.protocol import certificates, identity, membership, witness
from hashmesh.protocol.statements import Registry, Statement, parse_statement

REGISTRY = Registry([*certificates.KINDS, *identity.KINDS, *membership.KINDS, *witness.KINDS])


def parse(wire: bytes) -> Statement:
    """parse_statement with every known kind."""
    return parse_statement(wire, REGISTRY)
