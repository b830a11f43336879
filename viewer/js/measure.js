// Measurements in image coordinates (column, row), so that they stay on the
// anatomy through zoom and pan; millimetres come from Pixel Spacing.

/** Length of a segment in mm, or null when the image has no spacing. */
export function lengthMm(a, b, spacing) {
  if (!spacing) return null;
  const dx = (b.x - a.x) * spacing.column;
  const dy = (b.y - a.y) * spacing.row;
  return Math.hypot(dx, dy);
}

export function lengthPixels(a, b) {
  return Math.hypot(b.x - a.x, b.y - a.y);
}

/** Angle at `vertex` between the arms to `a` and `c`, in degrees, in patient space. */
export function angleDegrees(a, vertex, c, spacing) {
  const sx = spacing ? spacing.column : 1;
  const sy = spacing ? spacing.row : 1;
  const u = [(a.x - vertex.x) * sx, (a.y - vertex.y) * sy];
  const v = [(c.x - vertex.x) * sx, (c.y - vertex.y) * sy];
  const norms = Math.hypot(...u) * Math.hypot(...v);
  if (!norms) return 0;
  const cosine = Math.min(1, Math.max(-1, (u[0] * v[0] + u[1] * v[1]) / norms));
  return (Math.acos(cosine) * 180) / Math.PI;
}

/** The label of a measurement, and a note when millimetres are not available. */
export function describe(measurement, info) {
  const [a, b, c] = measurement.points;
  if (measurement.type === "angle") {
    if (!c) return { text: "" };
    return { text: `${angleDegrees(a, b, c, info.pixelSpacing).toFixed(1)}°` };
  }
  const mm = lengthMm(a, b, info.pixelSpacing);
  if (mm === null) {
    return {
      text: `${lengthPixels(a, b).toFixed(1)} px`,
      note: "No Pixel Spacing in this image: length in pixels, not millimetres",
    };
  }
  const label = mm >= 100 ? `${mm.toFixed(1)} mm` : `${mm.toFixed(2)} mm`;
  if (info.spacingKind === "detector") {
    return { text: label, note: "Imager Pixel Spacing: measured at the detector, not corrected for magnification" };
  }
  return { text: label };
}
