// One viewport: a canvas showing one image of a stack, its overlays, and
// the mouse, touch and keyboard interaction on it.
//
// Drawing: the frame goes through the display transform (pixels.js) into an
// image-sized offscreen canvas only when the image or the window changes;
// zoom and pan are a canvas transform of that (drawImage), so dragging or
// scrolling costs one table pass and one scaled copy per screen refresh.

import { TAG, formatDate, formatTime, personName, text } from "./dicom.js";
import { describe } from "./measure.js";
import {
  makeGreyTransform,
  rangeWindow,
  renderColour,
  renderGrey,
  valueAt,
} from "./pixels.js";
import { presetsFor } from "./presets.js";
import { STATUS, cross, dot, subtract } from "./stack.js";

const MIN_SCALE = 0.05;
const MAX_SCALE = 40;

function el(tag, className, parent) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (parent) parent.appendChild(node);
  return node;
}

function setText(node, value) {
  if (node.textContent !== value) node.textContent = value;
}

function setLines(node, lines) {
  const joined = lines.filter(Boolean).join("\n");
  setText(node, joined);
}

/** Orientation letters of a direction in patient space (LPS), strongest first. */
function directionLetters(vector) {
  const letters = [
    [vector[0], "L", "R"],
    [vector[1], "P", "A"],
    [vector[2], "H", "F"],
  ]
    .filter(([component]) => Math.abs(component) > 0.25)
    .sort((a, b) => Math.abs(b[0]) - Math.abs(a[0]))
    .map(([component, plus, minus]) => (component > 0 ? plus : minus));
  return letters.slice(0, 2).join("");
}

export class Viewport {
  constructor(host, { index, loader, client, study, tools, onActivate, onChange }) {
    this.index = index;
    this.loader = loader;
    this.client = client;
    this.study = study;
    this.tools = tools;
    this.onActivate = onActivate;
    this.onChange = onChange;
    this.stack = null;
    this.position = 0;
    this.window = null; // null: each image's own window
    this.invert = false;
    this.view = { fit: true, scale: 1, panX: 0, panY: 0 };
    this.measurements = new Map(); // image key -> [{type, points}]
    this.drawing = null;
    this.cine = { playing: false, fps: 15, last: 0, handle: 0 };
    this.rendered = new Map(); // server-rendered pictures: key -> ImageBitmap
    this.renderedPending = new Set();
    this.drawnKey = "";
    this.renderTimes = [];
    this.movingUntil = 0;
    this.reference = null; // another viewport's slice plane, drawn as a line
    this.#build(host);
  }

  #build(host) {
    const root = el("div", "viewport", host);
    root.dataset.viewport = String(this.index);
    root.tabIndex = -1;
    this.root = root;
    this.canvas = el("canvas", "image", root);
    this.canvas.setAttribute("aria-label", `Viewport ${this.index + 1}`);
    this.ctx = this.canvas.getContext("2d", { alpha: false });
    this.offscreen = document.createElement("canvas");
    this.offscreenCtx = this.offscreen.getContext("2d");
    this.labels = el("div", "labels", root);
    this.overlay = {
      tl: el("div", "overlay tl", root),
      tr: el("div", "overlay tr", root),
      bl: el("div", "overlay bl", root),
      br: el("div", "overlay br", root),
    };
    this.overlay.imageNumber = el("div", "image-number", this.overlay.bl);
    this.overlay.blRest = el("div", "", this.overlay.bl);
    this.overlay.windowText = el("div", "window-text", this.overlay.br);
    this.overlay.zoomText = el("div", "zoom-text", this.overlay.br);
    this.overlay.brRest = el("div", "", this.overlay.br);
    this.markers = {
      top: el("div", "marker top", root),
      bottom: el("div", "marker bottom", root),
      left: el("div", "marker left", root),
      right: el("div", "marker right", root),
    };
    this.progress = el("div", "progress", root);
    this.progressBar = el("div", "bar", this.progress);
    this.progressText = el("span", "", this.progress);
    this.message = el("div", "message", root);
    this.note = el("div", "note", root);
    this.slider = el("input", "slider", root);
    this.slider.type = "range";
    this.slider.min = "1";
    this.slider.max = "1";
    this.slider.setAttribute("aria-label", "Image number");
    this.slider.hidden = true;
    this.slider.addEventListener("input", () => this.go(Number(this.slider.value) - 1));
    this.empty = el("div", "empty", root);
    this.empty.textContent = "Drag a series here, or click one in the series panel";

    new ResizeObserver(() => this.requestRender()).observe(root);
    this.#bindPointer();
    root.addEventListener("dragover", (event) => {
      if (event.dataTransfer.types.includes("application/x-series-uid")) {
        event.preventDefault();
        root.classList.add("drop-target");
      }
    });
    root.addEventListener("dragleave", () => root.classList.remove("drop-target"));
    root.addEventListener("drop", (event) => {
      root.classList.remove("drop-target");
      const uid = event.dataTransfer.getData("application/x-series-uid");
      if (uid) {
        event.preventDefault();
        this.onActivate(this);
        this.onChange({ type: "drop", uid, viewport: this });
      }
    });
  }

  // -- what is shown ---------------------------------------------------------------

  get image() {
    return this.stack?.images[this.position] || null;
  }

  setStack(stack) {
    this.stopCine();
    if (this.unsubscribe) this.unsubscribe();
    this.stack = stack;
    this.position = 0;
    this.window = null;
    this.invert = false;
    this.view = { fit: true, scale: 1, panX: 0, panY: 0 };
    this.drawnKey = "";
    this.rendered.clear();
    this.root.classList.toggle("has-stack", Boolean(stack));
    if (!stack) {
      this.slider.hidden = true;
      this.requestRender();
      return;
    }
    this.root.dataset.series = stack.uid;
    this.slider.max = String(Math.max(1, stack.images.length));
    this.slider.value = "1";
    this.slider.hidden = stack.images.length < 2;
    const rate = this.#recommendedRate();
    if (rate) this.cine.fps = rate;
    this.unsubscribe = stack.onChange((index) => {
      if (index === this.position) {
        this.drawnKey = "";
        this.requestRender();
      } else {
        // Only the progress changed: no redraw of the canvas, and at most ten updates a second.
        this.#statusSoon();
      }
    });
    this.loader.focus(stack, 0);
    this.requestRender();
    this.onChange({ type: "stack", viewport: this });
  }

  setReference(plane) {
    this.reference = plane;
    // Redrawn only when its line changes: scrolling one of four viewports must
    // not repaint the three others when they show no line (parallel slices).
    const segment = plane && !this.stack?.noImages ? referenceSegment(plane, this.image) : null;
    if (segmentText(segment) !== (this.root.dataset.reference || "")) this.requestRender();
  }

  #recommendedRate() {
    const instance = this.stack?.images[0]?.instance;
    if (!instance) return 0;
    const rate =
      Number(text(instance, TAG.RecommendedDisplayFrameRate)) ||
      Number(text(instance, TAG.CineRate)) ||
      (Number(text(instance, TAG.FrameTime)) ? 1000 / Number(text(instance, TAG.FrameTime)) : 0);
    return rate > 0 && rate <= 120 ? Math.round(rate) : 0;
  }

  go(position) {
    if (!this.stack) return;
    const last = this.stack.images.length - 1;
    const next = Math.max(0, Math.min(last, Math.round(position)));
    if (next === this.position) return;
    this.position = next;
    this.drawing = null;
    this.moving();
    this.slider.value = String(next + 1);
    this.loader.focus(this.stack, next);
    this.requestRender();
    this.onChange({ type: "position", viewport: this });
  }

  scroll(delta) {
    this.go(this.position + delta);
  }

  // -- display state --------------------------------------------------------------

  /** The window in force for the current image (explicit, else the image's own, else its range). */
  effectiveWindow() {
    if (this.window) return this.window;
    const image = this.image;
    if (!image) return null;
    if (image.info.windows.length) return image.info.windows[0];
    const frame = this.stack.frames[this.position];
    if (!frame) return null;
    const lut = image.info.voiLUT;
    if (lut?.data && image.info.samplesPerPixel === 1) {
      // Its VOI LUT (PS3.3 C.11.2); a drag starts from the window over the LUT's input range.
      return { centre: lut.first + lut.entries / 2, width: lut.entries, lut };
    }
    return rangeWindow(frame, image.info);
  }

  setWindow(window) {
    this.window = window ? { centre: window.centre, width: Math.max(1, window.width) } : null;
    this.requestRender();
  }

  presets() {
    return presetsFor(this.image?.info);
  }

  applyPreset(preset) {
    if (!preset) return;
    if (preset.own && !Number.isFinite(preset.centre)) this.setWindow(null);
    else if (preset.own) this.setWindow(preset.id === "image-0" ? null : preset);
    else this.setWindow(preset);
  }

  toggleInvert() {
    this.invert = !this.invert;
    this.requestRender();
  }

  fit() {
    this.view = { fit: true, scale: 1, panX: 0, panY: 0 };
    this.requestRender();
  }

  oneToOne() {
    this.view = { fit: false, scale: 1, panX: 0, panY: 0 };
    this.requestRender();
  }

  reset() {
    this.window = null;
    this.invert = false;
    this.fit();
  }

  zoomBy(factor, around) {
    const { scale } = this.#geometry();
    const next = Math.max(MIN_SCALE, Math.min(MAX_SCALE, scale * factor));
    const rect = this.canvas.getBoundingClientRect();
    const point = around || { x: rect.width / 2, y: rect.height / 2 };
    // Keep the point under the pointer where it is.
    const cx = rect.width / 2 + this.view.panX;
    const cy = rect.height / 2 + this.view.panY;
    const k = next / scale;
    this.view = {
      fit: false,
      scale: next,
      panX: this.view.panX + (point.x - cx) * (1 - k),
      panY: this.view.panY + (point.y - cy) * (1 - k),
    };
    this.requestRender();
  }

  clearMeasurements() {
    if (this.image) this.measurements.delete(this.image.key);
    this.drawing = null;
    this.requestRender();
  }

  undoMeasurement() {
    const list = this.image && this.measurements.get(this.image.key);
    if (list?.length) list.pop();
    this.drawing = null;
    this.requestRender();
  }

  // -- cine ---------------------------------------------------------------------

  toggleCine() {
    if (this.cine.playing) this.stopCine();
    else this.startCine();
  }

  startCine() {
    if (!this.stack || this.stack.images.length < 2) return;
    this.cine.playing = true;
    this.cine.last = performance.now();
    const tick = (now) => {
      if (!this.cine.playing) return;
      if (now - this.cine.last >= 1000 / this.cine.fps - 2) {
        const next = (this.position + 1) % this.stack.images.length;
        // Wait for the next frame rather than skip it.
        if (this.stack.status[next] !== STATUS.LOADING && this.stack.status[next] !== STATUS.NONE) {
          this.cine.last = now;
          this.go(next);
        } else {
          this.loader.focus(this.stack, next);
        }
      }
      this.cine.handle = requestAnimationFrame(tick);
    };
    this.cine.handle = requestAnimationFrame(tick);
    this.onChange({ type: "cine", viewport: this });
  }

  stopCine() {
    if (!this.cine.playing) return;
    this.cine.playing = false;
    cancelAnimationFrame(this.cine.handle);
    this.onChange?.({ type: "cine", viewport: this });
  }

  setFps(fps) {
    this.cine.fps = Math.max(1, Math.min(120, fps));
    this.onChange({ type: "cine", viewport: this });
    this.requestRender();
  }

  // -- geometry -------------------------------------------------------------------

  #geometry() {
    const rect = this.canvas.getBoundingClientRect();
    const info = this.image?.info;
    const columns = info?.columns || 1;
    const rows = info?.rows || 1;
    const spacing = info?.pixelSpacing;
    const aspect = spacing && spacing.column > 0 ? spacing.row / spacing.column : 1;
    const fitScale = Math.min(rect.width / columns, rect.height / (rows * aspect)) || 1;
    const scale = this.view.fit ? fitScale : this.view.scale;
    const originX = rect.width / 2 + this.view.panX - (columns / 2) * scale;
    const originY = rect.height / 2 + this.view.panY - (rows / 2) * scale * aspect;
    return { rect, columns, rows, aspect, scale, originX, originY };
  }

  toImage(clientX, clientY) {
    const g = this.#geometry();
    return {
      x: (clientX - g.rect.left - g.originX) / g.scale,
      y: (clientY - g.rect.top - g.originY) / (g.scale * g.aspect),
    };
  }

  toScreen(point) {
    const g = this.#geometry();
    return { x: g.originX + point.x * g.scale, y: g.originY + point.y * g.scale * g.aspect };
  }

  // -- pointer --------------------------------------------------------------------

  #bindPointer() {
    const canvas = this.canvas;
    const pointers = new Map();
    let gesture = null;
    canvas.addEventListener("contextmenu", (event) => event.preventDefault());
    canvas.addEventListener("pointerdown", (event) => {
      this.onActivate(this);
      canvas.setPointerCapture(event.pointerId);
      pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      if (pointers.size === 2) {
        gesture = { type: "pinch", ...this.#pinchState(pointers) };
        this.drawing = null;
        return;
      }
      let tool = this.tools.active;
      if (event.button === 1 || (event.button === 0 && event.shiftKey)) tool = "pan";
      if (event.button === 2) tool = "zoom";
      gesture = this.#beginGesture(tool, event);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (this.drawing?.awaiting && !pointers.size) {
        // The third point of an angle follows the pointer until clicked.
        this.drawing.points[2] = this.toImage(event.clientX, event.clientY);
        this.requestRender();
      }
      this.#probe(event);
      if (!pointers.has(event.pointerId)) return;
      pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
      if (gesture?.type === "pinch" && pointers.size === 2) this.#pinch(gesture, pointers);
      else if (gesture) this.#moveGesture(gesture, event);
    });
    const end = (event) => {
      if (!pointers.has(event.pointerId)) return;
      pointers.delete(event.pointerId);
      if (gesture && gesture.type !== "pinch") this.#endGesture(gesture, event);
      if (!pointers.size) gesture = null;
    };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => setText(this.note, this.noteText || ""));
    canvas.addEventListener(
      "wheel",
      (event) => {
        event.preventDefault();
        this.onActivate(this);
        if (event.ctrlKey || event.metaKey) {
          const rect = canvas.getBoundingClientRect();
          this.zoomBy(Math.exp(-event.deltaY * 0.002), {
            x: event.clientX - rect.left,
            y: event.clientY - rect.top,
          });
          return;
        }
        // One image per wheel notch (100 px in Chrome); small trackpad deltas add up.
        this.wheelRest = (this.wheelRest || 0) + event.deltaY;
        const steps = Math.trunc(this.wheelRest / 50);
        if (steps) {
          this.wheelRest = 0;
          this.scroll(Math.sign(steps) * Math.max(1, Math.round(Math.abs(steps) / 2)));
        }
      },
      { passive: false },
    );
  }

  #pinchState(pointers) {
    const [a, b] = [...pointers.values()];
    return { distance: Math.hypot(a.x - b.x, a.y - b.y), mid: { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 } };
  }

  #pinch(gesture, pointers) {
    this.moving();
    const now = this.#pinchState(pointers);
    const rect = this.canvas.getBoundingClientRect();
    if (gesture.distance > 0) {
      this.zoomBy(now.distance / gesture.distance, { x: now.mid.x - rect.left, y: now.mid.y - rect.top });
    }
    this.view.panX += now.mid.x - gesture.mid.x;
    this.view.panY += now.mid.y - gesture.mid.y;
    gesture.distance = now.distance;
    gesture.mid = now.mid;
    this.requestRender();
  }

  #beginGesture(tool, event) {
    const start = { x: event.clientX, y: event.clientY };
    const point = this.toImage(event.clientX, event.clientY);
    if (tool === "angle" && this.drawing?.awaiting) {
      this.drawing.points[2] = point;
      return { type: "angle-third", start };
    }
    if (tool === "length" || tool === "angle") {
      if (!this.image || this.stack.status[this.position] === STATUS.FAILED) return null;
      this.drawing = { type: tool, points: [point, { ...point }] };
      return { type: "draw", start };
    }
    if (tool === "wl") {
      const window = this.effectiveWindow();
      if (!window) return null;
      const frame = this.stack?.frames[this.position];
      const info = this.image.info;
      let range = 4096;
      if (frame?.kind === "grey") range = Math.abs((frame.max - frame.min) * info.slope) || 1;
      else if (frame?.kind === "rgb") range = 256;
      // A server-rendered image is fetched again once the drag ends, not at every move.
      this.pointerBusy = true;
      return { type: "wl", start, window: { ...window }, sensitivity: Math.max(range / 800, 0.05) };
    }
    if (tool === "zoom") {
      const rect = this.canvas.getBoundingClientRect();
      return {
        type: "zoom",
        start,
        last: start,
        around: { x: start.x - rect.left, y: start.y - rect.top },
      };
    }
    return { type: "pan", start, last: start };
  }

  #moveGesture(gesture, event) {
    if (gesture.type !== "draw") this.moving();
    const dx = event.clientX - gesture.start.x;
    const dy = event.clientY - gesture.start.y;
    if (gesture.type === "wl") {
      this.setWindow({
        centre: gesture.window.centre + dy * gesture.sensitivity,
        width: gesture.window.width + dx * gesture.sensitivity,
      });
    } else if (gesture.type === "pan") {
      const g = this.#geometry();
      this.view = {
        fit: false,
        scale: g.scale,
        panX: this.view.panX + event.clientX - gesture.last.x,
        panY: this.view.panY + event.clientY - gesture.last.y,
      };
      gesture.last = { x: event.clientX, y: event.clientY };
      this.requestRender();
    } else if (gesture.type === "zoom") {
      this.zoomBy(Math.exp(-(event.clientY - gesture.last.y) * 0.01), gesture.around);
      gesture.last = { x: event.clientX, y: event.clientY };
    } else if (gesture.type === "draw" && this.drawing) {
      this.drawing.points[1] = this.toImage(event.clientX, event.clientY);
      this.requestRender();
    }
  }

  #endGesture(gesture, event) {
    this.pointerBusy = false;
    if (gesture.type === "wl") this.requestRender();
    if (gesture.type === "draw" && this.drawing) {
      const moved = Math.hypot(event.clientX - gesture.start.x, event.clientY - gesture.start.y);
      if (moved < 3) {
        this.drawing = null;
      } else if (this.drawing.type === "angle") {
        this.drawing.awaiting = true;
        this.drawing.points[2] = { ...this.drawing.points[1] };
      } else {
        this.#keep(this.drawing);
      }
      this.requestRender();
    } else if (gesture.type === "angle-third" && this.drawing) {
      this.drawing.awaiting = false;
      this.#keep(this.drawing);
      this.requestRender();
    }
  }

  #keep(measurement) {
    const key = this.image.key;
    if (!this.measurements.has(key)) this.measurements.set(key, []);
    this.measurements.get(key).push({ type: measurement.type, points: measurement.points });
    this.drawing = null;
    this.onChange({ type: "measurement", viewport: this });
  }

  #probe(event) {
    // The value under the pointer, in the image's units (HU for CT).
    const frame = this.stack?.frames[this.position];
    if (!frame || !this.image) return;
    const p = this.toImage(event.clientX, event.clientY);
    const v = valueAt(frame, this.image.info, p.x, p.y);
    const unit = this.image.info.rescaleType === "HU" || text(this.image.instance, TAG.Modality) === "CT" ? " HU" : "";
    this.probeText =
      v === null ? "" : `(${Math.floor(p.x)}, ${Math.floor(p.y)}) ${Number(v.toFixed(2))}${unit}`;
    this.requestRender();
  }

  // -- drawing --------------------------------------------------------------------

  /** Note that the picture is in motion: draw fast for a moment. */
  moving() {
    this.movingUntil = performance.now() + 250;
  }

  requestRender() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const started = performance.now();
    const canvas = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const rect = canvas.getBoundingClientRect();
    const width = Math.max(1, Math.round(rect.width * dpr));
    const height = Math.max(1, Math.round(rect.height * dpr));
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, width, height);
    const image = this.stack?.noImages ? null : this.image;
    if (!image) {
      this.#updateStatus();
      this.#labels([]);
      this.#overlays(null);
      return;
    }
    const source = this.#pictureFor(image);
    this.#updateStatus();
    if (source) {
      const g = this.#geometry();
      ctx.setTransform(dpr * g.scale, 0, 0, dpr * g.scale * g.aspect, dpr * g.originX, dpr * g.originY);
      // Interpolated, as film and most viewers show it; pixels show as blocks only far in.
      // While the image moves (scrolling, dragging, cine) plain bilinear, ~3x cheaper
      // on a CPU-drawn canvas; the best filter once it rests.
      ctx.imageSmoothingEnabled = g.scale < 8;
      const moving = performance.now() < this.movingUntil;
      ctx.imageSmoothingQuality = moving ? "low" : "high";
      if (moving) {
        clearTimeout(this.restTimer);
        this.restTimer = setTimeout(() => this.requestRender(), this.movingUntil - performance.now() + 20);
      }
      ctx.drawImage(source, 0, 0, image.info.columns, image.info.rows);
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      this.#drawReference(ctx, image);
      this.#drawMeasurements(ctx);
      this.onDrawn?.();
    } else {
      this.#labels([]);
    }
    this.#overlays(image);
    this.renderTimes.push(performance.now() - started);
    if (this.renderTimes.length > 120) this.renderTimes.shift();
    this.root.dataset.rendered = String((Number(this.root.dataset.rendered) || 0) + 1);
  }

  #pictureFor(image) {
    const status = this.stack.status[this.position];
    if (status === STATUS.SERVER) return this.#serverPicture(image);
    const frame = this.stack.frames[this.position];
    if (!frame) return null;
    const window = this.effectiveWindow();
    const key = `${this.position}|${window.centre}|${window.width}|${this.invert}|${window.lut ? "lut" : ""}`;
    if (key !== this.drawnKey) {
      const { columns, rows } = frame;
      if (this.offscreen.width !== columns || this.offscreen.height !== rows) {
        this.offscreen.width = columns;
        this.offscreen.height = rows;
        this.imageData = null;
      }
      if (!this.imageData) this.imageData = this.offscreenCtx.createImageData(columns, rows);
      if (frame.kind === "grey") {
        renderGrey(frame, this.#transform(image.info, window), new Uint32Array(this.imageData.data.buffer));
      } else {
        renderColour(frame, window, this.invert, this.imageData.data);
      }
      this.offscreenCtx.putImageData(this.imageData, 0, 0);
      this.drawnKey = key;
    }
    return this.offscreen;
  }

  #transform(info, window) {
    const key = [
      info.bitsStored,
      info.pixelRepresentation,
      info.slope,
      info.intercept,
      info.photometric,
      info.voiFunction,
      window.centre,
      window.width,
      window.lut ? `lut:${window.lut.first}:${window.lut.entries}:${window.lut.uri}` : "",
      this.invert,
    ].join("|");
    if (this.transformKey !== key) {
      this.transformCache = makeGreyTransform(info, window, this.invert);
      this.transformKey = key;
    }
    return this.transformCache;
  }

  #serverPicture(image) {
    // The browser pipeline cannot show this image: the server renders it,
    // again for each window asked for.
    const window = this.window;
    const key = `${image.key}|${window ? `${window.centre},${window.width}` : ""}|${this.invert}`;
    const ready = this.rendered.get(key);
    if (ready) {
      this.lastRendered = { key: image.key, bitmap: ready };
      return ready;
    }
    if (!this.renderedPending.has(key) && !this.pointerBusy) {
      this.renderedPending.add(key);
      this.client
        .renderedFrame(image.instance, image.frameNumber, { window })
        .then((blob) => createImageBitmap(blob))
        .then((bitmap) => {
          let picture = bitmap;
          if (this.invert) picture = this.#inverted(bitmap);
          if (this.rendered.size > 64) this.rendered.delete(this.rendered.keys().next().value);
          this.rendered.set(key, picture);
        })
        .catch((error) => {
          this.stack.errors[this.position] = `This image cannot be shown: ${error.message}`;
          this.stack.status[this.position] = STATUS.FAILED;
        })
        .finally(() => {
          this.renderedPending.delete(key);
          this.requestRender();
        });
    }
    // Meanwhile the previous picture of the same image, if any.
    return this.lastRendered?.key === image.key ? this.lastRendered.bitmap : null;
  }

  #inverted(bitmap) {
    const canvas = document.createElement("canvas");
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    const ctx = canvas.getContext("2d");
    ctx.filter = "invert(1)";
    ctx.drawImage(bitmap, 0, 0);
    return canvas;
  }

  #drawReference(ctx, image) {
    const segment = this.reference && referenceSegment(this.reference, image);
    // The line's ends in image pixels, for tests and for anyone inspecting the page.
    this.root.dataset.reference = segmentText(segment);
    if (!segment) return;
    const [a, b] = segment.map((p) => this.toScreen(p));
    ctx.strokeStyle = "#facc15";
    ctx.lineWidth = 1;
    ctx.setLineDash([6, 4]);
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
    ctx.setLineDash([]);
  }

  #drawMeasurements(ctx) {
    const list = [...(this.measurements.get(this.image.key) || [])];
    if (this.drawing) list.push(this.drawing);
    const labels = [];
    ctx.lineWidth = 1.5;
    ctx.font = "12px system-ui, sans-serif";
    for (const m of list) {
      const points = m.points.filter(Boolean).map((p) => this.toScreen(p));
      ctx.strokeStyle = m === this.drawing ? "#ffd54a" : "#4ade80";
      ctx.beginPath();
      points.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
      ctx.stroke();
      ctx.fillStyle = ctx.strokeStyle;
      for (const p of points) ctx.fillRect(p.x - 2.5, p.y - 2.5, 5, 5);
      const described = describe(m, this.image.info);
      if (described.text) {
        const anchor = points[m.type === "angle" ? 1 : points.length - 1];
        labels.push({ ...described, x: anchor.x, y: anchor.y, type: m.type });
      }
    }
    this.#labels(labels);
  }

  #labels(labels) {
    const nodes = this.labels.children;
    while (nodes.length > labels.length) this.labels.lastChild.remove();
    labels.forEach((label, i) => {
      const node = nodes[i] || el("div", "measurement-label", this.labels);
      node.dataset.type = label.type;
      setText(node, label.text);
      node.title = label.note || "";
      node.classList.toggle("warn", Boolean(label.note));
      node.style.transform = `translate(${Math.round(label.x + 8)}px, ${Math.round(label.y - 20)}px)`;
    });
    const note = labels.find((label) => label.note)?.note || "";
    this.noteText = note;
    setText(this.note, note);
  }

  #statusSoon() {
    if (this.statusTimer) return;
    this.statusTimer = setTimeout(() => {
      this.statusTimer = 0;
      this.#updateStatus();
    }, 100);
  }

  #updateStatus() {
    const stack = this.stack;
    if (!stack) {
      setText(this.message, "");
      this.progress.hidden = true;
      return;
    }
    const total = stack.images.length;
    const loadable = total - stack.serverRendered;
    this.progress.hidden = stack.done || stack.noImages || loadable === 0;
    const share = loadable ? stack.loaded / loadable : 1;
    this.progressBar.style.width = `${Math.round(share * 100)}%`;
    setText(this.progressText, `Loading ${stack.loaded}/${loadable}`);
    let message = "";
    const status = stack.status[this.position];
    if (stack.noImages) {
      const modality = text(stack.series, TAG.Modality);
      message = `This series holds no images${modality ? ` (${modality})` : ""}: nothing to display.`;
    } else if (status === STATUS.FAILED) {
      message = stack.errors[this.position] || "This image could not be loaded.";
    } else if (status === STATUS.LOADING || status === STATUS.NONE) {
      message = "Loading image…";
    } else if (status === STATUS.SERVER && this.lastRendered?.key !== this.image?.key) {
      message = "Rendering on the server…";
    }
    this.message.classList.toggle("error", status === STATUS.FAILED || stack.noImages);
    setText(this.message, message);
  }

  #overlays(image) {
    if (!image) {
      for (const key of ["tl", "tr"]) setText(this.overlay[key], "");
      setText(this.overlay.imageNumber, "");
      setText(this.overlay.blRest, "");
      setText(this.overlay.windowText, "");
      setText(this.overlay.zoomText, "");
      setText(this.overlay.brRest, "");
      for (const marker of Object.values(this.markers)) setText(marker, "");
      return;
    }
    const instance = image.instance;
    const study = this.study || {};
    const name = personName(instance, TAG.PatientName) || personName(study, TAG.PatientName);
    const sex = text(instance, TAG.PatientSex);
    const birth = formatDate(text(instance, TAG.PatientBirthDate));
    setLines(this.overlay.tl, [
      name,
      `ID ${text(instance, TAG.PatientID) || text(study, TAG.PatientID)}`,
      [birth, sex, text(instance, TAG.PatientAge)].filter(Boolean).join("  "),
    ]);
    const seriesNumber = text(instance, TAG.SeriesNumber);
    setLines(this.overlay.tr, [
      text(instance, TAG.InstitutionName),
      text(instance, TAG.StudyDescription) || text(study, TAG.StudyDescription),
      `${formatDate(text(instance, TAG.StudyDate) || text(study, TAG.StudyDate))} ${formatTime(text(instance, TAG.StudyTime))}`.trim(),
      `${seriesNumber ? `Se ${seriesNumber}: ` : ""}${text(instance, TAG.SeriesDescription) || text(instance, TAG.Modality)}`,
    ]);
    const total = this.stack.images.length;
    const frameText =
      image.frameCount > 1 ? `  Fr ${image.frameNumber}/${image.frameCount}` : "";
    setText(this.overlay.imageNumber, `Im ${this.position + 1}/${total}${frameText}`);
    const location = Number.isFinite(image.sliceLocation)
      ? image.sliceLocation
      : image.position
        ? image.position[2]
        : null;
    setLines(this.overlay.blRest, [
      location !== null ? `Loc ${location.toFixed(1)} mm` : "",
      Number.isFinite(image.sliceThickness) ? `Thk ${image.sliceThickness} mm` : "",
      this.cine.playing ? `Cine ${this.cine.fps} fps` : "",
      this.probeText || "",
    ]);
    const window = this.effectiveWindow();
    const server = this.stack.status[this.position] === STATUS.SERVER;
    setText(
      this.overlay.windowText,
      window?.lut
        ? `VOI LUT${window.lut.explanation ? `: ${window.lut.explanation}` : ""}`
        : window && !(server && !this.window)
          ? `W ${Math.round(window.width)}  L ${Math.round(window.centre)}`
        : server
          ? "W/L: image's own"
          : "",
    );
    setText(this.overlay.zoomText, `Zoom ${Math.round(this.#geometry().scale * 100)}%`);
    setLines(this.overlay.brRest, [
      this.invert ? "Inverted" : "",
      image.info.lossy ? "Lossy compressed" : "",
      server ? "Rendered by the server" : "",
    ]);
    const o = image.orientation;
    if (o) {
      const row = o.slice(0, 3);
      const column = o.slice(3, 6);
      setText(this.markers.right, directionLetters(row));
      setText(this.markers.left, directionLetters(row.map((v) => -v)));
      setText(this.markers.bottom, directionLetters(column));
      setText(this.markers.top, directionLetters(column.map((v) => -v)));
    } else {
      for (const marker of Object.values(this.markers)) setText(marker, "");
    }
  }

  destroy() {
    this.stopCine();
    clearTimeout(this.restTimer);
    if (this.unsubscribe) this.unsubscribe();
    this.root.remove();
  }
}

function segmentText(segment) {
  return segment ? segment.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(" ") : "";
}

/** Where the plane of another slice cuts ``image``: its two ends in image
 * pixels (x: column, y: row), limited to both images, or ``null`` when the
 * slices do not share a frame of reference or are parallel. */
export function referenceSegment(plane, image) {
  if (!image?.position || !image.orientation || !image.info.pixelSpacing) return null;
  if (text(image.instance, TAG.FrameOfReferenceUID) !== plane.frame) return null;
  const [r, c] = [image.orientation.slice(0, 3), image.orientation.slice(3, 6)];
  const [pr, pc] = [plane.orientation.slice(0, 3), plane.orientation.slice(3, 6)];
  const n = cross(pr, pc);
  // Own pixel (x, y) is at position + x * dx * r + y * dy * c (PS3.3 C.7.6.2.1.1).
  const dx = image.info.pixelSpacing.column;
  const dy = image.info.pixelSpacing.row;
  const a = dot(r, n) * dx;
  const b = dot(c, n) * dy;
  const d = dot(subtract(image.position, plane.position), n);
  if (Math.abs(a) < 1e-6 && Math.abs(b) < 1e-6) return null; // parallel slices
  // The line a x + b y + d = 0 across the image's pixel extent.
  const [w, h] = [image.info.columns - 1, image.info.rows - 1];
  const ends = [];
  if (Math.abs(b) > 1e-9) {
    for (const x of [0, w]) {
      const y = -(a * x + d) / b;
      if (y >= -1e-6 && y <= h + 1e-6) ends.push({ x, y });
    }
  }
  if (Math.abs(a) > 1e-9) {
    for (const y of [0, h]) {
      const x = -(b * y + d) / a;
      if (x >= -1e-6 && x <= w + 1e-6) ends.push({ x, y });
    }
  }
  const unique = ends.filter((p, i) => ends.findIndex((q) => Math.hypot(p.x - q.x, p.y - q.y) < 1e-3) === i);
  if (unique.length < 2) return null;
  // Then only the part inside the other slice.
  const toPatient = (p) => image.position.map((v, i) => v + p.x * dx * r[i] + p.y * dy * c[i]);
  const inPlane = (p) => {
    const offset = subtract(toPatient(p), plane.position);
    return [dot(offset, pr) / plane.spacing.column, dot(offset, pc) / plane.spacing.row];
  };
  const [p0, p1] = [unique[0], unique[1]];
  const [u0, u1] = [inPlane(p0), inPlane(p1)];
  let [t0, t1] = [0, 1];
  const limits = [plane.columns - 1, plane.rows - 1];
  for (let k = 0; k < 2; k++) {
    const [start, delta] = [u0[k], u1[k] - u0[k]];
    if (Math.abs(delta) < 1e-9) {
      if (start < -1e-6 || start > limits[k] + 1e-6) return null;
      continue;
    }
    let [enter, leave] = [(0 - start) / delta, (limits[k] - start) / delta];
    if (enter > leave) [enter, leave] = [leave, enter];
    t0 = Math.max(t0, enter);
    t1 = Math.min(t1, leave);
  }
  if (t1 - t0 < 1e-6) return null;
  const at = (t) => ({ x: p0.x + t * (p1.x - p0.x), y: p0.y + t * (p1.y - p0.y) });
  return [at(t0), at(t1)];
}
