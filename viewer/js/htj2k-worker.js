// Decodes HTJ2K frames (image/jphc) off the main thread, with OpenJPH built
// for WebAssembly (viewer/vendor/openjph, see viewer/README.md).
// A classic worker: the vendored build is an Emscripten script, not a module.
//
// In:  {id, bytes: ArrayBuffer, crc32: number | null}
// Out: {id, samples: ArrayBuffer, width, height, components, bitsPerSample, signed}
//      or {id, error: string}
//
// `crc32` is the archive's CRC-32 of the samples the frame decodes to (the
// part's Decoded-CRC32 header, on frames it converted losslessly). The
// decoded samples are checked against it: a codestream spoiled on the way, or
// a decoder's fault, decodes without an error to values a few units off,
// which must never reach the screen as if they were the image.

/* global importScripts, Module */
importScripts("../vendor/openjph/openjphjs.js");

const here = self.location.href;
const ready = Module({ locateFile: (file) => new URL(`../vendor/openjph/${file}`, here).href });

// CRC-32 (ISO-HDLC, as zlib's crc32), eight bytes a step ("slicing by 8"):
// ~0.8 ms for a 512x512 16-bit frame, against ~5 ms for its decode (both
// timed in Node 20 on this 2-core VM).
const CRC_TABLES = (() => {
  const tables = new Uint32Array(8 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    tables[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let t = 1; t < 8; t++) {
      const previous = tables[(t - 1) * 256 + n];
      tables[t * 256 + n] = tables[previous & 0xff] ^ (previous >>> 8);
    }
  }
  return tables;
})();

function crc32(bytes) {
  const t = CRC_TABLES;
  let crc = 0xffffffff;
  let i = 0;
  const whole = bytes.length - (bytes.length % 8);
  for (; i < whole; i += 8) {
    const a = crc ^ (bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) | (bytes[i + 3] << 24));
    crc =
      t[7 * 256 + (a & 0xff)] ^
      t[6 * 256 + ((a >>> 8) & 0xff)] ^
      t[5 * 256 + ((a >>> 16) & 0xff)] ^
      t[4 * 256 + (a >>> 24)] ^
      t[3 * 256 + bytes[i + 4]] ^
      t[2 * 256 + bytes[i + 5]] ^
      t[256 + bytes[i + 6]] ^
      t[bytes[i + 7]];
  }
  for (; i < bytes.length; i++) crc = t[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

self.onmessage = async (event) => {
  const { id, bytes, crc32: expected } = event.data;
  let decoder = null;
  try {
    const codec = await ready;
    decoder = new codec.HTJ2KDecoder();
    const encoded = new Uint8Array(bytes);
    decoder.getEncodedBuffer(encoded.length).set(encoded);
    decoder.decode();
    const info = decoder.getFrameInfo();
    // A copy out of the WASM heap, which the next decode reuses.
    const decoded = decoder.getDecodedBuffer().slice();
    if (expected !== null && expected !== undefined) {
      const found = crc32(decoded);
      if (found !== expected) {
        const hex = (v) => v.toString(16).padStart(8, "0");
        throw new Error(
          `it decodes to other values than the archive's (CRC-32 ${hex(found)}, not ${hex(expected)})`,
        );
      }
    }
    const samples = decoded.buffer;
    self.postMessage(
      {
        id,
        samples,
        width: info.width,
        height: info.height,
        components: info.componentCount,
        bitsPerSample: info.bitsPerSample,
        signed: info.isSigned,
      },
      [samples],
    );
  } catch (error) {
    self.postMessage({ id, error: String(error?.message || error) });
  } finally {
    decoder?.delete();
  }
};
