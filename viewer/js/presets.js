// Window presets in Hounsfield units (centre, width), the values most CT
// departments use; the image's own window(s) come first.

export const CT_PRESETS = [
  { id: "brain", name: "CT brain", centre: 40, width: 80 },
  { id: "lung", name: "CT lung", centre: -600, width: 1500 },
  { id: "bone", name: "CT bone", centre: 400, width: 1800 },
  { id: "abdomen", name: "CT abdomen", centre: 60, width: 400 },
  { id: "mediastinum", name: "CT mediastinum", centre: 50, width: 350 },
];

/** The presets offered for an image: its own window(s), then the CT ones. */
export function presetsFor(info) {
  const own = (info?.windows || []).map((w, i) => ({
    id: `image-${i}`,
    name: `Image${w.name ? `: ${w.name}` : info.windows.length > 1 ? ` ${i + 1}` : ""}`,
    centre: w.centre,
    width: w.width,
    own: true,
  }));
  if (!own.length) {
    const lut = info?.voiLUT;
    const name = lut ? `Image: VOI LUT${lut.explanation ? ` ${lut.explanation}` : ""}` : "Image (full range)";
    own.push({ id: "image-0", name, own: true });
  }
  return [...own, ...CT_PRESETS];
}
