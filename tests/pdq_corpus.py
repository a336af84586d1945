"""Print, as JSON, the PDQ of a fixed corpus through every hashing path of the node.

Run in a subprocess by tests/test_pdq_determinism.py under several numpy SIMD dispatch
and OpenBLAS kernel settings; the outputs must be equal. Also prints which SIMD target
numpy's float32 add runs on, so the test can tell that the settings took effect.
"""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from testdata import PDQ

from hashmesh.node.hashing.hasher import hash_file
from hashmesh.node.hashing.pdq import pdq_from_luma


def _planes() -> list[np.ndarray]:  # type: ignore[type-arg]
    rng = np.random.default_rng(20261201)
    planes = []
    for i in range(60):
        h, w = (int(v) for v in rng.integers(5, 700, size=2))
        if i % 5 == 0:
            h = int(rng.integers(5, 12))  # thin planes: most coefficients near the median
        if i % 2:
            planes.append(rng.integers(0, 256, size=(h, w), dtype=np.uint8))
        else:
            y, x = np.mgrid[0:h, 0:w]
            wave = 127 + 100 * np.sin(x / rng.uniform(3, 50)) * np.cos(y / rng.uniform(3, 50))
            planes.append(wave.astype(np.float32))
    return planes


def corpus() -> dict[str, object]:
    out: dict[str, object] = {}
    images = sorted((PDQ / "images").iterdir()) + sorted((PDQ / "bridge-mods").iterdir())
    for path in images:
        hashes = hash_file(path)
        out[f"file:{path.parent.name}/{path.name}"] = [hashes.pdq, hashes.quality]
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L"))
        for factor in (1.7, 5.0):
            size = (max(1, round(grey.shape[1] / factor)), max(1, round(grey.shape[0] / factor)))
            out[f"fold:{path.name}:{factor}"] = list(pdq_from_luma(grey, resize_to=size))
    for i, plane in enumerate(_planes()):
        out[f"plane:{i}:{plane.shape}"] = list(pdq_from_luma(plane))
    return out


def main() -> None:
    info = np.lib.introspect.opt_func_info(func_name="^add$")
    target = info.get("add", {}).get("fff", {}).get("current", "unknown")
    print(json.dumps({"add_fff": target, "hashes": corpus()}, sort_keys=True))


if __name__ == "__main__":
    main()
