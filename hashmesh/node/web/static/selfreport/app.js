/*
 * The self-report page: pictures are decoded and hashed here, on the person's device, and
 * only the hashes are sent to this node (same origin; the CSP forbids anything else).
 *
 * Images: MD5 of the file's bytes and PDQ of the decoded picture's stored pixels (EXIF
 * orientation not applied, colour profiles ignored, as Pillow, pdqhash, HMA and the node
 * hash them; only the preview is turned upright). Videos: MD5 of the file's bytes and vPDQ
 * (video.js): PDQ of one frame a second, decoded by the browser, the first MAX_VIDEO_SECONDS
 * only; files over MAX_VIDEO_BYTES are refused (MD5 alone would take minutes on a phone).
 */
(function () {
  "use strict";
  const { STRINGS, LANGUAGES } = globalThis.HashmeshI18n;
  const PDQ = globalThis.HashmeshPDQ;
  const { MD5 } = globalThis.HashmeshMD5;
  const { hashVideo } = globalThis.HashmeshVideo;
  const API = "/takeitdown/api/";
  const CHUNK = 4 * 1024 * 1024;
  const MAX_CANVAS_PIXELS = 16 * 1000 * 1000; // iOS Safari's canvas limit is ~16.7 MP
  // The caps the page states (i18n.js videoCaps): frames of the first 10 minutes, files up
  // to 1 GB (MD5 runs at about 40 MB/s in a browser: under half a minute).
  const MAX_VIDEO_SECONDS = 600;
  const MAX_VIDEO_BYTES = 1000 * 1000 * 1000;
  const $ = (id) => document.getElementById(id);

  let lang = pickLanguage();
  let info = { hotline: "", max_files: 20, min_quality: 50, site_url: "", contact: {}, logo: false };
  let items = [];
  const messages = {}; // the live messages shown, kept to translate them on a switch

  function pickLanguage() {
    for (const l of navigator.languages || [navigator.language || ""]) {
      const base = String(l).slice(0, 2).toLowerCase();
      if (LANGUAGES.includes(base)) return base;
    }
    return "en";
  }

  function t(key, vars) {
    let s = (STRINGS[lang] && STRINGS[lang][key]) || STRINGS.en[key] || key;
    for (const k in vars || {}) s = s.split("{" + k + "}").join(String(vars[k]));
    return s;
  }

  function applyLanguage() {
    document.documentElement.lang = lang;
    const caps = capsText();
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n, caps);
    for (const el of document.querySelectorAll("[data-i18n-label]")) el.setAttribute("aria-label", t(el.dataset.i18nLabel));
    for (const b of document.querySelectorAll("#languages button")) b.setAttribute("aria-pressed", String(b.dataset.lang === lang));
    $("hotline").textContent = info.hotline ? t("hotline", { name: info.hotline }) : "";
    showBrand();
    showChosen();
    for (const item of items) renderItem(item);
    for (const [id, msg] of Object.entries(messages)) if (msg) say(id, msg.key, msg.vars, msg.cls);
  }

  /** The hotline's own name, logo, site and contact line, from [selfreport]: set as text and
   * attributes only, never as HTML, so nothing in the config can inject markup. */
  function showBrand() {
    const contact = (info.contact && (info.contact[lang] || info.contact.en)) || "";
    $("contact").textContent = contact;
    $("contact").hidden = !contact;
    const site = /^https:\/\//.test(info.site_url || "") ? info.site_url : "";
    for (const id of ["site", "contact-link"]) {
      const a = $(id);
      if (site) a.href = site; else a.removeAttribute("href");
    }
    let host = "";
    try { host = site ? new URL(site).host : ""; } catch (e) { host = ""; }
    $("site").textContent = host;
    $("site").hidden = !host;
    $("contact-link").textContent = t("contactSite", { name: info.hotline || host });
    $("contact-site").hidden = !host;
    const logo = $("logo");
    if (info.logo && !logo.getAttribute("src")) logo.src = "/takeitdown/logo";
    logo.alt = info.hotline || "";
    logo.hidden = !info.logo;
  }

  /** The chosen files' count and names in the page's own words and language (the native
   * input's text is the browser's, in the browser's language). */
  function showChosen() {
    const names = items.map((i) => i.file.name).join(", ");
    $("files-chosen").textContent = items.length ? t(items.length === 1 ? "fileChosen" : "filesChosen", { n: items.length, names }) : "";
  }

  function say(id, key, vars, cls) {
    messages[id] = key ? { key, vars, cls } : null;
    const el = $(id);
    el.textContent = key ? t(key, vars) : "";
    el.className = cls || "";
  }

  // -- hashing --------------------------------------------------------------------------

  const tick = () => new Promise((r) => setTimeout(r, 0));

  async function md5File(file, onProgress) {
    const md5 = new MD5();
    for (let off = 0; off < file.size; off += CHUNK) {
      md5.update(new Uint8Array(await file.slice(off, off + CHUNK).arrayBuffer()));
      if (onProgress) onProgress(Math.min(file.size, off + CHUNK), file.size);
      await tick();
    }
    return md5.hex();
  }

  /** Seconds of a video hashed: the page's cap, or fewer if this node takes fewer frames
   * a video (its info's max_video_frames, one frame a second). */
  function videoSeconds() {
    return Math.min(MAX_VIDEO_SECONDS, info.max_video_frames || MAX_VIDEO_SECONDS);
  }

  function capsText() {
    return { minutes: +(videoSeconds() / 60).toFixed(1), gb: MAX_VIDEO_BYTES / 1e9 };
  }

  /** The vpdq value as the node's signal type writes it (hashmesh/protocol/signals.py,
   * Meta's hash file on one line): NUMBER,QUALITY,PDQHEX,SECONDS for each frame. */
  function vpdqValue(frames) {
    return frames.map((f) => f.number + "," + f.quality + "," + f.pdq + "," + f.t.toFixed(3)).join(" ");
  }

  /** MD5 (the exact file) and vPDQ (its frames, however re-encoded) of a chosen video. */
  async function hashVideoItem(item) {
    const progress = (phase) => (done, total) => { item.progress = { phase, done, total }; renderProgress(item); };
    if (item.file.size > MAX_VIDEO_BYTES) { item.state = "videoTooLarge"; return; }
    item.md5 = await md5File(item.file, progress("md5"));
    try {
      const result = await hashVideo(item.file, { maxSeconds: videoSeconds(), minQuality: info.min_quality, onProgress: progress("frames"), preview: (canvas) => previews.set(item.file, canvas) });
      item.frames = result.frames;
      item.seconds = Math.min(Math.ceil(result.duration), videoSeconds());
      if (!result.frames.length) item.state = "videoPlain";
      else item.state = result.truncated ? "videoTruncated" : "videoHashed";
    } catch (e) {
      if (!(e && (e.undecodable || e.tooSmall))) throw e;
      item.state = e.tooSmall ? "videoPlain" : "videoUndecodable";
    } finally {
      item.progress = null;
    }
  }

  async function isJpeg(file) {
    const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
    return head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  }

  function pixelsOf(bitmap, w, h) {
    const canvas = document.createElement("canvas");
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0, w, h);
    const data = ctx.getImageData(0, 0, w, h).data;
    canvas.width = canvas.height = 0;
    return PDQ.rgbaToRgb(data, w, h);
  }

  const HEAD = 256 * 1024; // JPEG's APP1 (EXIF) is at most 64 KiB, and comes first

  /** The file as the browser should decode it for PDQ: its orientation tag set to upright
   * (see pdq.js, withoutOrientation), the pixels untouched. */
  async function storedPixels(file) {
    const head = new Uint8Array(await file.slice(0, HEAD).arrayBuffer());
    const upright = PDQ.withoutOrientation(head);
    return upright ? new Blob([upright, file.slice(HEAD)], { type: file.type }) : file;
  }

  /** PDQ as hashmesh/node/hashing/hasher.py computes it: Pillow's thumbnail((512, 512)) of the stored pixels
   * (a portrait phone photo turned by its orientation would hash ~128 bits from everyone
   * else's; "none" does not stop Chromium turning it, hence storedPixels). */
  async function pdqFile(file) {
    const options = { imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none" };
    const source = await storedPixels(file);
    const bitmap = await createImageBitmap(source, options);
    try {
      const w = bitmap.width, h = bitmap.height;
      if (!w || !h) throw new Error("empty image");
      if (PDQ.tooSmall(w, h)) { const e = new RangeError("too small"); e.tooSmall = true; throw e; }
      const draft = (await isJpeg(file)) ? PDQ.draftScale(w, h) : 1;
      let img;
      if (w * h <= MAX_CANVAS_PIXELS) {
        img = pixelsOf(bitmap, w, h);
        if (draft > 1) img = PDQ.reduce(img.data, w, h, draft, draft);
      } else {
        // Too large for a canvas on some phones: let the browser do the JPEG-draft-like
        // reduction (at least 2x) while decoding; later steps are ours again.
        const f = Math.max(draft, Math.ceil(Math.sqrt((w * h) / MAX_CANVAS_PIXELS)));
        const rw = Math.ceil(w / f), rh = Math.ceil(h / f);
        const small = await createImageBitmap(source, { ...options, resizeWidth: rw, resizeHeight: rh, resizeQuality: "medium" });
        img = pixelsOf(small, rw, rh);
        small.close();
        await tick();
        const r = PDQ.thumbnail(img, w, h, w / rw);
        return PDQ.pdqFromRGB(r);
      }
      await tick();
      const thumb = PDQ.thumbnail(img, w, h, draft);
      return PDQ.pdqFromRGB(thumb);
    } finally {
      const w = bitmap.width, h = bitmap.height;
      bitmap.close();
      await drawPreview(file, w, h);
    }
  }

  const previews = new Map();
  async function drawPreview(file, w, h) {
    let bitmap;
    try {
      // Upright for the person (a decode of its own, the hash never sees it); scaled while
      // decoding unless the picture is so thin that either orientation could be the long one.
      const small = Math.max(w, h) <= 8 * Math.min(w, h) && Math.min(w, h) > 288;
      const options = small ? { resizeHeight: 288, resizeQuality: "medium" } : {};
      bitmap = await createImageBitmap(file, { imageOrientation: "from-image", ...options });
    } catch (e) {
      return;
    }
    const canvas = document.createElement("canvas");
    const size = 144;
    canvas.width = canvas.height = size;
    const ctx = canvas.getContext("2d");
    const s = Math.max(size / bitmap.width, size / bitmap.height);
    const dw = bitmap.width * s, dh = bitmap.height * s;
    ctx.drawImage(bitmap, (size - dw) / 2, (size - dh) / 2, dw, dh);
    bitmap.close();
    previews.set(file, canvas);
  }

  async function hashItem(item) {
    try {
      if (item.kind === "image") {
        item.md5 = await md5File(item.file);
        try {
          const { hash, quality } = await pdqFile(item.file);
          item.quality = quality;
          if (quality >= info.min_quality) { item.pdq = hash; item.state = "hashed"; }
          else item.state = "lowQuality";
        } catch (e) {
          item.state = e && e.tooSmall ? "tooSmall" : "undecodable";
        }
      } else await hashVideoItem(item);
    } catch (e) {
      item.state = "failed";
      item.error = String(e && e.message ? e.message : e);
    }
    renderItem(item);
    renderHashes();
  }

  // -- rendering -------------------------------------------------------------------------

  function renderItem(item) {
    let li = item.li;
    if (!li) {
      li = item.li = document.createElement("li");
      const visual = document.createElement("div");
      visual.className = item.kind === "video" ? "video" : "thumb";
      if (item.kind === "video") { visual.textContent = "▶"; visual.setAttribute("aria-hidden", "true"); }
      li.appendChild(visual);
      const text = document.createElement("div");
      const name = document.createElement("p");
      name.className = "name mono";
      name.textContent = item.file.name;
      const state = document.createElement("p");
      state.className = "state";
      text.append(name, state);
      li.appendChild(text);
      $("items").appendChild(li);
    }
    const preview = previews.get(item.file);
    if (preview && li.firstChild.tagName !== "CANVAS") {
      preview.setAttribute("role", "img");
      li.replaceChild(preview, li.firstChild);
    }
    if (li.firstChild.tagName === "CANVAS") li.firstChild.setAttribute("aria-label", t("thumbAlt"));
    const state = li.querySelector(".state");
    const vars = { ...capsText(), error: item.error, n: item.frames ? item.frames.length : 0, seconds: item.seconds };
    state.textContent = t(item.state, vars);
    state.className = "state " + ({ hashed: "ok", videoHashed: "ok", videoTruncated: "warn", videoPlain: "warn", videoUndecodable: "warn", videoTooLarge: "error", lowQuality: "warn", tooSmall: "warn", undecodable: "warn", failed: "error" }[item.state] || "");
    li.dataset.state = item.state;
    li.dataset.name = item.file.name;
    if (item.md5) li.dataset.md5 = item.md5;
    if (item.pdq) li.dataset.pdq = item.pdq;
    if (item.quality !== undefined) li.dataset.quality = String(item.quality);
    if (item.frames && item.frames.length) li.dataset.vpdq = vpdqValue(item.frames);
    renderProgress(item);
  }

  /** A <progress> bar while a video is read (MD5, then frames), its words in the label: the
   * list itself is a live region, and a screen reader should not read every frame out. */
  function renderProgress(item) {
    const li = item.li;
    if (!li) return;
    let bar = li.querySelector("progress");
    if (!item.progress) { if (bar) bar.remove(); return; }
    if (!bar) { bar = document.createElement("progress"); li.lastChild.appendChild(bar); }
    const { phase, done, total } = item.progress;
    bar.max = total; bar.value = done;
    bar.setAttribute("aria-label", t(phase === "md5" ? "videoReading" : "videoFrames", { done, total }));
    bar.dataset.phase = phase;
  }

  function signals() {
    const out = [], seen = new Set();
    for (const item of items) {
      const add = (s) => { const k = s.type + s.value; if (!seen.has(k)) { seen.add(k); out.push(s); } };
      if (item.md5) add({ type: "md5", value: item.md5 });
      if (item.pdq) add({ type: "pdq", value: item.pdq, quality: item.quality });
      // A node that takes no vPDQ says so with max_video_frames 0 (or by not saying it).
      if (item.frames && item.frames.length && info.max_video_frames) add({ type: "vpdq", value: vpdqValue(item.frames) });
    }
    return out;
  }

  function renderHashes() {
    const list = $("hashlist");
    list.replaceChildren();
    for (const s of signals()) {
      const li = document.createElement("li");
      li.textContent = s.type + " " + s.value + (s.quality !== undefined ? " (quality " + s.quality + ")" : "");
      if (s.type === "vpdq") { // one line a frame: number, quality, PDQ, seconds
        li.className = "frames";
        li.textContent = "vpdq " + s.value.split(" ").join("\n");
      }
      list.appendChild(li);
    }
  }

  function clearItems(keepInput) {
    items = [];
    previews.clear();
    $("items").replaceChildren();
    if (!keepInput) $("files").value = "";
    showChosen();
    renderHashes();
  }

  async function onFiles() {
    const files = Array.from($("files").files || []);
    clearItems(true); // the input keeps the new choice, so it does not read "No file chosen"
    say("progress", null);
    $("result").hidden = true;
    if (files.length > info.max_files) { say("progress", "tooMany", { n: info.max_files }, "error"); $("files").value = ""; return; }
    items = files.map((file) => ({ file, kind: file.type.startsWith("video/") ? "video" : "image", state: "hashing" }));
    for (const item of items) renderItem(item);
    showChosen();
    for (const item of items) await hashItem(item); // one at a time: phones have little memory
  }

  // -- sending ---------------------------------------------------------------------------

  function zeroBits(bytes, bits) {
    let i = 0;
    for (; bits >= 8; bits -= 8, i++) if (bytes[i] !== 0) return false;
    return bits === 0 || (bytes[i] >> (8 - bits)) === 0;
  }

  /** Find n with SHA-256(challenge ":" n) starting with `bits` zero bits (about 2**bits tries). */
  async function solve(challenge, bits) {
    const enc = new TextEncoder();
    const BATCH = 256;
    for (let base = 0; ; base += BATCH) {
      const tries = [];
      for (let n = base; n < base + BATCH; n++) tries.push(crypto.subtle.digest("SHA-256", enc.encode(challenge + ":" + n)));
      const digests = await Promise.all(tries);
      for (let k = 0; k < BATCH; k++) if (zeroBits(new Uint8Array(digests[k]), bits)) return String(base + k);
    }
  }

  async function call(path, body) {
    const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const r = await fetch(API + path, { ...init, credentials: "omit", cache: "no-store", referrerPolicy: "no-referrer" });
    let data = {};
    try { data = await r.json(); } catch (e) { /* not JSON: keep the status */ }
    if (!r.ok) { const err = new Error(data.error || r.statusText); err.status = r.status; throw err; }
    return data;
  }

  function failure(id, e) {
    if (e.status === 429) say(id, "rateLimited", {}, "error");
    else if (e.status === 403) say(id, "wrongCodes", {}, "error");
    else say(id, "failed", { error: e.message }, "error");
  }

  async function onSubmit() {
    const button = $("submit");
    if (!items.length) return say("progress", "noFiles", {}, "error");
    if (items.some((i) => i.state === "hashing")) return say("progress", "stillHashing", {}, "error");
    const chosen = document.querySelector("input[name=category]:checked");
    if (!chosen) { say("progress", "noCategory", {}, "error"); $("cat-csam").focus(); return; }
    const list = signals();
    if (!list.length) return say("progress", "noFiles", {}, "error");
    if (!globalThis.crypto || !crypto.subtle) return say("progress", "noSubtle", {}, "error");
    button.disabled = true;
    try {
      say("progress", "working");
      const { challenge, bits } = await call("challenge");
      const solution = await solve(challenge, bits);
      say("progress", "sending");
      const answer = await call("submit", { challenge, solution, category: chosen.value, signals: list });
      $("case-number").textContent = answer.case;
      $("case-secret").textContent = answer.secret;
      $("result").hidden = false;
      say("progress", "sent", { n: answer.hashes }, "ok");
      clearItems();
      $("result").focus();
    } catch (e) {
      failure("progress", e);
    } finally {
      button.disabled = false;
    }
  }

  function codes() {
    const c = $("m-case").value.trim(), s = $("m-secret").value.trim();
    if (!c || !s) { say("manage-result", "fillCodes", {}, "error"); return null; }
    return { case: c, secret: s };
  }

  function showStatus(st) {
    if (st.state === "withdrawn") say("manage-result", "statusWithdrawn", { case: st.case, day: st.withdrawn_day }, "ok");
    else say("manage-result", "statusActive", { case: st.case, day: st.created_day, live: st.live, n: st.hashes }, "ok");
  }

  async function onCheck(ev) {
    ev.preventDefault();
    $("confirm").hidden = true;
    const body = codes();
    if (!body) return;
    try { showStatus(await call("status", body)); } catch (e) { failure("manage-result", e); }
  }

  async function onWithdrawConfirmed() {
    const body = codes();
    $("confirm").hidden = true;
    if (!body) return;
    try {
      const st = await call("withdraw", body);
      say("manage-result", "withdrawn", {}, "ok");
      $("manage-result").dataset.state = st.state;
    } catch (e) { failure("manage-result", e); }
  }

  async function copyCodes() {
    const text = t("caseNumber") + ": " + $("case-number").textContent + "\n" + t("secret") + ": " + $("case-secret").textContent;
    try { await navigator.clipboard.writeText(text); say("progress", "copied", {}, "ok"); } catch (e) { /* clipboard refused: the codes stay on screen */ }
  }

  async function start() {
    for (const b of document.querySelectorAll("#languages button")) b.addEventListener("click", () => { lang = b.dataset.lang; applyLanguage(); });
    $("files").addEventListener("change", onFiles);
    $("submit").addEventListener("click", onSubmit);
    $("manage").addEventListener("submit", onCheck);
    $("withdraw").addEventListener("click", () => { if (codes()) { say("manage-result", null); $("confirm").hidden = false; $("withdraw-confirm").focus(); } });
    $("withdraw-confirm").addEventListener("click", onWithdrawConfirmed);
    $("copy").addEventListener("click", copyCodes);
    applyLanguage();
    try { info = { ...info, ...(await call("info")) }; } catch (e) { /* defaults apply */ }
    applyLanguage();
    document.body.dataset.ready = "true";
  }

  start();
})();
