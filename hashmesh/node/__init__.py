"""hashmesh node: the I/O shell (keys on disk, SQLite store, HTTP, CLI) around `protocol`."""
