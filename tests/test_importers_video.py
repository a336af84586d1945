"""Video hashes in the lists hotlines send: NCMEC's TMK+PDQF, StopNCII's VideoMD5 and
VideoTMK, pytx's vpdq and video_tmk_pdqf lines. None of them is dropped any more."""

from __future__ import annotations

import base64
import io
import json

from testdata import FORMATS

from hashmesh.node.lists.importers import ImportIssue, ImportRecord, parse_file
from hashmesh.protocol.signals import VPDQSignal

TMK = base64.b64encode(bytes((7 * i + 3) % 256 for i in range(3000))).decode()
MD5 = "b1b1b1b1b1b1b1b1b1b1b1b1b1b1b1b2"
PDQS = (
    "e271017837246aaccddea259648fb7d62f435c89d9e99b2497763e216c8d055c",
    "df83b48f2ad34d68169c36bc6d2f6b36ce5ed08701a301e9cbb9fc12f80b8154",
)


def _run(fmt: str, data: bytes) -> list[ImportRecord | ImportIssue]:
    return list(parse_file(fmt, io.BytesIO(data)))


def test_ncmec_keeps_an_inline_tmk_pdqf_as_tmk_with_the_entry_ref() -> None:
    xml = f"""<?xml version="1.0"?>
<queryResult xmlns="https://hashsharing.ncmec.org/hashsharing/v2"><videos count="1">
<video><id>v9</id><classification>A1</classification><fingerprints><md5>{MD5}</md5>
<tmk-pdqf>{TMK[:1500]}
{TMK[1500:]}</tmk-pdqf></fingerprints></video></videos></queryResult>""".encode()
    items = _run("ncmec", xml)
    assert [(i.signal_type, i.value, i.ref) for i in items if isinstance(i, ImportRecord)] == [
        ("md5", MD5, "ncmec:v9"),
        ("tmk", TMK, "ncmec:v9"),
    ]


def test_ncmec_large_fingerprint_links_say_how_to_get_the_value() -> None:
    items = list(parse_file("ncmec", FORMATS / "ncmec-entries-large-fingerprints.xml"))
    (link,) = [i for i in items if isinstance(i, ImportIssue) and "tmk-pdqf" in i.location]
    assert "is given as a link" in link.message and "fetch it from NCMEC's API" in link.message


def test_stopncii_video_md5_is_md5_and_video_tmk_is_tmk() -> None:
    page = {
        "count": 3,
        "hashRecords": [
            {"hashValue": MD5.upper(), "signalType": "VideoMD5", "hashStatus": "Active"},
            {"hashValue": TMK, "signalType": "VideoTMK", "hashStatus": "Received"},
            {"hashValue": TMK, "signalType": "VideoTMK", "hashStatus": "Withdrawn"},
        ],
    }
    items = _run("stopncii", json.dumps(page).encode())
    assert [(i.action, i.signal_type, i.value, i.category) for i in items] == [  # type: ignore[union-attr]
        ("add", "md5", MD5, "ncii"),
        ("add", "tmk", TMK, "ncii"),
        ("revoke", "tmk", TMK, "ncii"),
    ]


def test_pytx_lines_of_vpdq_and_tmk_are_imported() -> None:
    frames = f"0,100,{PDQS[0]},0.000 30,90,{PDQS[1]},1.000"
    pytx = VPDQSignal.to_pytx(frames)
    text = f"vpdq {pytx}\nvideo_tmk_pdqf {TMK}\n".encode()
    items = _run("pytx", text)
    assert [(i.signal_type, i.value) for i in items] == [  # type: ignore[union-attr]
        ("vpdq", f"0,100,{PDQS[0]},0.000 1,90,{PDQS[1]},1.000"),
        ("tmk", TMK),
    ]
