"""PDQ of a luma plane, as Meta's reference computes it, in a few matrix products.

Why not the pdqhash binding: it takes RGB only and computes the luma in float64 numpy
before its C++ runs, so a grey picture (a JPEG decoded straight to its Y plane) would be
expanded to RGB and converted back; on a 512-pixel thumbnail that is half of its ~2.2 ms.

Why matrices: every step before the DCT is linear. Meta's hasher runs two passes of
Jarosz box filters along the rows and the columns of the whole plane, then keeps 64x64
samples. Only those samples matter, so the filters composed with the decimation are two
small banded matrices (64 x rows and 64 x columns, each row a tent a few pixels wide) and
the 64x64 buffer is ``rows_matrix @ luma @ cols_matrix.T``. The products are done band by
band (a handful of gathers and multiply-adds, ~0.1 ms at 512 px) rather than by BLAS:
a dense product wastes most of its work on zeros, and OpenBLAS threads its products, which
on a process pinned to one core (or a container with a CPU quota) ran 4x slower than one
thread. The bands depend on the plane's size alone and are cached.

Why every sum has a fixed order: hashes are exchanged, so the same plane must give the same
bits on every participant's processor. Each step is an elementwise IEEE operation (correctly
rounded, whatever SIMD width numpy dispatches) or a sum taken first to last; nothing goes
through BLAS, whose kernels sum in an order chosen per processor (the DCT by OpenBLAS put
one smooth picture 12 bits apart between two machines). The DCT, the quality and the median
are Meta's dct64To16, quality metric and Torben, operation for operation. The box filters
are not: their weights are formed once per size, where Meta's running sums round along each
row, so on planes a few pixels thin (where most coefficients are float noise) a hash can
differ from Meta's by a few bits; docs/protocol.md says why determinism was chosen there.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

__all__ = ["DIHEDRAL", "pdq_buffer", "pdq_dihedral_from_luma", "pdq_from_luma"]

_DIM = 64
_MIN_SIDE = 5  # Meta's MIN_HASHABLE_DIM: smaller planes hash to zero with quality 0


def _window(dimension: int) -> int:
    """Meta's computeJaroszFilterWindowSize(dimension, 64): ceil(dimension / 128)."""
    return (dimension + 2 * _DIM - 1) // (2 * _DIM)


def _box_bounds(length: int, window: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """First and one-past-last input index that Meta's box1DFloat averages for each output.

    Its running sum starts with ``half = (window + 2) // 2`` samples and keeps ``window``;
    at the edges the window is cut, and the mean is over what remains.
    """
    half = (window + 2) // 2
    k = np.arange(length, dtype=np.int64)
    lo = np.maximum(0, k + half - window)
    hi = np.minimum(length, k + half)
    return lo, hi


Band = tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]


def _sum_in_order(values: npt.NDArray[np.float64], axis: int) -> npt.NDArray[np.float64]:
    """A sum taken first to last along `axis`: `sum` may pair terms by SIMD width."""
    total: npt.NDArray[np.float64] = np.take(np.add.accumulate(values, axis=axis), -1, axis=axis)
    return total


@functools.lru_cache(maxsize=1024)
def _jarosz_band(length: int) -> Band:
    """The two box passes along one axis and the 64-point decimation, as a band matrix.

    Returns (64, width) input indices and weights: sample ``i`` of the filtered axis is
    ``sum(weights[i] * axis[index[i]])``. Sample p averages the first pass over
    [lo[p], hi[p]), each of which averaged the input over [lo[j], hi[j]); the rows are built
    by broadcasting over (sample, first-pass position, input position).
    """
    window = _window(length)
    lo, hi = _box_bounds(length, window)
    inv = 1.0 / (hi - lo).astype(np.float64)
    picks = ((np.arange(_DIM) + 0.5) * length / _DIM).astype(np.int64)
    first_pass = lo[picks][:, None] + np.arange(window)  # (64, window), cut at hi[picks]
    used = first_pass < hi[picks][:, None]
    first_pass = np.minimum(first_pass, length - 1)
    pass_weight = np.where(used, inv[picks][:, None] * inv[first_pass], 0.0)
    first = lo[lo[picks]]
    width = int((hi[hi[picks] - 1] - first).max())
    index = first[:, None] + np.arange(width)  # (64, width)
    covers = (lo[first_pass][:, :, None] <= index[:, None, :]) & (
        index[:, None, :] < hi[first_pass][:, :, None]
    )
    weights = _sum_in_order(pass_weight[:, :, None] * covers, axis=1)
    return np.minimum(index, length - 1), weights


def _bilinear_band(length: int, size: int) -> Band:
    """Pillow's BILINEAR resize of an axis from `length` to `size` samples (precompute_coeffs).

    The triangle is widened by the reduction ratio, so a reduction averages (antialiases);
    each output's weights are normalised to sum to one.
    """
    scale = length / size
    support = max(scale, 1.0)  # the triangle's support (1) times the filter scale
    centre = (np.arange(size) + 0.5) * scale
    lo = np.maximum(0, np.trunc(centre - support + 0.5).astype(np.int64))
    hi = np.minimum(length, np.trunc(centre + support + 0.5).astype(np.int64))
    index = lo[:, None] + np.arange(math.ceil(support) * 2 + 1)
    weights = np.maximum(0.0, 1.0 - np.abs((index - centre[:, None] + 0.5) / support))
    weights = np.where(index < hi[:, None], weights, 0.0)
    total = _sum_in_order(weights, axis=1)[:, None]
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total != 0)
    return np.minimum(index, length - 1), weights


@functools.lru_cache(maxsize=2048)
def _band(length: int, size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The filter band for an axis of `length` samples resized to `size` before hashing."""
    if size == length:
        index, weights = _jarosz_band(length)
    else:
        outer, outer_w = _jarosz_band(size)
        inner, inner_w = _bilinear_band(length, size)
        # Compose the bands: scatter every (sample, resized pixel, input pixel) product.
        dense = np.zeros((_DIM, length), dtype=np.float64)
        rows = np.broadcast_to(np.arange(_DIM)[:, None, None], (*outer.shape, inner.shape[1]))
        np.add.at(dense, (rows, inner[outer]), outer_w[:, :, None] * inner_w[outer])
        nonzero = dense != 0
        first = nonzero.argmax(axis=1)
        last = length - 1 - nonzero[:, ::-1].argmax(axis=1)
        index = first[:, None] + np.arange(int((last - first).max()) + 1)
        inside = index <= last[:, None]
        index = np.minimum(index, length - 1)
        weights = np.where(inside, dense[np.arange(_DIM)[:, None], index], 0.0)
    band = (index, weights.astype(np.float32))
    band[0].flags.writeable = False
    band[1].flags.writeable = False
    return band


def _dct_matrix() -> npt.NDArray[np.float32]:
    """Meta's dct_matrix_64: a float scale times a double cosine, rounded to float.

    Scalar `math.cos` (the C library's) rather than `np.cos`, whose float64 loop numpy
    dispatches to SIMD kernels that may round differently from one processor to another.
    """
    scale = float(np.float32(math.sqrt(2.0 / _DIM)))
    rows = [
        [scale * math.cos((math.pi / 2.0 / _DIM) * (i + 1) * (2 * j + 1)) for j in range(_DIM)]
        for i in range(16)
    ]
    return np.array(rows, dtype=np.float64).astype(np.float32)


_DCT = _dct_matrix()
_DCT.flags.writeable = False
_DCT_T = np.ascontiguousarray(_DCT.T)
_DCT_T.flags.writeable = False


def _dct64to16(buf: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """D @ buf @ D.T in float32, each sum accumulated k = 0..63 in order, as Meta's dct64To16.

    Not a BLAS product: OpenBLAS picks its kernel (and so its summation order) by processor,
    and on smooth pictures coefficients lie within rounding of the median, so the same picture
    hashed 12 bits apart on two machines. Each step below is one correctly rounded IEEE
    operation per element, whatever SIMD width numpy runs it at.
    """
    partial = np.zeros((16, _DIM), dtype=np.float32)  # T = D @ buf
    term = np.empty_like(partial)
    for k in range(_DIM):
        np.multiply(_DCT_T[k][:, None], buf[k], out=term)
        partial += term
    columns = np.ascontiguousarray(partial.T)
    out = np.zeros((16, 16), dtype=np.float32)  # T @ D.T
    small = np.empty_like(out)
    for k in range(_DIM):
        np.multiply(columns[k][:, None], _DCT_T[k], out=small)
        out += small
    return out


def _quality(buf: npt.NDArray[np.float32]) -> int:
    """Meta's image-domain quality: truncated gradients summed, / 90, at most 100."""
    dy = np.trunc((buf[:-1, :] - buf[1:, :]) * np.float32(100) / np.float32(255))
    dx = np.trunc((buf[:, :-1] - buf[:, 1:]) * np.float32(100) / np.float32(255))
    total = int(np.abs(dy).sum(dtype=np.float64)) + int(np.abs(dx).sum(dtype=np.float64))
    return min(100, total // 90)


def pdq_from_luma(
    luma: npt.NDArray[np.generic], resize_to: tuple[int, int] | None = None
) -> tuple[str, int]:
    """(PDQ hex, quality) of a 2-D luma plane (uint8 or float, 0-255).

    With `resize_to` (width, height), the plane is hashed as if first resized to that size
    with Pillow's BILINEAR filter (without the rounding to 8 bits): the resize is folded
    into the filter bands, which reads a JPEG draft once instead of resampling it.

    The hex string is the 256-bit number whose bit ``16 i + j`` is set when DCT coefficient
    (i, j) is above the median (the 128th smallest, as Meta's Torben selection returns).
    """
    buf = pdq_buffer(luma, resize_to)
    if buf is None:
        return "0" * 64, 0
    return _bits(_dct64to16(buf)), _quality(buf)


def _bits(dct: npt.NDArray[np.float32]) -> str:
    coeffs = dct.ravel()
    median = np.partition(coeffs, 127)[127]
    bits = (coeffs > median)[::-1]
    return np.packbits(bits).tobytes().hex()


DIHEDRAL = (
    "original",
    "rotate90",
    "rotate180",
    "rotate270",
    "flipx",
    "flipy",
    "flipplus1",
    "flipminus1",
)
"""Meta's names and order (pdqhashing.cpp, pdqhash.compute_dihedral) for the 8 variants."""

# Coefficient k of Meta's DCT is frequency k + 1: mirroring an axis negates its even k.
_MIRROR = np.where(np.arange(16) % 2 == 1, 1, -1).astype(np.float32)
_MIRROR_ROWS = _MIRROR[:, None]
_MIRROR_COLS = _MIRROR[None, :]


def _dihedral_dcts(a: npt.NDArray[np.float32]) -> tuple[npt.NDArray[np.float32], ...]:
    """Meta's dct16OriginalTo*: the DCT of each rotated or mirrored plane from the
    original's, by a transpose and sign flips (exact in float32, so bit for bit Meta's)."""
    return (
        a,
        (a * _MIRROR_COLS).T,
        a * _MIRROR_ROWS * _MIRROR_COLS,
        (a * _MIRROR_ROWS).T,
        a * _MIRROR_ROWS,
        a * _MIRROR_COLS,
        a.T,
        (a * _MIRROR_ROWS * _MIRROR_COLS).T,
    )


def pdq_dihedral_from_luma(
    luma: npt.NDArray[np.generic], resize_to: tuple[int, int] | None = None
) -> tuple[dict[str, str], int]:
    """({variant: PDQ hex}, quality) for the 8 rotations and mirrors of the plane, named
    as in `DIHEDRAL`; "original" is `pdq_from_luma`'s hash.

    Why from the DCT: rotating or mirroring the plane only transposes the 16x16 block and
    flips the sign of alternate frequencies, so the 7 extra hashes cost 7 medians, not 7
    filter passes; the quality is the original's (Meta's too).
    """
    buf = pdq_buffer(luma, resize_to)
    if buf is None:
        return dict.fromkeys(DIHEDRAL, "0" * 64), 0
    dcts = _dihedral_dcts(_dct64to16(buf))
    return {name: _bits(d) for name, d in zip(DIHEDRAL, dcts, strict=True)}, _quality(buf)


def pdq_buffer(
    luma: npt.NDArray[np.generic], resize_to: tuple[int, int] | None = None
) -> npt.NDArray[np.float32] | None:
    """The 64x64 float32 samples PDQ's DCT and quality read, or None under five pixels a side.

    Public so that the fold of a resize can be checked against the resized plane sample by
    sample: on a plane of a few pixels most DCT coefficients are rounding noise, and bits
    alone cannot tell a faithful fold from a wrong one.
    """
    if luma.ndim != 2 or luma.shape[0] < 1 or luma.shape[1] < 1:
        raise ValueError(f"luma must be a non-empty 2-D array, got shape {luma.shape}")
    rows, cols = luma.shape
    width, height = (cols, rows) if resize_to is None else resize_to
    if width < 1 or height < 1:
        raise ValueError(f"resize_to must be positive, got {resize_to}")
    if height < _MIN_SIDE or width < _MIN_SIDE:
        return None
    plane: npt.NDArray[np.uint8] | npt.NDArray[np.float32] = (
        luma if luma.dtype in (np.uint8, np.float32) else luma.astype(np.float32)  # type: ignore[assignment]
    )
    # Down the columns first: it gathers whole rows, ~2.5x faster than gathering columns.
    row_index, row_weights = _band(rows, height)
    down = plane[row_index[:, 0]] * row_weights[:, :1]
    for t in range(1, row_index.shape[1]):
        down += plane[row_index[:, t]] * row_weights[:, t : t + 1]
    col_index, col_weights = _band(cols, width)
    buf: npt.NDArray[np.float32] = down[:, col_index[:, 0]] * col_weights[:, 0]
    for t in range(1, col_index.shape[1]):
        buf += down[:, col_index[:, t]] * col_weights[:, t]
    return buf
