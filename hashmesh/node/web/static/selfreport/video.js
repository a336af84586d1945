/*
 * vPDQ of a video on the person's device: the browser decodes the file through a <video>
 * element (a blob: URL of the chosen file, never uploaded), one frame a second is drawn on
 * a canvas and hashed with the page's PDQ (pdq.js), as Meta's vpdq samples and hashes
 * frames: at their stored size, no thumbnail first.
 *
 * Orientation: a phone stores a portrait video as landscape frames and a rotation in the
 * MP4/MOV track header; browsers draw the frames turned upright, Meta's vpdq (libavcodec)
 * and the node hash them as stored, 90 degrees apart: ~128 bits. The page reads the
 * rotation from the file (videoTrack) and turns each frame back before hashing it, as it
 * ignores a JPEG's orientation tag; only the preview is upright.
 *
 * Colour: Meta's vpdq converts each frame's YUV to RGB with swscale's default, BT.601,
 * whatever the stream declares, then takes PDQ's BT.601 luma: the stream's own Y. A
 * browser converts with the stream's declared matrix, and Chromium with BT.709 when none
 * is declared (all of Meta's samples): BT.601 luma of those RGB values lies 10-18 bits
 * from Meta's on the padded sample. So the luma is taken with the weights of the matrix the
 * browser used (the file's `colr` box, else BT.709), which gives back Y (2-8 bits).
 *
 * Frame numbers: the browser tells the time of a frame, not its number, so a frame at t
 * seconds is numbered round(t x the track's frame rate) from the same header (its sample
 * count over its duration), t itself where the file has no such header (WebM).
 *
 * Frames are found by seeking to t = 0, 1, 2, ... seconds and waiting for `seeked`: the
 * element then shows the frame on screen at t, the frame Meta's vpdq keeps for that second
 * (within one frame interval). Frames under the quality floor are left out: matching
 * ignores them (Meta's rule keeps quality >= 50), and they are the blank and fading frames
 * that would match unrelated videos.
 */
(function (root) {
  "use strict";
  const PDQ = root.HashmeshPDQ;
  const WAIT_MS = 20000; // a seek or the metadata taking longer than this: not decodable here
  const MAX_CANVAS_PIXELS = 16 * 1000 * 1000;
  const FRAME_WAIT_MS = 2000; // no frame callback this long after `seeked`: the browser sends none

  function once(el, ok, ms) {
    return new Promise((resolve, reject) => {
      const done = (fn, arg) => { clearTimeout(timer); el.removeEventListener(ok, onOk); el.removeEventListener("error", onErr); fn(arg); };
      const onOk = () => done(resolve);
      const onErr = () => done(reject, Object.assign(new Error("undecodable video"), { undecodable: true }));
      const timer = setTimeout(() => done(reject, Object.assign(new Error("video decoding timed out"), { undecodable: true })), ms);
      el.addEventListener(ok, onOk);
      el.addEventListener("error", onErr);
    });
  }

  /** A small picture of the frame for the person (on this device only), as the page's
   * picture previews: 144 px, cropped to a square. */
  function thumbnail(source, w, h) {
    const size = 144;
    const canvas = document.createElement("canvas");
    canvas.width = canvas.height = size;
    const s = Math.max(size / w, size / h);
    canvas.getContext("2d").drawImage(source, (size - w * s) / 2, (size - h * s) / 2, w * s, h * s);
    return canvas;
  }

  const MAX_MOOV = 64 * 1024 * 1024; // a 10-minute phone video's index is a few MB
  const MAX_BOXES = 10000;

  function u32(b, i) { return ((b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]) >>> 0; }
  function i32(b, i) { return u32(b, i) | 0; }
  function fourcc(b, i) { return String.fromCharCode(b[i], b[i + 1], b[i + 2], b[i + 3]); }

  /** The child boxes of an ISO BMFF box's content b[start..end): [type, from, to]. */
  function children(b, start, end) {
    const out = [];
    for (let i = start; i + 8 <= end && out.length < MAX_BOXES;) {
      let size = u32(b, i), head = 8;
      if (size === 1) { size = u32(b, i + 8) * 2 ** 32 + u32(b, i + 12); head = 16; }
      else if (size === 0) size = end - i;
      if (size < head || i + size > end) break;
      out.push([fourcc(b, i + 4), i + head, i + size]);
      i += size;
    }
    return out;
  }

  const BT709 = [0.2126, 0.7152, 0.0722];
  const BT601 = [0.299, 0.587, 0.114];
  const BT2020 = [0.2627, 0.678, 0.0593];
  //  ISO/IEC 23091-2 matrix coefficients: 1 BT.709, 5 and 6 BT.601, 9 and 10 BT.2020.
  const MATRICES = { 1: BT709, 5: BT601, 6: BT601, 9: BT2020, 10: BT2020 };

  /** The first video track of an MP4 or MOV file (its moov box): `rotation`, the clockwise
   * degrees (0, 90, 180, 270) its matrix turns the stored frames, `fps`, its frames a
   * second (0 if unknown), and `matrix`, the colour matrix its sample entry declares (0 if
   * none); all 0 for any other file or an unreadable one. */
  async function videoTrack(file) {
    const none = { rotation: 0, fps: 0, matrix: 0 };
    let off = 0;
    for (let n = 0; off + 16 <= file.size && n < MAX_BOXES; n++) {
      const h = new Uint8Array(await file.slice(off, off + 16).arrayBuffer());
      let size = u32(h, 0);
      if (size === 1) size = u32(h, 8) * 2 ** 32 + u32(h, 12);
      else if (size === 0) size = file.size - off;
      if (size < 8) return none;
      if (fourcc(h, 4) === "moov") {
        if (size > MAX_MOOV) return none;
        const b = new Uint8Array(await file.slice(off, off + size).arrayBuffer());
        return trackIn(b, u32(h, 0) === 1 ? 16 : 8, b.length) || none;
      }
      off += size;
    }
    return none;
  }

  function find(b, from, to, path) {
    let box = [null, from, to];
    for (const name of path) {
      box = children(b, box[1], box[2]).find((c) => c[0] === name);
      if (!box) return null;
    }
    return box;
  }

  function trackIn(b, start, end) {
    for (const [type, from, to] of children(b, start, end)) {
      if (type !== "trak") continue;
      const hdlr = find(b, from, to, ["mdia", "hdlr"]);
      const tkhd = find(b, from, to, ["tkhd"]);
      if (!hdlr || hdlr[2] - hdlr[1] < 12 || fourcc(b, hdlr[1] + 8) !== "vide" || !tkhd) continue;
      const m = tkhd[1] + (b[tkhd[1]] === 1 ? 36 : 24) + 16;
      if (m + 36 > tkhd[2]) continue;
      const degrees = Math.round((Math.atan2(i32(b, m + 4), i32(b, m)) * 180) / Math.PI / 90) * 90;
      return { rotation: (degrees + 360) % 360, fps: frameRate(b, from, to), matrix: colourMatrix(b, from, to) };
    }
    return null;
  }

  /** The matrix coefficients of the first sample entry's `colr` box (nclx or nclc). */
  function colourMatrix(b, from, to) {
    const stsd = find(b, from, to, ["mdia", "minf", "stbl", "stsd"]);
    if (!stsd) return 0;
    const entry = children(b, stsd[1] + 8, stsd[2])[0];
    if (!entry) return 0;
    const colr = children(b, entry[1] + 78, entry[2]).find((c) => c[0] === "colr"); // after a visual sample entry's fixed fields
    if (!colr || colr[2] - colr[1] < 10) return 0;
    const kind = fourcc(b, colr[1]);
    return kind === "nclx" || kind === "nclc" ? (b[colr[1] + 8] << 8) | b[colr[1] + 9] : 0;
  }

  /** Samples over seconds of the track's sample table (stts) and media header (mdhd). */
  function frameRate(b, from, to) {
    const mdhd = find(b, from, to, ["mdia", "mdhd"]);
    const stts = find(b, from, to, ["mdia", "minf", "stbl", "stts"]);
    if (!mdhd || !stts || mdhd[2] - mdhd[1] < 24 || stts[2] - stts[1] < 8) return 0;
    const timescale = u32(b, mdhd[1] + (b[mdhd[1]] === 1 ? 20 : 12));
    let samples = 0, ticks = 0;
    const entries = Math.min(u32(b, stts[1] + 4), (stts[2] - stts[1] - 8) / 8);
    for (let i = 0, p = stts[1] + 8; i < entries; i++, p += 8) {
      samples += u32(b, p);
      ticks += u32(b, p) * u32(b, p + 4);
    }
    return timescale && ticks ? (samples * timescale) / ticks : 0;
  }

  /** Seek to `t` and wait until its frame is the one drawn: `seeked` alone is not enough,
   * Chromium sometimes still draws a frame from elsewhere in the video for a moment after
   * it (about one seek in 200, 100 bits away), so the frame is awaited through
   * requestVideoFrameCallback too where the browser has it and it answers. */
  async function seek(video, t, state) {
    const wait = once(video, "seeked", WAIT_MS);
    let presented = null;
    if (state.frameCallbacks && video.requestVideoFrameCallback) {
      presented = new Promise((resolve) => video.requestVideoFrameCallback(() => resolve(true)));
    }
    video.currentTime = t;
    await wait;
    if (presented) {
      const late = new Promise((resolve) => setTimeout(() => resolve(false), FRAME_WAIT_MS));
      if (!(await Promise.race([presented, late]))) state.frameCallbacks = false;
    }
  }

  /**
   * Hash `file`: { frames: [{ number, t, quality, pdq }], duration, width, height,
   * rotation, fps, truncated }.
   * `maxSeconds` bounds the frames (seconds 0 .. maxSeconds - 1 only); `onProgress(done,
   * total)` after each frame; `minQuality` drops the frames below it; `preview(canvas)`
   * gets a thumbnail of the first frame kept.
   */
  async function hashVideo(file, options) {
    const { maxSeconds, minQuality, onProgress, preview } = options;
    const url = URL.createObjectURL(file);
    const video = document.createElement("video");
    video.muted = true;
    video.preload = "auto";
    video.playsInline = true;
    try {
      const loaded = once(video, "loadeddata", WAIT_MS);
      video.src = url;
      await loaded;
      let duration = video.duration;
      if (!Number.isFinite(duration)) {
        // Some WebM files carry no duration: seeking far past the end makes the browser find it.
        await seek(video, 1e9, { frameCallbacks: false });
        duration = video.duration;
      }
      const w = video.videoWidth, h = video.videoHeight; // upright, as the browser shows it
      if (!w || !h || !Number.isFinite(duration) || duration <= 0) throw Object.assign(new Error("no picture in this video"), { undecodable: true });
      if (PDQ.tooSmall(w, h)) throw Object.assign(new RangeError("too small"), { tooSmall: true });
      const { rotation, fps, matrix } = await videoTrack(file);
      const weights = MATRICES[matrix] || BT709;
      const scale = w * h <= MAX_CANVAS_PIXELS ? 1 : Math.sqrt(MAX_CANVAS_PIXELS / (w * h));
      const dw = Math.max(1, Math.floor(w * scale)), dh = Math.max(1, Math.floor(h * scale));
      const turned = rotation === 90 || rotation === 270;
      const cw = turned ? dh : dw, ch = turned ? dw : dh; // the stored frame's shape
      const canvas = document.createElement("canvas");
      canvas.width = cw; canvas.height = ch;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      // Undo the rotation the browser applied: turn the upright frame back by -rotation.
      if (rotation === 90) { ctx.translate(0, dw); ctx.rotate(-Math.PI / 2); }
      else if (rotation === 180) { ctx.translate(dw, dh); ctx.rotate(Math.PI); }
      else if (rotation === 270) { ctx.translate(dh, 0); ctx.rotate(Math.PI / 2); }
      const seconds = Math.ceil(duration);
      const total = Math.min(seconds, maxSeconds);
      const frames = [];
      const state = { frameCallbacks: true };
      let number = -1;
      for (let t = 0; t < total; t++) {
        await seek(video, t, state);
        ctx.drawImage(video, 0, 0, dw, dh);
        const img = PDQ.rgbaToRgb(ctx.getImageData(0, 0, cw, ch).data, cw, ch);
        const { hash, quality } = PDQ.pdqFromRGB(img, weights);
        if (quality >= minQuality) {
          if (!frames.length && preview) preview(thumbnail(video, w, h));
          number = Math.max(number + 1, fps >= 1 ? Math.round(t * fps) : t);
          frames.push({ number, t, quality, pdq: hash });
        }
        if (onProgress) onProgress(t + 1, total);
      }
      canvas.width = canvas.height = 0;
      return { frames, duration, width: w, height: h, rotation, fps, truncated: seconds > maxSeconds };
    } finally {
      video.removeAttribute("src");
      video.load();
      URL.revokeObjectURL(url);
    }
  }

  root.HashmeshVideo = { hashVideo };
})(globalThis);
