// What the viewer fetched and when: shown in the status line, and read by
// the benchmark (window.pacsViewer.stats.snapshot()).

export class Stats {
  constructor() {
    this.bytes = 0;
    this.requests = 0;
    this.onTraffic = null;
    this.reset(null);
    if (typeof PerformanceObserver !== "undefined") {
      // Resource timing holds what went over the wire (compressed bodies, headers).
      performance.setResourceTimingBufferSize?.(1 << 16);
      new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) {
          this.bytes += entry.transferSize || entry.encodedBodySize || 0;
          this.requests++;
        }
        performance.clearResourceTimings();
        this.onTraffic?.(this.bytes - this.bytesAtOpen);
      }).observe({ type: "resource", buffered: true });
    }
  }

  reset(studyUID) {
    this.studyUID = studyUID;
    this.openedAt = performance.now();
    this.firstImageAt = null;
    this.bytesAtOpen = this.bytes;
    this.requestsAtOpen = this.requests;
    this.stacks = [];
  }

  stackCreated(stack) {
    this.stacks.push(stack);
  }

  watch(viewport) {
    viewport.onDrawn = () => {
      if (this.firstImageAt === null) this.firstImageAt = performance.now();
    };
  }

  snapshot() {
    return {
      study: this.studyUID,
      firstImageMs: this.firstImageAt === null ? null : this.firstImageAt - this.openedAt,
      bytes: this.bytes - this.bytesAtOpen,
      requests: this.requests - this.requestsAtOpen,
      stacks: this.stacks.map((stack) => ({
        series: stack.uid,
        images: stack.images.length,
        loaded: stack.loaded,
        failed: stack.errors.filter(Boolean).length,
        done: stack.done,
        loadedMs: stack.finishedAt === null ? null : stack.finishedAt - this.openedAt,
      })),
    };
  }
}
