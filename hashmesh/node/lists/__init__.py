"""Hash lists in and out of a node: list files, external formats, the platform feed."""
