// Frame decoders, keyed by the media type a frame arrives in.
//
// A decoder turns the bytes of one frame into native little-endian samples,
// laid out as uncompressed Pixel Data would be (colour interleaved RGB). The
// archive offers frames as HTJ2K (`image/jphc`, lossless, converted by the
// server from whatever is stored) and uncompressed (`application/octet-stream`,
// gzipped on the wire, which the browser undoes). HTJ2K is decoded by OpenJPH
// in WebAssembly, in workers (htj2k-worker.js), so that scrolling never waits
// for it. The Accept header asks for what config.json lists, in its order.
// A frame the archive converted comes with the CRC-32 of the samples it
// decodes to (its part's Decoded-CRC32 header), which the worker checks: one
// that decodes to anything else is asked for again uncompressed (loader.js).

const decoders = new Map();

/**
 * @param {string} mediaType e.g. "application/octet-stream", "image/jphc"
 * @param {{decode: (bytes: Uint8Array, info: object, headers: object) =>
 *            Uint8Array | Promise<Uint8Array>,
 *          decodedColourIsRGB?: boolean}} decoder  (headers: the part's, names in lower case)
 */
export function registerDecoder(mediaType, decoder) {
  decoders.set(mediaType, decoder);
}

registerDecoder("application/octet-stream", {
  decode: (bytes) => bytes,
});

/** Workers that decode HTJ2K, started on first use; frames go to the least busy. */
class HTJ2KWorkers {
  constructor(size) {
    this.size = size;
    this.workers = [];
    this.waiting = new Map(); // id -> {resolve, reject}
    this.next = 1;
  }

  #worker() {
    if (this.workers.length < this.size) {
      const worker = new Worker(new URL("./htj2k-worker.js", import.meta.url));
      const entry = { worker, busy: 0 };
      worker.onmessage = (event) => this.#done(entry, event.data);
      worker.onerror = (event) => {
        // A worker that cannot start (no WebAssembly): every frame waiting on it fails.
        for (const [id, waiter] of this.waiting) {
          if (waiter.entry === entry) {
            this.waiting.delete(id);
            waiter.reject(new Error(`the HTJ2K decoder failed: ${event.message || "no WebAssembly"}`));
          }
        }
      };
      this.workers.push(entry);
      return entry;
    }
    return this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
  }

  #done(entry, message) {
    entry.busy--;
    const waiter = this.waiting.get(message.id);
    if (!waiter) return;
    this.waiting.delete(message.id);
    if (message.error) waiter.reject(new Error(`HTJ2K frame: ${message.error}`));
    else waiter.resolve(message);
  }

  /** `crc32`: what the samples must come to (the worker checks), or null. */
  decode(bytes, crc32) {
    const entry = this.#worker();
    const id = this.next++;
    entry.busy++;
    // Our own copy travels to the worker; the response's buffer may hold other parts.
    const copy = bytes.slice().buffer;
    return new Promise((resolve, reject) => {
      this.waiting.set(id, { resolve, reject, entry });
      entry.worker.postMessage({ id, bytes: copy, crc32 }, [copy]);
    });
  }
}

const htj2k = new HTJ2KWorkers(Math.max(1, Math.min(4, navigator.hardwareConcurrency || 2)));

/** The part's Decoded-CRC32 header (pacs.dicomweb.wado.DECODED_CRC32) as a number, or null. */
function decodedCRC32(headers) {
  const value = headers?.["decoded-crc32"];
  return value && /^[0-9a-f]{8}$/i.test(value) ? parseInt(value, 16) : null;
}

registerDecoder("image/jphc", {
  decode: async (bytes, info, headers) => {
    const frame = await htj2k.decode(bytes, decodedCRC32(headers));
    if (frame.width !== info.columns || frame.height !== info.rows) {
      throw new Error(
        `the HTJ2K frame is ${frame.width}x${frame.height}, the image ${info.columns}x${info.rows}`,
      );
    }
    const samples = new Uint8Array(frame.samples);
    if (info.bitsAllocated === 16 && frame.bitsPerSample <= 8) {
      // Eight bits stored in sixteen allocated: OpenJPH gives bytes, the pipeline words.
      return new Uint8Array(Uint16Array.from(samples).buffer);
    }
    return samples;
  },
});

/** The frame media types both the server offers and the viewer decodes, best first. */
export function usableMediaTypes(offered) {
  const list = (offered && offered.length ? offered : ["application/octet-stream"]).filter((type) =>
    decoders.has(type),
  );
  return list.length ? list : ["application/octet-stream"];
}

/** The Accept header of a frame request (PS3.18 8.7.3.5). */
export function frameAccept(offered) {
  return usableMediaTypes(offered)
    .map((type, position) => {
      const q = position === 0 ? "" : `; q=${Math.max(0.1, 1 - position * 0.1).toFixed(1)}`;
      const syntax = type === "application/octet-stream" ? "" : "; transfer-syntax=*";
      return `multipart/related; type="${type}"${syntax}${q}`;
    })
    .join(", ");
}

export async function decodeFrame(part, info) {
  const decoder = decoders.get(part.mediaType);
  if (!decoder) {
    throw new Error(`frames arrive as ${part.mediaType}, which this viewer cannot decode`);
  }
  return decoder.decode(part.bytes, info, part.headers || {});
}
