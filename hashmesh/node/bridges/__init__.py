"""Bridges: a node following a central hash API (NCMEC, StopNCII, ThreatExchange) and
publishing what it receives into one of its collections, signed by this node, with
feedback sent back.

upstream.py        what every upstream kind implements, its registry, entries and pages
ncmec.py           NCMEC's hash-sharing API v2, through python-threatexchange's client
stopncii.py        StopNCII's FetchHashes and SubmitFeedback, through python-threatexchange's
threatexchange.py  Meta's ThreatExchange threat_updates and reactions, through pytx's
kinds.py           every kind, registered: where the registry is read
apply.py           one fetched page into ops, items and the checkpoint, in one transaction
runner.py          the running node's loop per bridge: fetch, apply, back off, feed back
manage.py          `hashmesh bridge add|list|show|remove` as plain functions
"""
