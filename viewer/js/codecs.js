// Frame decoders, keyed by the media type a frame arrives in.
//
// A decoder turns the bytes of one frame into native little-endian samples,
// laid out as uncompressed Pixel Data would be. Today the archive sends
// frames uncompressed (`application/octet-stream`, gzipped on the wire, which
// the browser undoes). A compressed encoding, say HTJ2K (`image/jphc`) through
// a vendored WASM decoder, is one more `registerDecoder` call: the Accept
// header asks for it first when the server's config.json lists it, and the
// pixel pipeline does not change.

const decoders = new Map();

/**
 * @param {string} mediaType e.g. "application/octet-stream", "image/jphc"
 * @param {{decode: (bytes: Uint8Array, info: object) => Uint8Array | Promise<Uint8Array>,
 *          decodedColourIsRGB?: boolean}} decoder
 */
export function registerDecoder(mediaType, decoder) {
  decoders.set(mediaType, decoder);
}

registerDecoder("application/octet-stream", {
  decode: (bytes) => bytes,
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
  return decoder.decode(part.bytes, info);
}
