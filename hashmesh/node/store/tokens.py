"""The tokens table: rows only. What a token may do, and which names and scopes are valid,
is hashmesh/node/tokens.py's; this module only keeps the SQL in the store package.

Rows are (id, name, hash, scopes, collections, created_at, revoked_at), scopes and
collections comma-joined, collections NULL for "every collection".
"""

from __future__ import annotations

import sqlite3
from typing import Any

TokenRow = tuple[Any, ...]

_COLUMNS = "id, name, hash, scopes, collections, created_at, revoked_at"


class NameTaken(Exception):
    """A live token already has this name (the partial unique index refused the row)."""


class TokenTable:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def insert(
        self, name: str, token_hash: str, scopes: str, collections: str | None, at: int
    ) -> int:
        try:
            cur = self.conn.execute(
                "INSERT INTO tokens (name, hash, scopes, collections, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (name, token_hash, scopes, collections, at),
            )
        except sqlite3.IntegrityError:
            raise NameTaken(name) from None
        return int(cur.lastrowid or 0)

    def rows(self) -> list[TokenRow]:
        return self.conn.execute(f"SELECT {_COLUMNS} FROM tokens ORDER BY id").fetchall()

    def by_id(self, token_id: int) -> TokenRow | None:
        row: TokenRow | None = self.conn.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE id = ?", (token_id,)
        ).fetchone()
        return row

    def live_by_name(self, name: str) -> TokenRow | None:
        row: TokenRow | None = self.conn.execute(
            f"SELECT {_COLUMNS} FROM tokens WHERE name = ? AND revoked_at IS NULL", (name,)
        ).fetchone()
        return row

    def mark_revoked(self, token_id: int, at: int) -> None:
        self.conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (at, token_id))

    def live(self) -> list[tuple[str, str, str, str | None]]:
        """(name, hash, scopes, collections) of every live token."""
        return self.conn.execute(
            "SELECT name, hash, scopes, collections FROM tokens WHERE revoked_at IS NULL"
        ).fetchall()
