"""hashmesh: a federated, signed hash-exchange network.

`hashmesh.protocol` is the sans-IO core (bytes in, values out); `hashmesh.node` is the I/O
shell around it (keys on disk, the SQLite store, HTTP, the CLI); `hashmesh.integrations`
holds adapters other tools load (python-threatexchange). docs/design-notes.md draws the
layers and which may import which.
"""
