"""The node's SQLite store: the one owner of SQL."""
