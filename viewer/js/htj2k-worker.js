// Decodes HTJ2K frames (image/jphc) off the main thread, with OpenJPH built
// for WebAssembly (viewer/vendor/openjph, see viewer/README.md).
// A classic worker: the vendored build is an Emscripten script, not a module.
//
// In:  {id, bytes: ArrayBuffer}
// Out: {id, samples: ArrayBuffer, width, height, components, bitsPerSample, signed}
//      or {id, error: string}

/* global importScripts, Module */
importScripts("../vendor/openjph/openjphjs.js");

const here = self.location.href;
const ready = Module({ locateFile: (file) => new URL(`../vendor/openjph/${file}`, here).href });

self.onmessage = async (event) => {
  const { id, bytes } = event.data;
  let decoder = null;
  try {
    const codec = await ready;
    decoder = new codec.HTJ2KDecoder();
    const encoded = new Uint8Array(bytes);
    decoder.getEncodedBuffer(encoded.length).set(encoded);
    decoder.decode();
    const info = decoder.getFrameInfo();
    // A copy out of the WASM heap, which the next decode reuses.
    const samples = decoder.getDecodedBuffer().slice().buffer;
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
