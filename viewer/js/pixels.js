// The grey pipeline in the browser, on the original stored values.
//
// A frame is fetched once and kept as its stored values (16-bit CT stays 2
// bytes a pixel). Every display change (window/level, invert, preset) builds
// one lookup table over the possible stored values, PS3.3 C.11.1 modality
// rescale, then C.11.2 VOI, then MONOCHROME1/invert, and a render is one
// table read per pixel into an RGBA buffer (about 1 ms for 512x512).

const LUT_MAX_ENTRIES = 1 << 17;

export class UnsupportedImageError extends Error {
  constructor(message) {
    super(message);
    this.name = "UnsupportedImageError";
  }
}

/**
 * Why the browser pipeline cannot show an image with these attributes
 * (the server then renders it), or null.
 */
export function browserCannotShow(info) {
  if (!info.rows || !info.columns) return "it has no Rows/Columns";
  if (info.floatPixels) return "float pixel data";
  if (![8, 16, 32].includes(info.bitsAllocated)) return `${info.bitsAllocated}-bit pixels`;
  if (info.samplesPerPixel === 1) {
    if (!["MONOCHROME1", "MONOCHROME2"].includes(info.photometric)) {
      return `${info.photometric} photometric interpretation`;
    }
    if (info.hasModalityLUT) return "a Modality LUT Sequence";
    return null;
  }
  if (info.samplesPerPixel === 3) {
    if (info.bitsAllocated === 32) return "32-bit colour";
    const ok = ["RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT"];
    if (!ok.includes(info.photometric)) return `${info.photometric} colour`;
    return null;
  }
  return `${info.samplesPerPixel} samples per pixel`;
}

/** Bytes of one uncompressed frame. */
export function frameBytes(info, rgbDecoded) {
  let samples = info.rows * info.columns * info.samplesPerPixel;
  if (info.photometric === "YBR_FULL_422" && !rgbDecoded) samples = (info.rows * info.columns * 2);
  return (samples * info.bitsAllocated) / 8;
}

/**
 * Native little-endian frame bytes -> a displayable frame:
 * grey: {kind: "grey", values (typed array), min, max}; colour: {kind: "rgb", rgba}.
 * `rgbDecoded`: the server decoded a compressed frame, so colour is RGB interleaved.
 */
export function toFrame(bytes, info, rgbDecoded) {
  const expected = frameBytes(info, rgbDecoded);
  if (bytes.byteLength < expected) {
    throw new UnsupportedImageError(
      `the frame holds ${bytes.byteLength} bytes, ${expected} were expected`,
    );
  }
  return info.samplesPerPixel === 1 ? greyFrame(bytes, info) : colourFrame(bytes, info, rgbDecoded);
}

function typedView(bytes, info) {
  const count = info.rows * info.columns * info.samplesPerPixel;
  const signed = info.pixelRepresentation === 1;
  const size = info.bitsAllocated / 8;
  let buffer = bytes.buffer;
  let offset = bytes.byteOffset;
  if (offset % size) {
    // A multipart header of odd length: copy to an aligned buffer once.
    const copy = bytes.slice(0, count * size);
    buffer = copy.buffer;
    offset = 0;
  }
  if (size === 1) return signed ? new Int8Array(buffer, offset, count) : new Uint8Array(buffer, offset, count);
  if (size === 2) return signed ? new Int16Array(buffer, offset, count) : new Uint16Array(buffer, offset, count);
  return signed ? new Int32Array(buffer, offset, count) : new Uint32Array(buffer, offset, count);
}

function greyFrame(bytes, info) {
  const values = typedView(bytes, info);
  const bits = info.bitsStored;
  const shift = 32 - bits;
  const n = values.length;
  let min = Infinity;
  let max = -Infinity;
  if (bits < info.bitsAllocated) {
    // Bits above Bits Stored may hold anything (overlays, padding): mask, and
    // sign-extend signed data. Idempotent on values the server already decoded.
    const mask = bits >= 32 ? 0xffffffff : (1 << bits) - 1;
    const signed = info.pixelRepresentation === 1;
    for (let i = 0; i < n; i++) {
      const v = signed ? (values[i] << shift) >> shift : values[i] & mask;
      values[i] = v;
      if (v < min) min = v;
      if (v > max) max = v;
    }
  } else {
    for (let i = 0; i < n; i++) {
      const v = values[i];
      if (v < min) min = v;
      if (v > max) max = v;
    }
  }
  return { kind: "grey", values, min, max, rows: info.rows, columns: info.columns };
}

function clampByte(v) {
  return v < 0 ? 0 : v > 255 ? 255 : v | 0;
}

function colourFrame(bytes, info, rgbDecoded) {
  const pixels = info.rows * info.columns;
  const rgba = new Uint8ClampedArray(pixels * 4);
  const wide = info.bitsAllocated === 16;
  const samples = wide ? typedView(bytes, { ...info, pixelRepresentation: 0 }) : bytes;
  const down = wide ? Math.max(0, info.bitsStored - 8) : 0;
  const sample = (i) => (wide ? samples[i] >> down : samples[i]);
  const planar = info.planarConfiguration === 1 && !rgbDecoded;
  const photometric = rgbDecoded ? "RGB" : info.photometric;
  if (photometric === "YBR_FULL_422") {
    // Y1 Y2 Cb Cr for each pair of pixels along a row (PS3.3 C.7.6.3.1.2).
    for (let p = 0, s = 0; p < pixels; p += 2, s += 4) {
      const cb = sample(s + 2) - 128;
      const cr = sample(s + 3) - 128;
      for (let k = 0; k < 2 && p + k < pixels; k++) {
        const y = sample(s + k);
        const o = (p + k) * 4;
        rgba[o] = clampByte(y + 1.402 * cr);
        rgba[o + 1] = clampByte(y - 0.344136 * cb - 0.714136 * cr);
        rgba[o + 2] = clampByte(y + 1.772 * cb);
        rgba[o + 3] = 255;
      }
    }
  } else {
    const ybr = photometric === "YBR_FULL" || photometric === "YBR_ICT";
    const rct = photometric === "YBR_RCT";
    for (let p = 0; p < pixels; p++) {
      const a = planar ? sample(p) : sample(p * 3);
      const b = planar ? sample(p + pixels) : sample(p * 3 + 1);
      const c = planar ? sample(p + 2 * pixels) : sample(p * 3 + 2);
      const o = p * 4;
      if (ybr) {
        rgba[o] = clampByte(a + 1.402 * (c - 128));
        rgba[o + 1] = clampByte(a - 0.344136 * (b - 128) - 0.714136 * (c - 128));
        rgba[o + 2] = clampByte(a + 1.772 * (b - 128));
      } else if (rct) {
        const g = a - Math.floor((b - 128 + c - 128) / 4);
        rgba[o] = clampByte(c - 128 + g);
        rgba[o + 1] = clampByte(g);
        rgba[o + 2] = clampByte(b - 128 + g);
      } else {
        rgba[o] = a;
        rgba[o + 1] = b;
        rgba[o + 2] = c;
      }
      rgba[o + 3] = 255;
    }
  }
  return { kind: "rgb", rgba, rows: info.rows, columns: info.columns };
}

// -- windows ------------------------------------------------------------------------

/** The possible stored values [low, high] of an image (PS3.3 C.7.6.3.1). */
export function storedRange(info) {
  const bits = info.bitsStored;
  if (info.pixelRepresentation === 1) return [-(2 ** (bits - 1)), 2 ** (bits - 1) - 1];
  return [0, 2 ** bits - 1];
}

/** A window over a frame's own range, in output (rescaled) units. */
export function rangeWindow(frame, info) {
  if (frame.kind !== "grey") return { centre: 127.5, width: 256 };
  const a = frame.min * info.slope + info.intercept;
  const b = frame.max * info.slope + info.intercept;
  const low = Math.min(a, b);
  const high = Math.max(a, b);
  return { centre: (low + high) / 2, width: Math.max(1, high - low + 1) };
}

/** PS3.3 C.11.2.1.2: grey level 0..255 of rescaled value x under window (c, w). */
function voi(x, c, w, fn) {
  if (fn === "SIGMOID") return 255 / (1 + Math.exp((-4 * (x - c)) / w));
  if (fn === "LINEAR_EXACT") {
    if (x <= c - w / 2) return 0;
    if (x > c + w / 2) return 255;
    return ((x - c) / w + 0.5) * 255;
  }
  const width = Math.max(1, w);
  if (x <= c - 0.5 - (width - 1) / 2) return 0;
  if (x > c - 0.5 + (width - 1) / 2) return 255;
  return ((x - (c - 0.5)) / (width - 1) + 0.5) * 255;
}

/**
 * A display transform: a lookup table from stored value to packed RGBA
 * (little-endian 0xAABBGGRR) when the stored range is small enough, else
 * direct arithmetic (32-bit RT dose).
 */
export function makeGreyTransform(info, window, invert) {
  const [low, high] = storedRange(info);
  const flip = invert !== (info.photometric === "MONOCHROME1");
  const fn = info.voiFunction;
  const { centre, width } = window;
  const slope = info.slope;
  const intercept = info.intercept;
  const lut = window.lut;
  const grey = lut
    ? lutGrey(lut, slope, intercept, flip)
    : (stored) => {
        const g = Math.round(voi(stored * slope + intercept, centre, width, fn));
        return flip ? 255 - g : g;
      };
  if (high - low + 1 <= LUT_MAX_ENTRIES) {
    const table = new Uint32Array(high - low + 1);
    for (let s = low; s <= high; s++) {
      const g = grey(s);
      table[s - low] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
    return { table, offset: low, grey };
  }
  return { table: null, offset: 0, grey };
}

/**
 * Stored value -> grey through a VOI LUT (PS3.3 C.11.2.1.1): the modality
 * value selects an entry (values below the first mapped one take the first
 * entry, above the last the last), scaled from the LUT's bits to 0..255.
 */
function lutGrey(lut, slope, intercept, flip) {
  const data = lut.data;
  const last = data.length - 1;
  const scale = 255 / (2 ** Math.min(lut.bits, 16) - 1);
  return (stored) => {
    let k = Math.round(stored * slope + intercept) - lut.first;
    if (k < 0) k = 0;
    else if (k > last) k = last;
    const g = Math.min(255, Math.round(data[k] * scale));
    return flip ? 255 - g : g;
  };
}

/** Grey frame -> RGBA pixels through the transform. */
export function renderGrey(frame, transform, out32) {
  const values = frame.values;
  const n = values.length;
  const { table, offset } = transform;
  if (table) {
    const last = table.length - 1;
    for (let i = 0; i < n; i++) {
      let k = values[i] - offset;
      if (k < 0) k = 0;
      else if (k > last) k = last;
      out32[i] = table[k];
    }
  } else {
    const grey = transform.grey;
    for (let i = 0; i < n; i++) {
      const g = grey(values[i]);
      out32[i] = 0xff000000 | (g << 16) | (g << 8) | g;
    }
  }
}

/** Colour frame -> RGBA through a per-channel window (identity at 127.5/256). */
export function renderColour(frame, window, invert, out8) {
  const table = new Uint8ClampedArray(256);
  for (let v = 0; v < 256; v++) {
    const g = Math.round(voi(v, window.centre, window.width, "LINEAR"));
    table[v] = invert ? 255 - g : g;
  }
  const src = frame.rgba;
  for (let i = 0; i < src.length; i += 4) {
    out8[i] = table[src[i]];
    out8[i + 1] = table[src[i + 1]];
    out8[i + 2] = table[src[i + 2]];
    out8[i + 3] = 255;
  }
}

/** The stored value under image pixel (column, row), rescaled; null outside. */
export function valueAt(frame, info, column, row) {
  if (frame.kind !== "grey") return null;
  const c = Math.floor(column);
  const r = Math.floor(row);
  if (c < 0 || r < 0 || c >= frame.columns || r >= frame.rows) return null;
  return frame.values[r * frame.columns + c] * info.slope + info.intercept;
}
