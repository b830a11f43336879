// Fetching frames: the image on screen first, then its neighbours outward,
// for every stack on screen, through a bounded number of requests at once
// (a browser opens six HTTP/1.1 connections per host).

import { decodeFrame, frameAccept } from "./codecs.js";
import { STATUS } from "./stack.js";
import { UnsupportedImageError, toFrame } from "./pixels.js";

function lutWords(bytes) {
  const words = new Uint16Array(Math.floor(bytes.byteLength / 2));
  const view = new DataView(bytes.buffer, bytes.byteOffset, words.length * 2);
  for (let i = 0; i < words.length; i++) words[i] = view.getUint16(i * 2, true);
  return words;
}

export class FrameLoader {
  constructor(client, { offeredMediaTypes, concurrency = 6 } = {}) {
    this.client = client;
    this.accept = frameAccept(offeredMediaTypes);
    this.concurrency = concurrency;
    this.stacks = [];
    this.active = null;
    this.inFlight = new Map(); // stack -> count
    this.controller = new AbortController();
    this.running = 0;
    this.luts = new Map(); // BulkDataURI -> Promise<Uint16Array>, one fetch per LUT
  }

  /** The stacks on screen; `active` gets the first free request. */
  show(stacks, active) {
    this.stacks = [...new Set(stacks.filter(Boolean))];
    this.active = active;
    this.pump();
  }

  focus(stack, index) {
    stack.cursor = index;
    this.pump();
  }

  close() {
    this.controller.abort();
    this.stacks = [];
  }

  pump() {
    while (this.running < this.concurrency) {
      const job = this.#next();
      if (!job) return;
      this.#start(job.stack, job.index);
    }
  }

  #next() {
    // The stack with the fewest requests under way goes next (the active one on a tie).
    let best = null;
    for (const stack of this.stacks) {
      if (stack.noImages) continue;
      const index = stack.nextToLoad();
      if (index < 0) continue;
      const busy = this.inFlight.get(stack) || 0;
      const score = busy * 2 - (stack === this.active ? 1 : 0);
      if (!best || score < best.score) best = { stack, index, score };
    }
    return best;
  }

  /** A VOI LUT's entries (16-bit words, PS3.3 C.11.2.1.1), inline or behind its BulkDataURI. */
  async #loadLUT(lut) {
    if (lut.inline && typeof lut.inline === "string") {
      lut.data = lutWords(Uint8Array.from(atob(lut.inline), (c) => c.charCodeAt(0)));
    } else if (Array.isArray(lut.inline)) {
      lut.data = Uint16Array.from(lut.inline);
    } else if (lut.uri) {
      if (!this.luts.has(lut.uri)) {
        const bytes = this.client.bulkData(lut.uri, { signal: this.controller.signal });
        this.luts.set(lut.uri, bytes.then(lutWords));
      }
      lut.data = await this.luts.get(lut.uri);
    }
    // Without data the image keeps its window or its range, as before.
  }

  async #start(stack, index) {
    const image = stack.images[index];
    stack.status[index] = STATUS.LOADING;
    this.running++;
    this.inFlight.set(stack, (this.inFlight.get(stack) || 0) + 1);
    try {
      let part = await this.client.frame(image.instance, image.frameNumber, {
        accept: this.accept,
        signal: this.controller.signal,
      });
      let bytes;
      try {
        bytes = await decodeFrame(part, image.info);
      } catch (error) {
        if (part.mediaType === "application/octet-stream") throw error;
        // A compressed frame we cannot decode: ask for it uncompressed, once.
        console.warn(`frame ${image.key}: ${error.message}; asking for it uncompressed`);
        part = await this.client.frame(image.instance, image.frameNumber, {
          accept: 'multipart/related; type="application/octet-stream"',
          signal: this.controller.signal,
        });
        bytes = await decodeFrame(part, image.info);
      }
      // A compressed part we decoded ourselves, or one the server decoded, is RGB.
      const rgbDecoded = image.info.serverDecodes || part.mediaType !== "application/octet-stream";
      if (image.info.voiLUT && !image.info.voiLUT.data) await this.#loadLUT(image.info.voiLUT);
      stack.frames[index] = toFrame(bytes, image.info, rgbDecoded);
      stack.status[index] = STATUS.LOADED;
      stack.loaded++;
    } catch (error) {
      if (error.name === "AbortError") return;
      stack.status[index] = STATUS.FAILED;
      stack.errors[index] =
        error instanceof UnsupportedImageError
          ? `This image cannot be shown: ${error.message}.`
          : error.message || String(error);
    } finally {
      this.running--;
      this.inFlight.set(stack, this.inFlight.get(stack) - 1);
      if (stack.done && !stack.finishedAt) stack.finishedAt = performance.now();
      stack.emit(index);
      this.pump();
    }
  }
}
