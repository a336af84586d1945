"""Talking to peers: bounded bodies, peer state and scoring, gossip and sync."""
