/*
 * vPDQ of a video on the person's device: the browser decodes the file through a <video>
 * element (a blob: URL of the chosen file, never uploaded), one frame a second is drawn on
 * a canvas and hashed with the page's PDQ (pdq.js), as Meta's vpdq samples and hashes
 * frames: at their stored size, no thumbnail first.
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

  async function seek(video, t) {
    const wait = once(video, "seeked", WAIT_MS);
    video.currentTime = t;
    await wait;
  }

  /**
   * Hash `file`: { frames: [{ t, quality, pdq }], duration, width, height, truncated }.
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
        await seek(video, 1e9);
        duration = video.duration;
      }
      const w = video.videoWidth, h = video.videoHeight;
      if (!w || !h || !Number.isFinite(duration) || duration <= 0) throw Object.assign(new Error("no picture in this video"), { undecodable: true });
      if (PDQ.tooSmall(w, h)) throw Object.assign(new RangeError("too small"), { tooSmall: true });
      const scale = w * h <= MAX_CANVAS_PIXELS ? 1 : Math.sqrt(MAX_CANVAS_PIXELS / (w * h));
      const cw = Math.max(1, Math.floor(w * scale)), ch = Math.max(1, Math.floor(h * scale));
      const canvas = document.createElement("canvas");
      canvas.width = cw; canvas.height = ch;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      const seconds = Math.ceil(duration);
      const total = Math.min(seconds, maxSeconds);
      const frames = [];
      for (let t = 0; t < total; t++) {
        await seek(video, t);
        ctx.drawImage(video, 0, 0, cw, ch);
        const img = PDQ.rgbaToRgb(ctx.getImageData(0, 0, cw, ch).data, cw, ch);
        const { hash, quality } = PDQ.pdqFromRGB(img);
        if (quality >= minQuality) {
          if (!frames.length && preview) preview(thumbnail(canvas, cw, ch));
          frames.push({ t, quality, pdq: hash });
        }
        if (onProgress) onProgress(t + 1, total);
      }
      canvas.width = canvas.height = 0;
      return { frames, duration, width: w, height: h, truncated: seconds > maxSeconds };
    } finally {
      video.removeAttribute("src");
      video.load();
      URL.revokeObjectURL(url);
    }
  }

  root.HashmeshVideo = { hashVideo };
})(globalThis);
