"""Local hashing where the pictures are: PDQ, digests, degenerate-hash refusal."""
