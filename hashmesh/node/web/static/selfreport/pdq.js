/*
 * PDQ (Meta's perceptual image hash) and the image reduction that precedes it, in plain
 * JavaScript, so that a picture is hashed on the person's own device and never uploaded.
 *
 * Written from the algorithm of Meta's reference (ThreatExchange pdq/python/pdqhashing):
 * luminance 0.299/0.587/0.114, two X/Y passes of Jarosz box filters whose window is
 * ceil(dimension / 128), decimation to 64x64, a gradient-based quality, the 16x16 corner
 * of the 64x64 DCT and a threshold at the median (the 128th smallest value, as Torben's
 * algorithm in the reference returns).
 *
 * Why the reduction is here too: the reference (and this node's own hashing, hashmesh/node/hashing/hasher.py)
 * hashes Pillow's `thumbnail((512, 512))` of the picture. Pillow decodes large JPEGs in
 * "draft" mode (the JPEG decoder scales by 1/2, 1/4 or 1/8 while decoding), reduces by an
 * integer factor when the picture is still more than twice the target, then resamples
 * with a bicubic filter. Reproducing those steps keeps the browser's hash within a few
 * bits of the hash platforms compute with pdqhash; the browser's own canvas scaling
 * differs between browsers and would drift further.
 *
 * Works in browsers (globalThis.HashmeshPDQ) and in Node.js (module.exports) for testing.
 */
(function (root) {
  "use strict";

  const THUMBNAIL = 512;
  const DRAFT_TARGET = 1024; // thumbnail size times Pillow's reducing_gap (2.0)

  /** Pillow's thumbnail size: fit in max x max, keep the aspect ratio, round the way it does. */
  function thumbnailSize(w, h, max) {
    max = max || THUMBNAIL;
    if (max >= w && max >= h) return [w, h];
    const aspect = w / h;
    let x = max, y = max;
    const pick = (n, key) => Math.max(key(Math.floor(n)) <= key(Math.ceil(n)) ? Math.floor(n) : Math.ceil(n), 1);
    if (x / y >= aspect) x = pick(y * aspect, (n) => Math.abs(aspect - n / y));
    else y = pick(x / aspect, (n) => (n === 0 ? 0 : Math.abs(aspect - x / n)));
    return [x, y];
  }

  /** The JPEG draft scale Pillow would pick (8, 4, 2 or 1): the picture stays >= 1024 px. */
  function draftScale(w, h) {
    const scale = Math.min(Math.floor(w / DRAFT_TARGET), Math.floor(h / DRAFT_TARGET));
    for (const a of [8, 4, 2]) if (scale >= a) return a;
    return 1;
  }

  /** Average fx x fy cells (edge cells average what exists), rounding like Image.reduce. */
  function reduce(src, w, h, fx, fy) {
    const ow = Math.ceil(w / fx), oh = Math.ceil(h / fy);
    const out = new Uint8ClampedArray(ow * oh * 3);
    for (let oy = 0; oy < oh; oy++) {
      const y0 = oy * fy, y1 = Math.min(h, y0 + fy);
      for (let ox = 0; ox < ow; ox++) {
        const x0 = ox * fx, x1 = Math.min(w, x0 + fx);
        let r = 0, g = 0, b = 0;
        for (let y = y0; y < y1; y++) {
          let p = (y * w + x0) * 3;
          for (let x = x0; x < x1; x++, p += 3) { r += src[p]; g += src[p + 1]; b += src[p + 2]; }
        }
        const n = (y1 - y0) * (x1 - x0), o = (oy * ow + ox) * 3;
        out[o] = Math.floor((r + n / 2) / n); out[o + 1] = Math.floor((g + n / 2) / n); out[o + 2] = Math.floor((b + n / 2) / n);
      }
    }
    return { data: out, width: ow, height: oh };
  }

  function bicubic(x) {
    const a = -0.5;
    x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  }

  const PRECISION_BITS = 32 - 8 - 2;
  const ONE = 2 ** PRECISION_BITS;

  /** Pillow's resampling coefficients (fixed point, as for 8-bit images) for one axis. */
  function coefficients(inSize, in0, in1, outSize) {
    const scale = (in1 - in0) / outSize;
    const filterscale = Math.max(scale, 1);
    const support = 2 * filterscale;
    const bounds = new Int32Array(outSize * 2);
    const weights = [];
    for (let xx = 0; xx < outSize; xx++) {
      const center = in0 + (xx + 0.5) * scale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      const k = new Float64Array(xmax);
      let ww = 0;
      for (let x = 0; x < xmax; x++) { const v = bicubic((x + xmin - center + 0.5) / filterscale); k[x] = v; ww += v; }
      const fixed = new Float64Array(xmax);
      for (let x = 0; x < xmax; x++) {
        const v = ww !== 0 ? k[x] / ww : k[x];
        fixed[x] = Math.trunc(v < 0 ? v * ONE - 0.5 : v * ONE + 0.5);
      }
      bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
      weights.push(fixed);
    }
    return { bounds, weights };
  }

  function clip8(sum) {
    const v = Math.floor((sum + ONE / 2) / ONE);
    return v < 0 ? 0 : v > 255 ? 255 : v;
  }

  /** Bicubic resize of the box (0, 0, bw, bh) of an RGB image to tw x th, as Pillow does it. */
  function resample(img, tw, th, bw, bh) {
    const { data, width: w, height: h } = img;
    const hx = coefficients(w, 0, bw, tw);
    const tmp = new Uint8ClampedArray(tw * h * 3);
    for (let y = 0; y < h; y++) {
      for (let xx = 0; xx < tw; xx++) {
        const xmin = hx.bounds[xx * 2], n = hx.bounds[xx * 2 + 1], k = hx.weights[xx];
        let r = 0, g = 0, b = 0;
        let p = (y * w + xmin) * 3;
        for (let x = 0; x < n; x++, p += 3) { r += data[p] * k[x]; g += data[p + 1] * k[x]; b += data[p + 2] * k[x]; }
        const o = (y * tw + xx) * 3;
        tmp[o] = clip8(r); tmp[o + 1] = clip8(g); tmp[o + 2] = clip8(b);
      }
    }
    const vy = coefficients(h, 0, bh, th);
    const out = new Uint8ClampedArray(tw * th * 3);
    for (let yy = 0; yy < th; yy++) {
      const ymin = vy.bounds[yy * 2], n = vy.bounds[yy * 2 + 1], k = vy.weights[yy];
      for (let x = 0; x < tw; x++) {
        let r = 0, g = 0, b = 0;
        for (let y = 0; y < n; y++) {
          const p = ((ymin + y) * tw + x) * 3;
          r += tmp[p] * k[y]; g += tmp[p + 1] * k[y]; b += tmp[p + 2] * k[y];
        }
        const o = (yy * tw + x) * 3;
        out[o] = clip8(r); out[o + 1] = clip8(g); out[o + 2] = clip8(b);
      }
    }
    return { data: out, width: tw, height: th };
  }

  /**
   * Pillow's thumbnail((512, 512)) of an RGB image. `draft` is the scale the decoder already
   * applied (see draftScale), so the picture's box is (0, 0, w / draft, h / draft) in the
   * original's proportions, exactly as Pillow passes it on to resize.
   */
  function thumbnail(img, origW, origH, draft) {
    const [tw, th] = thumbnailSize(origW, origH);
    if (tw === img.width && th === img.height && draft === 1) return img;
    let bw = origW / draft, bh = origH / draft;
    const fx = Math.max(1, Math.trunc(bw / tw / 2)), fy = Math.max(1, Math.trunc(bh / th / 2));
    if (fx > 1 || fy > 1) {
      img = reduce(img.data, img.width, img.height, fx, fy);
      bw /= fx; bh /= fy;
    }
    return resample(img, tw, th, bw, bh);
  }

  // -- PDQ proper ----------------------------------------------------------------------

  const DCT = (() => {
    const d = [];
    for (let i = 0; i < 16; i++) {
      const row = new Float64Array(64);
      for (let j = 0; j < 64; j++) row[j] = Math.cos((Math.PI / 2 / 64) * (i + 1) * (2 * j + 1));
      d.push(row);
    }
    return d;
  })();

  function windowSize(dimension) { return Math.trunc((dimension + 127) / 128); }

  function box1D(input, inOff, output, outOff, length, stride, full) {
    const half = Math.trunc((full + 2) / 2);
    const p1 = half - 1, p2 = full - half + 1, p3 = length - full, p4 = half - 1;
    let li = 0, ri = 0, oi = 0, sum = 0, n = 0;
    for (let i = 0; i < p1; i++) { sum += input[inOff + ri]; n++; ri += stride; }
    for (let i = 0; i < p2; i++) { sum += input[inOff + ri]; n++; output[outOff + oi] = sum / n; ri += stride; oi += stride; }
    for (let i = 0; i < p3; i++) {
      sum += input[inOff + ri]; sum -= input[inOff + li];
      output[outOff + oi] = sum / n; li += stride; ri += stride; oi += stride;
    }
    for (let i = 0; i < p4; i++) { sum -= input[inOff + li]; n--; output[outOff + oi] = sum / n; li += stride; oi += stride; }
  }

  const BT601 = [0.299, 0.587, 0.114];

  /** PDQ of an RGB image (Uint8 data, 3 bytes a pixel): { hash: 64 hex, quality: 0-100 }.
   * `weights` are the luminance weights, PDQ's BT.601 ones unless a caller (video.js) must
   * undo a browser's conversion with another matrix. */
  function pdqFromRGB(img, weights) {
    const { data, width: cols, height: rows } = img;
    if (tooSmall(cols, rows)) throw new RangeError("picture under " + MIN_SIDE + " px per side");
    const [kr, kg, kb] = weights || BT601;
    const buf1 = new Float64Array(rows * cols), buf2 = new Float64Array(rows * cols);
    for (let i = 0, p = 0; i < rows * cols; i++, p += 3) buf1[i] = kr * data[p] + kg * data[p + 1] + kb * data[p + 2];
    const wr = windowSize(cols), wc = windowSize(rows);
    for (let rep = 0; rep < 2; rep++) {
      for (let i = 0; i < rows; i++) box1D(buf1, i * cols, buf2, i * cols, cols, 1, wr);
      for (let j = 0; j < cols; j++) box1D(buf2, j, buf1, j, rows, cols, wc);
    }
    const a = new Float64Array(64 * 64);
    for (let i = 0; i < 64; i++) {
      const ini = Math.trunc(((i + 0.5) * rows) / 64);
      for (let j = 0; j < 64; j++) a[i * 64 + j] = buf1[ini * cols + Math.trunc(((j + 0.5) * cols) / 64)];
    }
    let gradient = 0;
    for (let i = 0; i < 63; i++) for (let j = 0; j < 64; j++) gradient += Math.abs(Math.trunc(((a[i * 64 + j] - a[(i + 1) * 64 + j]) * 100) / 255));
    for (let i = 0; i < 64; i++) for (let j = 0; j < 63; j++) gradient += Math.abs(Math.trunc(((a[i * 64 + j] - a[i * 64 + j + 1]) * 100) / 255));
    const quality = Math.min(100, Math.trunc(gradient / 90));
    const t = new Float64Array(16 * 64);
    for (let i = 0; i < 16; i++) {
      const di = DCT[i];
      for (let j = 0; j < 64; j++) { let s = 0; for (let k = 0; k < 64; k++) s += di[k] * a[k * 64 + j]; t[i * 64 + j] = s; }
    }
    const b = new Float64Array(256);
    for (let i = 0; i < 16; i++) for (let j = 0; j < 16; j++) {
      let s = 0; const dj = DCT[j];
      for (let k = 0; k < 64; k++) s += t[i * 64 + k] * dj[k];
      b[i * 16 + j] = s;
    }
    const median = Float64Array.from(b).sort()[127];
    // Bit k (k = i * 16 + j) is worth 2**k: the hex string is the 256-bit number, as
    // Meta's Hash256 prints its sixteen 16-bit words from the last to the first.
    const nibbles = new Array(64).fill(0);
    for (let k = 0; k < 256; k++) if (b[k] > median) nibbles[63 - (k >> 2)] |= 1 << (k & 3);
    return { hash: nibbles.map((n) => n.toString(16)).join(""), quality };
  }

  /** RGBA pixels (as from a canvas) to RGB, transparent parts on white (as hashmesh/node/hashing/hasher.py). */
  function rgbaToRgb(rgba, width, height) {
    const out = new Uint8ClampedArray(width * height * 3);
    for (let i = 0, p = 0, o = 0; i < width * height; i++, p += 4, o += 3) {
      const al = rgba[p + 3];
      if (al === 255) { out[o] = rgba[p]; out[o + 1] = rgba[p + 1]; out[o + 2] = rgba[p + 2]; }
      else {
        const f = al / 255;
        out[o] = Math.round(rgba[p] * f + 255 * (1 - f)); out[o + 1] = Math.round(rgba[p + 1] * f + 255 * (1 - f)); out[o + 2] = Math.round(rgba[p + 2] * f + 255 * (1 - f));
      }
    }
    return { data: out, width, height };
  }

  /* Meta's reference refuses pictures under 5 px a side: their hash is noise (or all
   * zeros) that would match every plain picture. */
  const MIN_SIDE = 5;
  function tooSmall(w, h) { return w < MIN_SIDE || h < MIN_SIDE; }

  /* EXIF orientation. PDQ is of the stored pixels (as Pillow, pdqhash, HMA and the node hash
   * them), but browsers turn a picture by its EXIF orientation whatever createImageBitmap is
   * told (Chromium treats imageOrientation "none" as "from-image"), and a portrait phone photo
   * turned hashes ~128 bits from everyone else's. So the orientation tag itself is set to 1
   * (upright) in a copy of the file's first bytes before the browser decodes it. */

  /** In a TIFF block (EXIF's payload), set IFD0's Orientation to 1; true when it changed. */
  function uprightTiff(b, start, end) {
    if (end - start < 8) return false;
    const le = b[start] === 0x49 && b[start + 1] === 0x49;
    if (!le && !(b[start] === 0x4d && b[start + 1] === 0x4d)) return false;
    const u16 = (o) => (le ? b[o] | (b[o + 1] << 8) : (b[o] << 8) | b[o + 1]);
    const u32 = (o) => (le ? (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 16777216 : b[o] * 16777216 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]));
    const ifd = start + u32(start + 4);
    if (ifd + 2 > end) return false;
    const count = u16(ifd);
    for (let i = 0, e = ifd + 2; i < count && e + 12 <= end; i++, e += 12) {
      if (u16(e) !== 0x0112 || u16(e + 2) !== 3) continue;
      if (u16(e + 8) === 1) return false;
      b[e + 8] = le ? 1 : 0; b[e + 9] = le ? 0 : 1;
      return true;
    }
    return false;
  }

  let crcTable = null;
  function crc32(b, start, end) {
    if (!crcTable) {
      crcTable = new Int32Array(256);
      for (let n = 0; n < 256; n++) { let c = n; for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1; crcTable[n] = c; }
    }
    let c = -1;
    for (let i = start; i < end; i++) c = crcTable[(c ^ b[i]) & 0xff] ^ (c >>> 8);
    return (c ^ -1) >>> 0;
  }

  /**
   * A copy of `head` (a file's first bytes) whose EXIF orientation says upright, or null
   * when there is nothing to change. JPEG (APP1 "Exif"), PNG (eXIf, its CRC redone) and
   * WebP (EXIF chunk): the formats whose orientation browsers apply.
   */
  function withoutOrientation(head) {
    const b = Uint8Array.from(head), n = b.length;
    const be32 = (o) => b[o] * 16777216 + ((b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]);
    let changed = false;
    if (b[0] === 0xff && b[1] === 0xd8) {
      for (let o = 2; o + 4 <= n && b[o] === 0xff; ) {
        const marker = b[o + 1];
        if (marker === 0xda || marker === 0xd9) break; // scan data: no more metadata
        const length = (b[o + 2] << 8) | b[o + 3];
        if (marker === 0xe1 && o + 10 <= n && String.fromCharCode(...b.subarray(o + 4, o + 10)) === "Exif\0\0") {
          changed = uprightTiff(b, o + 10, Math.min(n, o + 2 + length)) || changed;
        }
        o += 2 + length;
      }
    } else if (n >= 8 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) {
      for (let o = 8; o + 12 <= n; ) {
        const length = be32(o), type = String.fromCharCode(...b.subarray(o + 4, o + 8));
        if (type === "IDAT" || type === "IEND" || o + 12 + length > n) break;
        if (type === "eXIf" && uprightTiff(b, o + 8, o + 8 + length)) {
          const crc = crc32(b, o + 4, o + 8 + length), at = o + 8 + length;
          b[at] = crc >>> 24; b[at + 1] = (crc >>> 16) & 0xff; b[at + 2] = (crc >>> 8) & 0xff; b[at + 3] = crc & 0xff;
          changed = true;
        }
        o += 12 + length;
      }
    } else if (n >= 12 && String.fromCharCode(...b.subarray(0, 4)) === "RIFF" && String.fromCharCode(...b.subarray(8, 12)) === "WEBP") {
      for (let o = 12; o + 8 <= n; ) {
        const type = String.fromCharCode(...b.subarray(o, o + 4));
        const length = b[o + 4] | (b[o + 5] << 8) | (b[o + 6] << 16) | (b[o + 7] * 16777216);
        if (type === "EXIF") {
          let start = o + 8;
          if (String.fromCharCode(...b.subarray(start, start + 6)) === "Exif\0\0") start += 6;
          changed = uprightTiff(b, start, Math.min(n, o + 8 + length)) || changed;
        }
        o += 8 + length + (length & 1);
      }
    }
    return changed ? b : null;
  }

  function hamming(x, y) {
    let d = 0;
    for (let i = 0; i < 64; i++) { let v = parseInt(x[i], 16) ^ parseInt(y[i], 16); while (v) { d += v & 1; v >>= 1; } }
    return d;
  }

  const api = { MIN_SIDE, tooSmall, thumbnailSize, draftScale, reduce, resample, thumbnail, pdqFromRGB, rgbaToRgb, withoutOrientation, hamming };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.HashmeshPDQ = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
