"""root_from_inclusion_path takes only 32-byte hashes: anything else is refused, not hashed.

A leaf of another size is almost always a caller passing op bytes instead of their leaf
hash; hashing it anyway gives a root that proves nothing, so it must be an error.
"""

from __future__ import annotations

import pytest
from protocol_helpers import mth

from hashmesh.protocol.errors import ProofError
from hashmesh.protocol.merkle import HASH_SIZE, inclusion_path, leaf_hash, root_from_inclusion_path

DATA = [bytes([i]) for i in range(10)]
LEAVES = [leaf_hash(data) for data in DATA]


def test_honest_path_still_gives_the_root() -> None:
    path = inclusion_path(LEAVES, 3)
    assert root_from_inclusion_path(LEAVES[3], 3, len(LEAVES), path) == mth(DATA)


@pytest.mark.parametrize("size", [0, 1, HASH_SIZE - 1, HASH_SIZE + 1, 64])
def test_leaf_that_is_not_a_hash_is_refused(size: int) -> None:
    path = inclusion_path(LEAVES, 3)
    with pytest.raises(ProofError, match=rf"^proof leaf: .*{HASH_SIZE}-byte .*got {size} bytes"):
        root_from_inclusion_path(bytes(size), 3, len(LEAVES), path)


def test_op_bytes_passed_as_leaf_are_refused() -> None:
    with pytest.raises(ProofError, match=r"^proof leaf:"):
        root_from_inclusion_path(b'{"op":"add"}', 0, 1, [])


@pytest.mark.parametrize("size", [0, HASH_SIZE - 1, HASH_SIZE + 1])
@pytest.mark.parametrize("position", [0, 1, 3])
def test_path_element_that_is_not_a_hash_is_refused(size: int, position: int) -> None:
    path = inclusion_path(LEAVES, 3)
    path[position] = bytes(size)
    with pytest.raises(ProofError, match=rf"^proof path\[{position}\]: .*got {size} bytes"):
        root_from_inclusion_path(LEAVES[3], 3, len(LEAVES), path)
