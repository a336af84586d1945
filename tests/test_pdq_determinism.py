"""The same pictures hash to the same PDQ whatever SIMD kernels numpy and OpenBLAS pick.

Participants run on different processors; a hash that depends on the processor breaks
de-duplication and exact matching across the network. Each setting runs the corpus of
tests/pdq_corpus.py (every reference image through `hash_file`, folded resizes, random and
thin planes) in a fresh process, since numpy and OpenBLAS choose their kernels at import.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hashmesh.node.hashing.pdq import _DCT

_CORPUS = Path(__file__).resolve().parent / "pdq_corpus.py"


def _dispatchable() -> list[str]:
    from numpy._core import _multiarray_umath as umath

    features: dict[str, bool] = umath.__cpu_features__
    return [name for name in umath.__cpu_dispatch__ if features.get(name, False)]


def _run(extra: dict[str, str]) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NPY_", "OPENBLAS_"))}
    env.update(extra)
    done = subprocess.run(
        [sys.executable, str(_CORPUS)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_pdq_is_identical_under_every_simd_dispatch_and_blas_kernel() -> None:
    features = _dispatchable()
    if not features:
        pytest.skip("numpy dispatches no SIMD target beyond its baseline on this processor")
    settings: list[dict[str, str]] = [
        {},
        {"NPY_DISABLE_CPU_FEATURES": " ".join(features[1:])},  # the lowest target only
        {"NPY_DISABLE_CPU_FEATURES": " ".join(features)},  # the baseline only
        {"OPENBLAS_CORETYPE": "Haswell"},
        {"OPENBLAS_CORETYPE": "Prescott"},
        {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_NUM_THREADS": "1"},
    ]
    runs = [_run(extra) for extra in settings]
    targets = {str(run["add_fff"]) for run in runs}
    assert len(targets) >= 2, f"the settings did not change numpy's kernels: {targets}"
    reference = runs[0]["hashes"]
    assert isinstance(reference, dict) and len(reference) > 100
    for extra, run in zip(settings[1:], runs[1:], strict=True):
        hashes = run["hashes"]
        assert isinstance(hashes, dict)
        differing = sorted(k for k in reference if hashes.get(k) != reference[k])
        assert not differing, (extra, differing[:5])


def test_dct_matrix_has_the_digest_given_in_the_protocol() -> None:
    """A known answer: a C library whose cosine rounds otherwise would change this digest.

    docs/protocol.md gives it so that a port can check its matrix; that the values are
    Meta's is shown by the bit-for-bit comparisons with the pdqhash binding in test_pdq.py.
    """
    digest = hashlib.sha256(_DCT.astype("<f4").tobytes()).hexdigest()
    assert digest == "db354678fc6c99b7d442c35d8e89b002b71cb35eff6ae436c5f36392277a83c8"
    assert digest in (_CORPUS.parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
