// A stack: the images of a series in display order, one per frame, with the
// attributes the display needs resolved per frame (enhanced multi-frame
// objects keep them in functional groups, PS3.3 C.7.6.16).

import {
  NATIVE_TRANSFER_SYNTAXES,
  TAG,
  items,
  number,
  numbers,
  text,
  value,
  values,
} from "./dicom.js";
import { browserCannotShow } from "./pixels.js";

// SERVER: the browser pipeline cannot show it; the viewport asks for a rendered picture.
const STATUS = { NONE: 0, LOADING: 1, LOADED: 2, FAILED: 3, SERVER: 4 };
export { STATUS };

/** An attribute from the frame's functional groups, then the shared ones, then the top level. */
function functional(instance, frameIndex, sequenceTag, tag) {
  const perFrame = items(instance, TAG.PerFrameFunctionalGroupsSequence)[frameIndex];
  for (const group of [perFrame, items(instance, TAG.SharedFunctionalGroupsSequence)[0]]) {
    const macro = group && items(group, sequenceTag)[0];
    if (macro && macro[tag]) return macro;
  }
  return instance[tag] ? instance : null;
}

function frameNumbers(instance, frameIndex, sequenceTag, tag) {
  const source = functional(instance, frameIndex, sequenceTag, tag);
  return source ? numbers(source, tag) : [];
}

/**
 * The frame's first VOI LUT (PS3.3 C.11.2): its descriptor, explanation and
 * where its data is (inline, or a BulkDataURI the loader fetches once), or null.
 */
function voiLUT(instance, frameIndex) {
  const source = functional(instance, frameIndex, TAG.FrameVOILUTSequence, TAG.VOILUTSequence);
  const lut = source && items(source, TAG.VOILUTSequence)[0];
  if (!lut) return null;
  const [entries, first, bits] = numbers(lut, TAG.LUTDescriptor);
  const data = lut[TAG.LUTData] || {};
  if (!Number.isFinite(first) || !bits) return null;
  return {
    entries: entries || 65536, // 0 stands for 2^16 (PS3.3 C.11.1.1)
    first,
    bits,
    explanation: text(lut, TAG.LUTExplanation),
    uri: data.BulkDataURI || null,
    inline: data.InlineBinary || (Array.isArray(data.Value) ? data.Value : null),
    data: null, // Uint16Array once loaded
  };
}

/** Everything about one frame that decoding, display and measuring need. */
export function imageInfo(instance, frameIndex) {
  const syntax = text(instance, TAG.AvailableTransferSyntaxUID);
  const spacing = frameNumbers(instance, frameIndex, TAG.PixelMeasuresSequence, TAG.PixelSpacing);
  const imagerSpacing = numbers(instance, TAG.ImagerPixelSpacing);
  const windowSource = functional(instance, frameIndex, TAG.FrameVOILUTSequence, TAG.WindowCenter);
  const centres = windowSource ? numbers(windowSource, TAG.WindowCenter) : [];
  const widths = windowSource ? numbers(windowSource, TAG.WindowWidth) : [];
  const explanations = windowSource ? values(windowSource, TAG.WindowCenterWidthExplanation) : [];
  const rescale = functional(
    instance,
    frameIndex,
    TAG.PixelValueTransformationSequence,
    TAG.RescaleSlope,
  );
  const bitsAllocated = number(instance, TAG.BitsAllocated, 0);
  const info = {
    rows: number(instance, TAG.Rows, 0),
    columns: number(instance, TAG.Columns, 0),
    samplesPerPixel: number(instance, TAG.SamplesPerPixel, 1),
    photometric: text(instance, TAG.PhotometricInterpretation, "MONOCHROME2").trim(),
    planarConfiguration: number(instance, TAG.PlanarConfiguration, 0),
    bitsAllocated,
    bitsStored: number(instance, TAG.BitsStored, bitsAllocated),
    pixelRepresentation: number(instance, TAG.PixelRepresentation, 0),
    slope: (rescale && number(rescale, TAG.RescaleSlope, 1)) || 1,
    intercept: (rescale && number(rescale, TAG.RescaleIntercept, 0)) || 0,
    rescaleType: rescale ? text(rescale, TAG.RescaleType) : "",
    windows: centres
      .map((centre, i) => ({
        centre,
        width: widths[i] ?? widths[0],
        name: explanations[i] ? String(explanations[i]) : "",
      }))
      .filter((w) => Number.isFinite(w.width) && w.width > 0),
    voiFunction: (windowSource && text(windowSource, TAG.VOILUTFunction).trim()) || "LINEAR",
    hasModalityLUT: items(instance, TAG.ModalityLUTSequence).length > 0,
    voiLUT: voiLUT(instance, frameIndex),
    floatPixels: Boolean(instance[TAG.FloatPixelData] || instance[TAG.DoubleFloatPixelData]),
    hasPixels: Boolean(
      instance[TAG.PixelData] || instance[TAG.FloatPixelData] || instance[TAG.DoubleFloatPixelData],
    ),
    transferSyntax: syntax,
    // Frames of a compressed instance are decoded by the server, colour to RGB.
    serverDecodes: Boolean(syntax) && !NATIVE_TRANSFER_SYNTAXES.has(syntax),
    pixelSpacing: spacing.length === 2 ? { row: spacing[0], column: spacing[1] } : null,
    spacingKind: spacing.length === 2 ? "patient" : imagerSpacing.length === 2 ? "detector" : null,
    lossy: text(instance, TAG.LossyImageCompression) === "01",
  };
  if (!info.pixelSpacing && imagerSpacing.length === 2) {
    info.pixelSpacing = { row: imagerSpacing[0], column: imagerSpacing[1] };
  }
  info.unsupported = info.hasPixels ? browserCannotShow(info) : "it holds no image";
  return info;
}

function position(instance, frameIndex) {
  const p = frameNumbers(instance, frameIndex, TAG.PlanePositionSequence, TAG.ImagePositionPatient);
  return p.length === 3 ? p : null;
}

function orientation(instance, frameIndex) {
  const o = frameNumbers(
    instance,
    frameIndex,
    TAG.PlaneOrientationSequence,
    TAG.ImageOrientationPatient,
  );
  return o.length === 6 ? o : null;
}

// Vectors in patient space (mm), for slice geometry here and across viewports.
export function cross(a, b) {
  return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
}

export function dot(a, b) {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

export function subtract(a, b) {
  return [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
}

/** The slice normal of an Image Orientation (Patient), of length 1. */
export function unitNormal(orientation) {
  const n = cross(orientation.slice(0, 3), orientation.slice(3, 6));
  const length = Math.hypot(...n) || 1;
  return n.map((v) => v / length);
}

/** The images of a series, one per frame, in anatomical order when the geometry allows. */
export function buildStack(seriesRow, instances) {
  const images = [];
  for (const instance of instances) {
    const frames = Math.max(1, number(instance, TAG.NumberOfFrames, 1));
    for (let f = 0; f < frames; f++) {
      const info = imageInfo(instance, f);
      const pos = position(instance, f);
      const ori = orientation(instance, f);
      images.push({
        instance,
        frameNumber: f + 1,
        frameCount: frames,
        info,
        position: pos,
        orientation: ori,
        instanceNumber: number(instance, TAG.InstanceNumber, 0),
        sliceLocation: number(instance, TAG.SliceLocation),
        sliceThickness: number(instance, TAG.SliceThickness),
        key: `${value(instance, TAG.SOPInstanceUID)}#${f + 1}`,
      });
    }
  }
  const withImages = images.filter((image) => image.info.hasPixels);
  const chosen = withImages.length ? withImages : images;
  // Sort along the slice normal when every frame has a position and all share
  // one orientation; else by instance number, then frame.
  const first = chosen[0];
  const sameOrientation =
    first?.orientation &&
    chosen.every((im) => im.orientation && im.orientation.every((v, i) => Math.abs(v - first.orientation[i]) < 1e-3));
  const distinctPositions = new Set(chosen.map((im) => (im.position ? im.position.join(",") : "")));
  if (sameOrientation && chosen.every((im) => im.position) && distinctPositions.size === chosen.length) {
    const normal = cross(first.orientation.slice(0, 3), first.orientation.slice(3, 6));
    for (const im of chosen) im.along = im.position.reduce((sum, v, i) => sum + v * normal[i], 0);
    // Head first: the highest slice (most superior) at the top of the stack.
    chosen.sort((a, b) => b.along - a.along);
  } else {
    chosen.sort((a, b) => a.instanceNumber - b.instanceNumber || a.frameNumber - b.frameNumber);
  }
  return new Stack(seriesRow, chosen, withImages.length === 0);
}

export class Stack {
  constructor(seriesRow, images, noImages) {
    this.series = seriesRow;
    this.images = images;
    this.noImages = noImages;
    this.status = new Uint8Array(images.length);
    images.forEach((image, i) => {
      if (image.info.unsupported) this.status[i] = STATUS.SERVER;
    });
    this.serverRendered = images.filter((image) => image.info.unsupported).length;
    this.frames = new Array(images.length).fill(null);
    this.errors = new Array(images.length).fill(null);
    this.loaded = 0;
    this.cursor = 0;
    this.listeners = new Set();
    this.startedAt = performance.now();
    this.finishedAt = null;
  }

  get uid() {
    return value(this.series, TAG.SeriesInstanceUID);
  }

  get done() {
    const failed = this.errors.filter(Boolean).length;
    return this.loaded + failed + this.serverRendered >= this.images.length;
  }

  onChange(listener) {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(index) {
    for (const listener of this.listeners) listener(index);
  }

  /** The unloaded image nearest the cursor, looking ahead first, or -1. */
  nextToLoad() {
    const n = this.images.length;
    for (let d = 0; d < n; d++) {
      for (const i of [this.cursor + d, this.cursor - d - 1]) {
        if (i >= 0 && i < n && this.status[i] === STATUS.NONE) return i;
      }
    }
    return -1;
  }
}
