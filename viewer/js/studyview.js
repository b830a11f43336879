// The study view: series panel, toolbar, viewports in a layout, and the keys.

import { TAG, formatDate, number, personName, text } from "./dicom.js";
import { FrameLoader } from "./loader.js";
import { buildStack, dot, unitNormal } from "./stack.js";
import { Viewport } from "./viewport.js";

const LAYOUTS = { "1x1": 1, "1x2": 2, "2x2": 4 };
const FPS_CHOICES = [5, 10, 15, 20, 25, 30, 45, 60];
// Series of these modalities hold no pixels: no thumbnail is asked for.
const NON_IMAGE_MODALITIES = new Set(["SR", "KO", "PR", "DOC", "RTSTRUCT", "RTPLAN", "REG", "FID"]);

export class StudyView {
  constructor(root, { client, config, stats, onBack, showHelp }) {
    this.root = root;
    this.client = client;
    this.config = config;
    this.stats = stats;
    this.onBack = onBack;
    this.showHelp = showHelp;
    this.tools = { active: "wl" };
    this.viewports = [];
    this.active = null;
    this.stacks = new Map(); // series UID -> Promise<Stack>
    this.seriesRows = [];
    this.layout = "1x1";
    // Scrolling one series moves the others of the same frame of reference to
    // the same place: on by default, as in Weasis (S or the Link button).
    this.linked = true;
    this.thumbnailURLs = [];
    this.keyHandler = (event) => this.#key(event);
  }

  async open(studyUID) {
    this.close();
    this.studyUID = studyUID;
    this.loader = new FrameLoader(this.client, {
      offeredMediaTypes: this.config.capabilities?.frameMediaTypes,
    });
    this.stats.reset(studyUID);
    this.#buildSkeleton();
    document.addEventListener("keydown", this.keyHandler);
    this.#setStatus("Loading the study…");
    try {
      const [study, series] = await Promise.all([
        this.client.study(studyUID),
        this.client.searchSeries(studyUID),
      ]);
      if (this.studyUID !== studyUID) return;
      if (!study) {
        this.#setStatus("This study is not in the archive (it may have been deleted).", true);
        return;
      }
      this.study = study;
      this.#header(study);
      this.seriesRows = series.sort(
        (a, b) =>
          (number(a, TAG.SeriesNumber, 1e9) - number(b, TAG.SeriesNumber, 1e9)) ||
          text(a, TAG.SeriesDescription).localeCompare(text(b, TAG.SeriesDescription)),
      );
      if (!series.length) {
        this.#setStatus("This study has no series.", true);
        return;
      }
      this.#seriesPanel();
      this.#setStatus("");
      this.setLayout(this.layout);
    } catch (error) {
      if (error.name === "AbortError") return;
      this.#setStatus(error.message, true);
    }
  }

  close() {
    document.removeEventListener("keydown", this.keyHandler);
    this.loader?.close();
    for (const viewport of this.viewports) viewport.destroy();
    this.viewports = [];
    this.stacks.clear();
    for (const url of this.thumbnailURLs) URL.revokeObjectURL(url);
    this.thumbnailURLs = [];
    this.studyUID = null;
    this.root.innerHTML = "";
  }

  // -- page ------------------------------------------------------------------------

  #buildSkeleton() {
    this.root.innerHTML = `
      <header class="toolbar" role="toolbar" aria-label="Image tools">
        <button data-action="back" title="Back to the study list (B)">← Studies</button>
        <div class="study-title" data-role="study-title"></div>
        <div class="group" aria-label="Mouse tool">
          <button data-tool="wl" title="Window/level (W)">W/L</button>
          <button data-tool="pan" title="Pan (P)">Pan</button>
          <button data-tool="zoom" title="Zoom (Z)">Zoom</button>
          <button data-tool="length" title="Length in mm (L)">Length</button>
          <button data-tool="angle" title="Angle (A)">Angle</button>
        </div>
        <div class="group">
          <select data-role="preset" aria-label="Window preset" title="Window presets (1-6)"></select>
        </div>
        <div class="group">
          <button data-action="fit" title="Fit (F)">Fit</button>
          <button data-action="one-to-one" title="Native size (N)">1:1</button>
          <button data-action="reset" title="Reset (R)">Reset</button>
          <button data-action="invert" title="Invert (I)">Invert</button>
        </div>
        <div class="group">
          <button data-action="cine" title="Cine play/pause (Space)">▶ Cine</button>
          <select data-role="fps" aria-label="Cine frame rate" title="Frames per second ([ and ])">
            ${FPS_CHOICES.map((f) => `<option value="${f}">${f} fps</option>`).join("")}
          </select>
        </div>
        <div class="group" aria-label="Layout">
          <button data-action="link" title="Link scrolling of series in the same frame of reference (S)">Link</button>
          ${Object.keys(LAYOUTS)
            .map((l) => `<button data-layout="${l}" title="Layout ${l.replace("x", "×")} (M)">${l.replace("x", "×")}</button>`)
            .join("")}
        </div>
        <button data-action="help" title="Keyboard shortcuts (?)">?</button>
      </header>
      <div class="study-body">
        <aside class="series-panel" aria-label="Series"></aside>
        <main class="viewports"></main>
      </div>
      <div class="status-line"><span data-role="status"></span><span data-role="traffic"></span></div>`;
    this.seriesPanelEl = this.root.querySelector(".series-panel");
    this.viewportsEl = this.root.querySelector(".viewports");
    this.presetEl = this.root.querySelector("[data-role=preset]");
    this.fpsEl = this.root.querySelector("[data-role=fps]");
    this.root.querySelector(".toolbar").addEventListener("click", (event) => {
      const button = event.target.closest("button");
      if (!button) return;
      if (button.dataset.tool) this.setTool(button.dataset.tool);
      else if (button.dataset.layout) this.setLayout(button.dataset.layout);
      else this.#action(button.dataset.action);
    });
    this.presetEl.addEventListener("change", () => {
      const preset = this.active?.presets().find((p) => p.id === this.presetEl.value);
      this.active?.applyPreset(preset);
      this.presetEl.blur();
    });
    this.fpsEl.addEventListener("change", () => {
      this.active?.setFps(Number(this.fpsEl.value));
      this.fpsEl.blur();
    });
    this.setTool(this.tools.active);
    let trafficTimer = 0;
    this.stats.onTraffic = () => {
      if (trafficTimer) return;
      trafficTimer = setTimeout(() => {
        trafficTimer = 0;
        const traffic = this.root.querySelector("[data-role=traffic]");
        const bytes = this.stats.snapshot().bytes;
        if (traffic) traffic.textContent = `${(bytes / 1e6).toFixed(1)} MB received`;
      }, 250);
    };
  }

  #header(study) {
    const title = this.root.querySelector("[data-role=study-title]");
    const name = personName(study, TAG.PatientName) || "(no name)";
    title.textContent = `${name} · ${text(study, TAG.PatientID)} · ${formatDate(text(study, TAG.StudyDate))} · ${text(study, TAG.StudyDescription)}`;
    title.title = title.textContent;
    document.title = `${name} – pacs viewer`;
  }

  #setStatus(message, error = false) {
    const status = this.root.querySelector("[data-role=status]");
    if (!status) return;
    status.textContent = message;
    status.classList.toggle("error", error);
    this.viewportsEl?.classList.toggle("hidden", Boolean(error));
    if (error) {
      let box = this.root.querySelector(".study-error");
      if (!box) {
        box = document.createElement("div");
        box.className = "study-error";
        box.setAttribute("role", "alert");
        this.root.querySelector(".study-body").appendChild(box);
      }
      box.textContent = message;
    }
  }

  #seriesPanel() {
    const panel = this.seriesPanelEl;
    panel.innerHTML = "";
    for (const row of this.seriesRows) {
      const uid = text(row, TAG.SeriesInstanceUID);
      const card = document.createElement("button");
      card.className = "series";
      card.draggable = true;
      card.dataset.series = uid;
      const count = number(row, TAG.NumberOfSeriesRelatedInstances, 0);
      const description = text(row, TAG.SeriesDescription) || "(no description)";
      card.innerHTML = `
        <div class="thumb"><span class="thumb-placeholder">${text(row, TAG.Modality)}</span></div>
        <div class="series-text">
          <div class="series-desc"></div>
          <div class="series-meta"></div>
          <div class="series-progress" hidden><div class="bar"></div></div>
        </div>`;
      card.querySelector(".series-desc").textContent = description;
      card.querySelector(".series-meta").textContent =
        `Se ${text(row, TAG.SeriesNumber) || "–"} · ${text(row, TAG.Modality)} · ${count} image${count === 1 ? "" : "s"}`;
      card.title = `${description}: click to show in the active viewport, or drag onto a viewport`;
      card.addEventListener("click", () => this.showSeries(uid, this.active));
      card.addEventListener("dragstart", (event) => {
        event.dataTransfer.setData("application/x-series-uid", uid);
        event.dataTransfer.effectAllowed = "copy";
      });
      panel.appendChild(card);
      this.#thumbnail(row, card.querySelector(".thumb"));
    }
  }

  async #thumbnail(row, holder) {
    if (this.config.capabilities?.thumbnails === false) return;
    if (NON_IMAGE_MODALITIES.has(text(row, TAG.Modality))) {
      holder.classList.add("no-thumb");
      return;
    }
    try {
      const blob = await this.client.seriesThumbnail(this.studyUID, text(row, TAG.SeriesInstanceUID));
      const url = URL.createObjectURL(blob);
      this.thumbnailURLs.push(url);
      const img = new Image();
      img.alt = `Thumbnail of series ${text(row, TAG.SeriesNumber)}`;
      img.src = url;
      await img.decode();
      holder.innerHTML = "";
      holder.appendChild(img);
    } catch {
      holder.classList.add("no-thumb");
      holder.title = "No thumbnail (no image, or one the server cannot render)";
    }
  }

  // -- series and viewports --------------------------------------------------------

  stack(uid) {
    if (!this.stacks.has(uid)) {
      const row = this.seriesRows.find((r) => text(r, TAG.SeriesInstanceUID) === uid);
      const promise = this.client.seriesMetadata(this.studyUID, uid).then((instances) => {
        const stack = buildStack(row, instances);
        this.stats.stackCreated(stack);
        let timer = 0;
        stack.onChange(() => {
          // Ten updates a second at most: each one repaints.
          if (timer && !stack.done) return;
          clearTimeout(timer);
          timer = setTimeout(() => {
            timer = 0;
            this.#seriesProgress(stack);
          }, stack.done ? 0 : 100);
        });
        return stack;
      });
      promise.catch(() => this.stacks.delete(uid));
      this.stacks.set(uid, promise);
    }
    return this.stacks.get(uid);
  }

  async showSeries(uid, viewport) {
    if (!viewport || viewport.stack?.uid === uid) return;
    this.#markSeries();
    viewport.root.classList.add("busy");
    try {
      const stack = await this.stack(uid);
      viewport.setStack(stack);
      this.stats.watch(viewport);
      this.loader.show(
        this.viewports.map((v) => v.stack),
        this.active?.stack,
      );
      this.#seriesProgress(stack);
    } catch (error) {
      viewport.setStack(null);
      viewport.empty.textContent = error.message;
      viewport.root.classList.add("failed");
    } finally {
      viewport.root.classList.remove("busy");
      this.#markSeries();
      this.#syncToolbar();
    }
  }

  #seriesProgress(stack) {
    const card = this.seriesPanelEl.querySelector(`[data-series="${CSS.escape(stack.uid)}"]`);
    if (!card) return;
    const progress = card.querySelector(".series-progress");
    const loadable = stack.images.length - stack.serverRendered;
    progress.hidden = stack.done || !loadable;
    progress.firstElementChild.style.width = `${Math.round((100 * stack.loaded) / Math.max(1, loadable))}%`;
    if (stack.images.length > 1 && stack.images[0].frameCount > 1) {
      const meta = card.querySelector(".series-meta");
      const base = meta.textContent.split(" · ").slice(0, 2).join(" · ");
      meta.textContent = `${base} · ${stack.images.length} frames`;
    }
  }

  #markSeries() {
    const shown = new Set(this.viewports.map((v) => v.stack?.uid).filter(Boolean));
    for (const card of this.seriesPanelEl.querySelectorAll(".series")) {
      card.classList.toggle("shown", shown.has(card.dataset.series));
      card.classList.toggle("in-active", this.active?.stack?.uid === card.dataset.series);
    }
  }

  setLayout(layout) {
    if (!LAYOUTS[layout]) return;
    this.layout = layout;
    const wanted = LAYOUTS[layout];
    this.viewportsEl.className = `viewports layout-${layout}`;
    while (this.viewports.length > wanted) this.viewports.pop().destroy();
    while (this.viewports.length < wanted) {
      const viewport = new Viewport(this.viewportsEl, {
        index: this.viewports.length,
        loader: this.loader,
        client: this.client,
        study: this.study,
        tools: this.tools,
        onActivate: (v) => this.activate(v),
        onChange: (change) => this.#viewportChanged(change),
      });
      this.viewports.push(viewport);
    }
    if (!this.viewports.includes(this.active)) this.activate(this.viewports[0]);
    for (const button of this.root.querySelectorAll("[data-layout]")) {
      button.setAttribute("aria-pressed", String(button.dataset.layout === layout));
    }
    // Fill empty viewports with the next series not yet shown.
    const imageSeries = this.seriesRows.map((r) => text(r, TAG.SeriesInstanceUID));
    for (const viewport of this.viewports) {
      if (viewport.stack) continue;
      const shown = new Set(this.viewports.map((v) => v.stack?.uid));
      const next = imageSeries.find((uid) => !shown.has(uid) && !this.#pending(uid));
      if (next) {
        viewport.pendingSeries = next;
        this.showSeries(next, viewport).finally(() => (viewport.pendingSeries = null));
      }
    }
    this.loader.show(this.viewports.map((v) => v.stack), this.active?.stack);
    this.#markSeries();
  }

  #pending(uid) {
    return this.viewports.some((v) => v.pendingSeries === uid);
  }

  activate(viewport) {
    if (this.active === viewport) return;
    for (const v of this.viewports) v.root.classList.toggle("active", v === viewport);
    this.active = viewport;
    this.loader.show(this.viewports.map((v) => v.stack), viewport?.stack);
    this.#markSeries();
    this.#syncToolbar();
    this.#showReferences();
  }

  #viewportChanged(change) {
    if (change.type === "drop") this.showSeries(change.uid, change.viewport);
    // Only the viewport the user works in leads, so followers do not echo.
    if (change.type === "position" && this.linked && change.viewport === this.active) {
      this.#follow(change.viewport);
    }
    if (change.viewport === this.active) this.#syncToolbar();
    // A new series anywhere, or another slice in the active viewport: lines again.
    if (change.type === "stack" || (change.type === "position" && change.viewport === this.active)) {
      this.#showReferences();
    }
  }

  /** The active viewport's slice, as a reference line on the others (each draws
   * where that plane cuts its own image, when they share a frame of reference). */
  #showReferences() {
    const image = this.active?.image;
    const plane =
      image?.position && image.orientation && image.info.pixelSpacing
        ? {
            frame: text(image.instance, TAG.FrameOfReferenceUID),
            position: image.position,
            orientation: image.orientation,
            rows: image.info.rows,
            columns: image.info.columns,
            spacing: image.info.pixelSpacing,
          }
        : null;
    for (const viewport of this.viewports) {
      viewport.setReference(viewport === this.active || !plane?.frame ? null : plane);
    }
  }

  setTool(tool) {
    this.tools.active = tool;
    for (const button of this.root.querySelectorAll("[data-tool]")) {
      button.setAttribute("aria-pressed", String(button.dataset.tool === tool));
    }
    this.viewportsEl?.setAttribute("data-tool", tool);
  }

  #syncToolbar() {
    const v = this.active;
    if (!v) return;
    const presets = v.presets();
    const options = presets.map((p, i) => {
      const values = Number.isFinite(p.centre) ? ` (${p.centre}/${p.width})` : "";
      return `<option value="${p.id}">${i + 1}. ${p.name}${values}</option>`;
    });
    const html = `<option value="" disabled>Window preset…</option>${options.join("")}`;
    if (this.presetEl.dataset.html !== html) {
      this.presetEl.innerHTML = html;
      this.presetEl.dataset.html = html;
    }
    this.presetEl.value = "";
    const cine = this.root.querySelector("[data-action=cine]");
    cine.textContent = v.cine.playing ? "❚❚ Pause" : "▶ Cine";
    cine.setAttribute("aria-pressed", String(v.cine.playing));
    if (!FPS_CHOICES.includes(v.cine.fps)) {
      const option = document.createElement("option");
      option.value = String(v.cine.fps);
      option.textContent = `${v.cine.fps} fps`;
      this.fpsEl.appendChild(option);
    }
    this.fpsEl.value = String(v.cine.fps);
    this.root.querySelector("[data-action=invert]").setAttribute("aria-pressed", String(v.invert));
    this.root.querySelector("[data-action=link]").setAttribute("aria-pressed", String(this.linked));
  }

  #action(action) {
    const v = this.active;
    switch (action) {
      case "back":
        this.onBack();
        return;
      case "help":
        this.showHelp();
        return;
      case "fit":
        v?.fit();
        break;
      case "one-to-one":
        v?.oneToOne();
        break;
      case "reset":
        v?.reset();
        break;
      case "invert":
        v?.toggleInvert();
        break;
      case "cine":
        v?.toggleCine();
        break;
      case "link":
        this.linked = !this.linked;
        if (this.linked && v) this.#follow(v);
        break;
      default:
        return;
    }
    this.#syncToolbar();
  }

  /** Every other viewport to its slice nearest the one ``source`` shows, when
   * both series share a frame of reference and a slice orientation and the
   * place is within the other series (with half a slice gap to spare). */
  #follow(source) {
    const here = source.image;
    const frame = here && text(here.instance, TAG.FrameOfReferenceUID);
    if (!frame || !here.position || !here.orientation) return;
    const normal = unitNormal(here.orientation);
    const depth = dot(here.position, normal);
    for (const viewport of this.viewports) {
      const images = viewport.stack?.images;
      if (viewport === source || !images?.length) continue;
      let best = -1;
      let bestDistance = Infinity;
      const depths = [];
      images.forEach((image, i) => {
        if (!image.position || !image.orientation) return;
        if (text(image.instance, TAG.FrameOfReferenceUID) !== frame) return;
        if (Math.abs(Math.abs(dot(unitNormal(image.orientation), normal)) - 1) > 1e-3) return;
        const d = dot(image.position, normal);
        depths.push(d);
        if (Math.abs(d - depth) < bestDistance) {
          bestDistance = Math.abs(d - depth);
          best = i;
        }
      });
      if (best < 0) continue;
      depths.sort((a, b) => a - b);
      const gap = depths.length > 1 ? (depths[depths.length - 1] - depths[0]) / (depths.length - 1) : 0;
      if (depth < depths[0] - gap / 2 - 1e-3 || depth > depths[depths.length - 1] + gap / 2 + 1e-3) continue;
      viewport.go(best);
    }
  }

  #key(event) {
    if (event.defaultPrevented || event.altKey) return;
    const target = event.target;
    if (target.closest?.("input:not([type=range]), textarea, dialog[open]")) return;
    // In the toolbar's lists and on a slider, arrows move the control; other keys stay shortcuts.
    if (target.matches?.("select, input[type=range]") && /^Arrow|^Page|^Home|^End|^Enter| /.test(event.key)) return;
    if ((event.ctrlKey || event.metaKey) && !["+", "=", "-"].includes(event.key)) return;
    const v = this.active;
    const key = event.key;
    const lower = key.length === 1 ? key.toLowerCase() : key;
    let handled = true;
    switch (lower) {
      case "ArrowDown":
      case "ArrowRight":
        v?.scroll(1);
        break;
      case "ArrowUp":
      case "ArrowLeft":
        v?.scroll(-1);
        break;
      case "PageDown":
        v?.scroll(10);
        break;
      case "PageUp":
        v?.scroll(-10);
        break;
      case "Home":
        v?.go(0);
        break;
      case "End":
        v?.go(Infinity);
        break;
      case "w":
        this.setTool("wl");
        break;
      case "p":
        this.setTool("pan");
        break;
      case "z":
        this.setTool("zoom");
        break;
      case "l":
        this.setTool("length");
        break;
      case "a":
        this.setTool("angle");
        break;
      case "f":
        v?.fit();
        break;
      case "n":
        v?.oneToOne();
        break;
      case "+":
      case "=":
        v?.zoomBy(1.25);
        break;
      case "-":
        v?.zoomBy(0.8);
        break;
      case "r":
        v?.reset();
        break;
      case "i":
        v?.toggleInvert();
        break;
      case " ":
        v?.toggleCine();
        break;
      case "[":
        v?.setFps(v.cine.fps - (v.cine.fps > 10 ? 5 : 1));
        break;
      case "]":
        v?.setFps(v.cine.fps + (v.cine.fps >= 10 ? 5 : 1));
        break;
      case "m": {
        const names = Object.keys(LAYOUTS);
        this.setLayout(names[(names.indexOf(this.layout) + 1) % names.length]);
        break;
      }
      case "s":
        this.#action("link");
        break;
      case "v": {
        const at = this.viewports.indexOf(v);
        this.activate(this.viewports[(at + 1) % this.viewports.length]);
        break;
      }
      case "Delete":
      case "Backspace":
        v?.undoMeasurement();
        break;
      case "Escape":
        if (v?.drawing) {
          v.drawing = null;
          v.requestRender();
        } else handled = false;
        break;
      case "b":
        this.onBack();
        break;
      case "?":
      case "h":
        this.showHelp();
        break;
      default:
        if (/^[1-9]$/.test(key) && v) {
          const preset = v.presets()[this.#presetIndex(v, Number(key))];
          if (preset) v.applyPreset(preset);
          else handled = false;
        } else {
          handled = false;
        }
    }
    if (handled) {
      event.preventDefault();
      this.#syncToolbar();
    }
  }

  #presetIndex(viewport, digit) {
    // 1 is the image's (first) own window; 2-6 the CT presets, whatever the number of own windows.
    const presets = viewport.presets();
    const own = presets.filter((p) => p.own).length;
    return digit === 1 ? 0 : own + digit - 2;
  }
}
