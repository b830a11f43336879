// Reading DICOM JSON (PS3.18 F.2): attribute values, person names, dates.

export const TAG = {
  SpecificCharacterSet: "00080005",
  ImageType: "00080008",
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyDate: "00080020",
  SeriesDate: "00080021",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  InstitutionName: "00080080",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  AvailableTransferSyntaxUID: "00083002",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  PatientAge: "00101010",
  SliceThickness: "00180050",
  SpacingBetweenSlices: "00180088",
  FrameTime: "00181063",
  CineRate: "00180040",
  RecommendedDisplayFrameRate: "00082144",
  ImagerPixelSpacing: "00181164",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  ImagePositionPatient: "00200032",
  FrameOfReferenceUID: "00200052",
  ImageOrientationPatient: "00200037",
  SliceLocation: "00201041",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  PlanarConfiguration: "00280006",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  PixelAspectRatio: "00280034",
  BitsAllocated: "00280100",
  BitsStored: "00280101",
  HighBit: "00280102",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  RescaleType: "00281054",
  WindowCenterWidthExplanation: "00281055",
  VOILUTFunction: "00281056",
  LossyImageCompression: "00282110",
  LossyImageCompressionRatio: "00282112",
  ModalityLUTSequence: "00283000",
  VOILUTSequence: "00283010",
  LUTDescriptor: "00283002",
  LUTExplanation: "00283003",
  LUTData: "00283006",
  RedPaletteColorLookupTableDescriptor: "00281101",
  PixelData: "7FE00010",
  FloatPixelData: "7FE00008",
  DoubleFloatPixelData: "7FE00009",
  SharedFunctionalGroupsSequence: "52009229",
  PerFrameFunctionalGroupsSequence: "52009230",
  PixelMeasuresSequence: "00289110",
  PlanePositionSequence: "00209113",
  PlaneOrientationSequence: "00209116",
  FrameVOILUTSequence: "00289132",
  PixelValueTransformationSequence: "00289145",
};

/** All values of an attribute (an empty list when absent or empty). */
export function values(dataset, tag) {
  const element = dataset?.[tag];
  return element && Array.isArray(element.Value) ? element.Value : [];
}

/** The first value of an attribute, or `fallback`. */
export function value(dataset, tag, fallback = undefined) {
  const list = values(dataset, tag);
  return list.length ? list[0] : fallback;
}

/** A numeric attribute (DS and IS arrive as numbers or as strings). */
export function number(dataset, tag, fallback = undefined) {
  const found = value(dataset, tag);
  if (found === undefined || found === null || found === "") return fallback;
  const parsed = Number(found);
  return Number.isFinite(parsed) ? parsed : fallback;
}

export function numbers(dataset, tag) {
  return values(dataset, tag).map(Number).filter(Number.isFinite);
}

export function text(dataset, tag, fallback = "") {
  const found = value(dataset, tag);
  return found === undefined || found === null ? fallback : String(found);
}

/** Items of a sequence attribute. */
export function items(dataset, tag) {
  return values(dataset, tag).filter((item) => item && typeof item === "object");
}

/**
 * A person name for display: its components in the order they are stored,
 * family name first (the Vietnamese and DICOM order), `^` shown as spaces.
 */
export function personName(dataset, tag) {
  const found = value(dataset, tag);
  if (!found) return "";
  const alphabetic = typeof found === "string" ? found : found.Alphabetic || found.Ideographic || "";
  return alphabetic
    .split("^")
    .map((part) => part.trim())
    .filter(Boolean)
    .join(" ");
}

/** 20240115 -> 2024-01-15 (ISO 8601, unambiguous in every country). */
export function formatDate(da) {
  if (!da || da.length < 8) return da || "";
  return `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}`;
}

/** 093000.123 -> 09:30 */
export function formatTime(tm) {
  if (!tm || tm.length < 4) return tm || "";
  return `${tm.slice(0, 2)}:${tm.slice(2, 4)}`;
}

/** yyyy-mm-dd (an <input type=date> value) -> yyyymmdd */
export function toDicomDate(isoDate) {
  return (isoDate || "").replaceAll("-", "");
}

export const NATIVE_TRANSFER_SYNTAXES = new Set([
  "1.2.840.10008.1.2",
  "1.2.840.10008.1.2.1",
  "1.2.840.10008.1.2.1.99",
  "1.2.840.10008.1.2.2",
]);
