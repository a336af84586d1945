"""Matching queries against held signals: exact lookups and the PDQ index."""
