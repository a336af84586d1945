"""`hashmesh bridge add|list|show|remove` as plain functions over a node's home.

A bridge lives in config.toml ([[bridges]]), which the running node re-reads within a
second, so adding or removing one needs no restart; its state (checkpoint, counts, last
error) lives in the database, read here through a read-only connection, which works
whether or not the node runs.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from hashmesh.node.bridges.kinds import kind_of
from hashmesh.node.bridges.upstream import environment_name, read_credentials
from hashmesh.node.config import Bridge, Home, check_bridge
from hashmesh.node.errors import Conflict, NotFound
from hashmesh.node.store.bridges import earlier_use, feedback_rows, state_of
from hashmesh.node.store.feed import connect_reader


def add_bridge(
    home: Home,
    name: str,
    kind: str,
    collection: str,
    credentials_file: str = "",
    credentials_env: str = "",
    environment: str = "",
    url: str = "",
    interval_s: float = 300.0,
    timeout_s: float = 120.0,
    category: str = "",
    dispute_reason: str = "",
    privacy_group: str = "",
) -> dict[str, Any]:
    """Check everything that can be checked before the node runs it (the kind, its
    environment, the credentials' file mode and format), then write the config."""
    upstream = kind_of(kind)
    config = home.load_config()
    if environment:
        environment = environment_name(upstream, environment)
    if credentials_file:
        path = Path(credentials_file).expanduser()
        credentials_file = str(path if path.is_absolute() else Path.cwd() / path)
    bridge = Bridge(
        name=name,
        kind=kind,
        collection=collection,
        environment=environment,
        url=url.rstrip("/"),
        credentials_file=credentials_file,
        credentials_env=credentials_env,
        interval_s=float(interval_s),
        timeout_s=float(timeout_s),
        category=category,
        dispute_reason=dispute_reason,
        privacy_group=privacy_group,
    )
    check_bridge(bridge)
    if any(b.name == name for b in config.bridges):
        raise Conflict(
            f"bridge {name!r} already exists; nothing changed (to change it: hashmesh bridge"
            f" remove {name}, then add it again: its checkpoint is kept)"
        )
    if credentials_file:  # an environment variable is the running node's, not ours
        upstream.check_secret(read_credentials(bridge, home.path))
    _same_as_before(home, bridge)
    config.bridges.append(bridge)
    home.save_config(config)
    return bridge_json(bridge, _state(home, name))


def remove_bridge(home: Home, name: str) -> dict[str, Any]:
    config = home.load_config()
    bridge = _named(config.bridges, name)
    config.bridges = [b for b in config.bridges if b.name != name]
    home.save_config(config)
    return {**bridge_json(bridge, _state(home, name)), "change": "removed"}


def list_bridges(home: Home) -> dict[str, Any]:
    config = home.load_config()
    return {"bridges": [bridge_json(b, _state(home, b.name)) for b in config.bridges]}


def show_bridge(home: Home, name: str) -> dict[str, Any]:
    config = home.load_config()
    bridge = _named(config.bridges, name)
    out = bridge_json(bridge, _state(home, name))
    out["recent_feedback"] = _read(home, lambda conn: feedback_rows(conn, name, 20)) or []
    return out


def _same_as_before(home: Home, bridge: Bridge) -> None:
    """A name added again resumes its checkpoint and revokes its earlier adds, which only
    the same kind can read and only the same collection can revoke (a revoke names adds
    of its own log)."""
    before = _read(home, lambda conn: earlier_use(conn, bridge.name))
    if before is None:
        return
    kind, collection = before
    if kind != bridge.kind or (collection and collection != bridge.collection):
        was = f"kind {kind}" + (f", collection {collection}" if collection else "")
        raise Conflict(
            f"bridge name {bridge.name!r} was used before ({was}) and its checkpoint and"
            " live adds are kept: add it again with the same kind and collection, or use"
            " another name; nothing changed"
        )


def _named(bridges: list[Bridge], name: str) -> Bridge:
    for bridge in bridges:
        if bridge.name == name:
            return bridge
    known = ", ".join(b.name for b in bridges) or "none"
    raise NotFound(f"bridge {name!r}: no such bridge (bridges: {known}; see hashmesh bridge list)")


def _read(home: Home, query: Any) -> Any:
    if not home.db_path.exists():
        return None
    conn = connect_reader(home.db_path)
    try:
        return query(conn)
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # a database the bridges' release has not opened
            return None
        raise
    finally:
        conn.close()


def _state(home: Home, name: str) -> dict[str, Any] | None:
    result: dict[str, Any] | None = _read(home, lambda conn: state_of(conn, name))
    return result


def bridge_json(bridge: Bridge, state: dict[str, Any] | None) -> dict[str, Any]:
    state = state or {}
    upstream = kind_of(bridge.kind)
    checkpoint = state.get("checkpoint", {})
    counts = state.get("counts", {})
    failing = bool(state.get("failures")) and (state.get("last_error_ms") or 0) > (
        state.get("last_success_ms") or 0
    )
    return {
        "name": bridge.name,
        "kind": bridge.kind,
        "collection": bridge.collection,
        "environment": bridge.environment or ("" if bridge.url else upstream.default_environment),
        "url": bridge.url,
        **({"privacy_group": bridge.privacy_group} if bridge.privacy_group else {}),
        "credentials": (
            f"file {bridge.credentials_file}"
            if bridge.credentials_file
            else f"environment variable {bridge.credentials_env}"
        ),
        "interval_s": bridge.interval_s,
        "timeout_s": bridge.timeout_s,
        "category": bridge.category or upstream.default_category,
        "checkpoint": checkpoint,
        "checkpoint_text": upstream.describe(checkpoint),
        "last_success_ms": state.get("last_success_ms"),
        "last_error": state.get("last_error"),
        "last_error_ms": state.get("last_error_ms"),
        "failures": state.get("failures", 0),
        "healthy": not failing,
        "counts": {
            "entries": counts.get("entries", 0),
            "pages": counts.get("pages", 0),
            "added": counts.get("added", 0),
            "revoked": counts.get("revoked", 0),
            "skipped": counts.get("skipped", {}),
        },
        "live": state.get("live", 0),
        "feedback": state.get("feedback", {}),
    }
