"""A vpdq published on a node reaches pytx (and so HMA) as pytx's own vpdq signal string."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from netnodes import NodeProc
from testdata import VIDEO

pytest.importorskip("threatexchange")

from hashmesh.integrations.threatexchange import (
    HashmeshCollabConfig,
    HashmeshCredentials,
    HashmeshSignalExchangeAPI,
)
from hashmesh.protocol.signals import VPDQSignal

REFERENCE = VIDEO / "vpdq-hashes"


def _pytx_vpdq() -> type:
    """pytx's VPDQSignal. Its module imports Meta's `vpdq` binding (C++, no wheel) only to
    hash files, which this test never does; the class's parsing is pytx's own."""
    sys.modules.setdefault("vpdq", types.SimpleNamespace(VpdqFeature=object))  # type: ignore[arg-type]
    from threatexchange.extensions.vpdq.vpdq import VPDQSignal as PytxVPDQ

    return PytxVPDQ


def test_fetched_vpdq_is_pytx_form_and_pytx_matches_it(tmp_path: Path) -> None:
    pytx_vpdq = _pytx_vpdq()
    lines = (REFERENCE / "chair-19-sd-bar.txt").read_text(encoding="utf-8").splitlines()
    value = VPDQSignal.normalize(" ".join(lines[::30]))
    hotline = NodeProc(tmp_path, "hotline")
    hotline.cli("add", "vpdq", value, "-c", "csam", "--category", "csam")
    hotline.start()
    try:
        api = HashmeshSignalExchangeAPI.for_collab(
            HashmeshCollabConfig(name="mesh", url=hotline.url),
            HashmeshCredentials(hotline.admin_token()),
        )
        state: dict[str, object] = {}
        for delta in api.fetch_iter([pytx_vpdq], None):
            HashmeshSignalExchangeAPI.naive_fetch_merge(state, delta.updates)  # type: ignore[arg-type]
        by_type = HashmeshSignalExchangeAPI.naive_convert_to_signal_type(
            [pytx_vpdq],
            HashmeshCollabConfig(name="mesh", url=hotline.url),
            state,  # type: ignore[arg-type]
        )
    finally:
        assert hotline.stop() == 0
    (signal,) = by_type[pytx_vpdq]
    assert signal == VPDQSignal.to_pytx(value)
    assert pytx_vpdq.validate_signal_str(signal) == signal
    assert pytx_vpdq.compare_hash(signal, signal).match
