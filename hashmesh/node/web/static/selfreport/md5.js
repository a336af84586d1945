/*
 * MD5 in plain JavaScript, incremental, so that a video of any size is hashed in slices on
 * the person's device (crypto.subtle has no MD5, and the file must never be uploaded).
 * RFC 1321. Works in browsers (globalThis.HashmeshMD5) and Node.js (module.exports).
 */
(function (root) {
  "use strict";
  const S = [7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22,
    5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23,
    6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21];
  const K = new Int32Array(64);
  for (let i = 0; i < 64; i++) K[i] = Math.floor(Math.abs(Math.sin(i + 1)) * 4294967296) | 0;

  class MD5 {
    constructor() {
      this.h = new Int32Array([0x67452301, 0xefcdab89 | 0, 0x98badcfe | 0, 0x10325476]);
      this.buffer = new Uint8Array(64);
      this.buffered = 0;
      this.length = 0; // bytes (a double: exact up to 2**53)
      this.w = new Int32Array(16);
    }

    block(bytes, off) {
      const w = this.w;
      for (let i = 0; i < 16; i++, off += 4) w[i] = bytes[off] | (bytes[off + 1] << 8) | (bytes[off + 2] << 16) | (bytes[off + 3] << 24);
      let [a, b, c, d] = this.h;
      for (let i = 0; i < 64; i++) {
        let f, g;
        if (i < 16) { f = (b & c) | (~b & d); g = i; }
        else if (i < 32) { f = (d & b) | (~d & c); g = (5 * i + 1) & 15; }
        else if (i < 48) { f = b ^ c ^ d; g = (3 * i + 5) & 15; }
        else { f = c ^ (b | ~d); g = (7 * i) & 15; }
        const t = d; d = c; c = b;
        const x = (a + f + K[i] + w[g]) | 0;
        b = (b + ((x << S[i]) | (x >>> (32 - S[i])))) | 0;
        a = t;
      }
      const h = this.h;
      h[0] = (h[0] + a) | 0; h[1] = (h[1] + b) | 0; h[2] = (h[2] + c) | 0; h[3] = (h[3] + d) | 0;
    }

    update(bytes) {
      let off = 0;
      this.length += bytes.length;
      if (this.buffered) {
        const take = Math.min(64 - this.buffered, bytes.length);
        this.buffer.set(bytes.subarray(0, take), this.buffered);
        this.buffered += take; off = take;
        if (this.buffered < 64) return this;
        this.block(this.buffer, 0); this.buffered = 0;
      }
      for (; off + 64 <= bytes.length; off += 64) this.block(bytes, off);
      if (off < bytes.length) { this.buffer.set(bytes.subarray(off), 0); this.buffered = bytes.length - off; }
      return this;
    }

    hex() {
      const bits = this.length * 8;
      const pad = new Uint8Array((this.buffered < 56 ? 56 : 120) - this.buffered + 8);
      pad[0] = 0x80;
      const n = pad.length;
      let lo = bits % 4294967296, hi = Math.floor(bits / 4294967296);
      for (let i = 0; i < 4; i++) { pad[n - 8 + i] = lo & 0xff; lo >>>= 8; pad[n - 4 + i] = hi & 0xff; hi >>>= 8; }
      const length = this.length;
      this.update(pad);
      this.length = length;
      let out = "";
      for (let i = 0; i < 4; i++) for (let j = 0; j < 4; j++) out += ((this.h[i] >>> (8 * j)) & 0xff).toString(16).padStart(2, "0");
      return out;
    }
  }

  const api = { MD5, md5hex: (bytes) => new MD5().update(bytes).hex() };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  else root.HashmeshMD5 = api;
})(typeof globalThis !== "undefined" ? globalThis : this);
