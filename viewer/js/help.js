// Keyboard shortcuts: one table, used by the key handler and by the help overlay.

export const SHORTCUTS = [
  { keys: ["↓", "→"], action: "next", label: "Next image" },
  { keys: ["↑", "←"], action: "previous", label: "Previous image" },
  { keys: ["Page Down", "Page Up"], action: "page", label: "Ten images on / back" },
  { keys: ["Home", "End"], action: "ends", label: "First / last image" },
  { keys: ["W"], action: "tool:wl", label: "Window/level tool (drag: ↔ width, ↕ level)" },
  { keys: ["P"], action: "tool:pan", label: "Pan tool" },
  { keys: ["Z"], action: "tool:zoom", label: "Zoom tool (drag up/down)" },
  { keys: ["L"], action: "tool:length", label: "Length tool (drag)" },
  { keys: ["A"], action: "tool:angle", label: "Angle tool (drag the first arm, click the third point)" },
  { keys: ["1"], action: "preset:0", label: "The image's own window" },
  { keys: ["2", "3", "4", "5", "6"], action: "preset:n", label: "CT brain, lung, bone, abdomen, mediastinum" },
  { keys: ["F"], action: "fit", label: "Fit the image to the viewport" },
  { keys: ["N"], action: "one-to-one", label: "Native size (1 image pixel : 1 screen pixel)" },
  { keys: ["+", "−"], action: "zoom", label: "Zoom in / out" },
  { keys: ["R"], action: "reset", label: "Reset window, zoom and pan" },
  { keys: ["I"], action: "invert", label: "Invert grey levels" },
  { keys: ["Space"], action: "cine", label: "Cine play / pause" },
  { keys: ["[", "]"], action: "fps", label: "Cine slower / faster" },
  { keys: ["M"], action: "layout", label: "Next layout (1×1, 1×2, 2×2)" },
  { keys: ["V"], action: "next-viewport", label: "Next viewport" },
  { keys: ["S"], action: "link", label: "Link scrolling of series in the same frame of reference (on / off)" },
  { keys: ["Delete"], action: "undo-measurement", label: "Remove the last measurement on this image" },
  { keys: ["Esc"], action: "escape", label: "Cancel a measurement, close this help" },
  { keys: ["B"], action: "back", label: "Back to the study list" },
  { keys: ["?", "H"], action: "help", label: "Show / hide this help" },
];

export const MOUSE = [
  ["Wheel", "Scroll through the stack"],
  ["Ctrl + wheel", "Zoom around the pointer"],
  ["Left drag", "The selected tool"],
  ["Middle drag, Shift + drag", "Pan"],
  ["Right drag", "Zoom"],
  ["Two fingers", "Pinch to zoom, move to pan"],
  ["Drag a series", "Onto a viewport to show it there"],
];

/** The help dialog, built once from the tables above. */
export function buildHelp(dialog) {
  dialog.innerHTML = "";
  const title = document.createElement("h2");
  title.textContent = "Keyboard and mouse";
  dialog.appendChild(title);
  const columns = document.createElement("div");
  columns.className = "help-columns";
  dialog.appendChild(columns);
  const table = (rows) => {
    const t = document.createElement("table");
    for (const [keys, label] of rows) {
      const tr = t.insertRow();
      const th = document.createElement("th");
      th.innerHTML = keys.map((k) => `<kbd>${k}</kbd>`).join(" ");
      tr.appendChild(th);
      tr.insertCell().textContent = label;
    }
    columns.appendChild(t);
  };
  table(SHORTCUTS.map((s) => [s.keys, s.label]));
  const mouse = MOUSE.map(([what, label]) => [[what], label]);
  table(mouse);
  const close = document.createElement("button");
  close.textContent = "Close";
  close.className = "close";
  close.addEventListener("click", () => dialog.close());
  dialog.appendChild(close);
}
