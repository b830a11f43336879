// The one way the viewer talks to the archive: DICOMweb (PS3.18) over fetch.
//
// Everything that touches the network is here, so that authentication (a
// bearer token or a session cookie) is added in `#headers`/`#credentials`
// and a new frame encoding is one more entry in codecs.js, never a change
// scattered through the viewer.

import { TAG, value } from "./dicom.js";

export const DICOM_JSON = "application/dicom+json";

/** Why a request failed: `unreachable` (no answer), `http` (an error status), `format`. */
export class ArchiveError extends Error {
  constructor(kind, message, status = 0) {
    super(message);
    this.name = "ArchiveError";
    this.kind = kind;
    this.status = status;
  }
}

export class DicomWebClient {
  /**
   * @param {object} options
   * @param {string} options.root absolute DICOMweb root URL (no trailing slash)
   * @param {{type: string, token?: string}} [options.auth] none | bearer | cookie
   */
  constructor({ root, auth = { type: "none" } }) {
    this.root = root.replace(/\/+$/, "");
    this.auth = auth;
  }

  #headers(accept) {
    const headers = new Headers();
    if (accept) headers.set("Accept", accept);
    if (this.auth.type === "bearer" && this.auth.token) {
      headers.set("Authorization", `Bearer ${this.auth.token}`);
    }
    return headers;
  }

  #credentials() {
    return this.auth.type === "cookie" ? "include" : "same-origin";
  }

  url(path, params) {
    const url = new URL(this.root + path);
    for (const [key, val] of Object.entries(params || {})) {
      if (val !== undefined && val !== null && val !== "") url.searchParams.append(key, val);
    }
    return url;
  }

  /** A successful Response, or an ArchiveError saying plainly what went wrong. */
  async request(path, { accept, params, signal } = {}) {
    return this.fetchUrl(this.url(path, params), { accept, signal });
  }

  /** ``request`` for an absolute URL the archive gave (a BulkDataURI). */
  async fetchUrl(url, { accept, signal } = {}) {
    let response;
    try {
      response = await fetch(url, {
        headers: this.#headers(accept),
        credentials: this.#credentials(),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ArchiveError(
        "unreachable",
        `The archive at ${url.origin} cannot be reached (${error.message || "network error"}).`,
      );
    }
    if (response.status === 401 && this.auth.type === "cookie") {
      // The session ended (expired, revoked, logged out elsewhere): log in again, then come back.
      const here = location.pathname + location.search + location.hash;
      location.assign(`/login?next=${encodeURIComponent(here)}`);
    }
    if (!response.ok) {
      let reason = "";
      try {
        reason = (await response.text()).trim().slice(0, 300);
      } catch {
        // the body is only a courtesy
      }
      throw new ArchiveError(
        "http",
        `The archive answered ${response.status} ${response.statusText}${reason ? `: ${reason}` : ""}`,
        response.status,
      );
    }
    return response;
  }

  async json(path, options = {}) {
    const response = await this.request(path, { ...options, accept: DICOM_JSON });
    try {
      return { body: await response.json(), response };
    } catch (error) {
      throw new ArchiveError("format", `The archive sent malformed JSON for ${path}.`);
    }
  }

  /** QIDO-RS study search; `more` says that the archive holds further matches. */
  async searchStudies(keys, { limit, offset, signal } = {}) {
    const params = { ...keys, limit, offset, includefield: "InstitutionName" };
    const { body, response } = await this.json("/studies", { params, signal });
    return { rows: body || [], more: Boolean(response.headers.get("Warning")) };
  }

  async study(studyUID, { signal } = {}) {
    const { body } = await this.json("/studies", {
      params: { StudyInstanceUID: studyUID, includefield: "InstitutionName" },
      signal,
    });
    return (body || [])[0] || null;
  }

  async searchSeries(studyUID, { signal } = {}) {
    const { body } = await this.json(`/studies/${studyUID}/series`, { signal });
    return body || [];
  }

  /** WADO-RS metadata of a series: one DICOM JSON object per instance. */
  async seriesMetadata(studyUID, seriesUID, { signal } = {}) {
    const { body } = await this.json(`/studies/${studyUID}/series/${seriesUID}/metadata`, { signal });
    return body || [];
  }

  instancePath(instance) {
    return (
      `/studies/${value(instance, TAG.StudyInstanceUID)}` +
      `/series/${value(instance, TAG.SeriesInstanceUID)}` +
      `/instances/${value(instance, TAG.SOPInstanceUID)}`
    );
  }

  /**
   * One frame (1-based) as the first part of a multipart/related answer.
   * Returns the part's media type, its transfer-syntax parameter and bytes.
   */
  async frame(instance, frameNumber, { accept, signal } = {}) {
    const response = await this.request(`${this.instancePath(instance)}/frames/${frameNumber}`, {
      accept,
      signal,
    });
    const data = new Uint8Array(await response.arrayBuffer());
    const parts = parseMultipart(data, response.headers.get("Content-Type") || "");
    if (!parts.length) throw new ArchiveError("format", "The frame response held no part.");
    return parts[0];
  }

  /** The bytes behind a BulkDataURI of the metadata (PS3.18 10.4.1.1.5). */
  async bulkData(uri, { signal } = {}) {
    const response = await this.fetchUrl(new URL(uri, this.root + "/"), {
      accept: 'multipart/related; type="application/octet-stream"',
      signal,
    });
    const data = new Uint8Array(await response.arrayBuffer());
    const parts = parseMultipart(data, response.headers.get("Content-Type") || "");
    if (!parts.length) throw new ArchiveError("format", "The bulk data response held no part.");
    return parts[0].bytes;
  }

  /** A server-rendered picture (PS3.18 10.4.1.1.4) of one frame, as a Blob. */
  async renderedFrame(instance, frameNumber, { window, signal } = {}) {
    const params = window ? { window: `${window.centre},${window.width}` } : {};
    const response = await this.request(
      `${this.instancePath(instance)}/frames/${frameNumber}/rendered`,
      { accept: "image/png", params, signal },
    );
    return response.blob();
  }

  async seriesThumbnail(studyUID, seriesUID, { size = 128, signal } = {}) {
    const response = await this.request(`/studies/${studyUID}/series/${seriesUID}/thumbnail`, {
      accept: "image/jpeg",
      params: { viewport: `${size},${size}` },
      signal,
    });
    return response.blob();
  }
}

// -- multipart/related (RFC 2387) -------------------------------------------------

const CRLF2 = [13, 10, 13, 10];

function mediaParams(contentType) {
  const [main, ...rest] = contentType.split(";");
  const params = {};
  for (const part of rest) {
    const at = part.indexOf("=");
    if (at < 0) continue;
    params[part.slice(0, at).trim().toLowerCase()] = part.slice(at + 1).trim().replace(/^"|"$/g, "");
  }
  return { type: main.trim().toLowerCase(), params };
}

function indexOfBytes(haystack, needle, from) {
  const first = needle[0];
  let at = haystack.indexOf(first, from);
  while (at >= 0 && at + needle.length <= haystack.length) {
    let found = true;
    for (let i = 1; i < needle.length; i++) {
      if (haystack[at + i] !== needle[i]) {
        found = false;
        break;
      }
    }
    if (found) return at;
    at = haystack.indexOf(first, at + 1);
  }
  return -1;
}

/**
 * The parts of a multipart/related body as {mediaType, transferSyntax, headers, bytes}
 * (header names in lower case); a body that is not multipart is returned as its only part.
 */
export function parseMultipart(data, contentType) {
  const { type, params } = mediaParams(contentType);
  if (type !== "multipart/related" || !params.boundary) {
    return [{ mediaType: type, transferSyntax: params["transfer-syntax"] || null, headers: {}, bytes: data }];
  }
  const delimiter = new TextEncoder().encode(`--${params.boundary}`);
  const parts = [];
  let at = indexOfBytes(data, delimiter, 0);
  while (at >= 0) {
    const afterDelimiter = at + delimiter.length;
    if (data[afterDelimiter] === 45 && data[afterDelimiter + 1] === 45) break; // "--": the end
    const headEnd = indexOfBytes(data, CRLF2, afterDelimiter);
    if (headEnd < 0) break;
    const head = new TextDecoder("latin1").decode(data.subarray(afterDelimiter, headEnd));
    const next = indexOfBytes(data, delimiter, headEnd + 4);
    if (next < 0) break;
    let end = next;
    if (data[end - 2] === 13 && data[end - 1] === 10) end -= 2; // the CRLF before a delimiter
    const headers = {};
    for (const line of head.split("\r\n")) {
      const colon = line.indexOf(":");
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const part = mediaParams(headers["content-type"] || params.type || "application/octet-stream");
    parts.push({
      mediaType: part.type,
      transferSyntax: part.params["transfer-syntax"] || null,
      headers,
      bytes: data.subarray(headEnd + 4, end),
    });
    at = next;
  }
  return parts;
}
