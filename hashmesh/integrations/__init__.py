"""Adapters that let other tools subscribe to a hashmesh node (optional dependencies).

Nothing here is imported by the node itself: `threatexchange` is loaded by
python-threatexchange (`threatexchange config extensions add
hashmesh.integrations.threatexchange`) only where that package is installed.
"""
