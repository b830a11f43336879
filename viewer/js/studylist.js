// The study list: search form, sortable results, paging, open by click or Enter.
//
// QIDO-RS has no sort order, so matches are fetched in chunks (config
// studyList.fetchSize, 500 by default), sorted and paged here; paging past
// the fetched ones fetches the next chunk with `offset`.

import { TAG, formatDate, formatTime, number, personName, text, toDicomDate, values } from "./dicom.js";

const MODALITIES = ["CT", "MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "RF", "OT", "SC", "SR"];

const COLUMNS = [
  { id: "name", label: "Patient name", get: (r) => personName(r, TAG.PatientName).toLocaleLowerCase() },
  { id: "id", label: "Patient ID", get: (r) => text(r, TAG.PatientID) },
  { id: "date", label: "Study date", get: (r) => text(r, TAG.StudyDate) + text(r, TAG.StudyTime) },
  { id: "modality", label: "Modality", get: (r) => values(r, TAG.ModalitiesInStudy).join("/") },
  { id: "description", label: "Description", get: (r) => text(r, TAG.StudyDescription).toLocaleLowerCase() },
  { id: "accession", label: "Accession", get: (r) => text(r, TAG.AccessionNumber) },
  { id: "images", label: "Images", get: (r) => number(r, TAG.NumberOfStudyRelatedInstances, 0), numeric: true },
];

/** A free-text field as a QIDO value: anywhere in the value, unless wildcards are typed. */
function contains(value) {
  const v = value.trim();
  if (!v) return undefined;
  return /[*?]/.test(v) ? v : `*${v}*`;
}

export class StudyList {
  constructor(root, { client, config, onOpen, onQueryChange }) {
    this.root = root;
    this.client = client;
    this.config = config;
    this.pageSize = config.studyList?.pageSize || 25;
    this.fetchSize = config.studyList?.fetchSize || 500;
    this.onOpen = onOpen;
    this.onQueryChange = onQueryChange;
    this.rows = [];
    this.more = false;
    this.page = 0;
    this.sort = { column: "date", descending: true };
    this.generation = 0;
    this.#build();
  }

  #build() {
    this.root.innerHTML = `
      <header class="list-header">
        <h1>pacs <span>studies</span></h1>
        ${signedIn(this.config)}
        <button class="help-button" data-action="help" title="Keyboard shortcuts (?)">?</button>
      </header>
      <form class="search" role="search" autocomplete="off">
        <label>Patient name<input name="name" placeholder="e.g. nguyễn" autofocus></label>
        <label>Patient ID<input name="id"></label>
        <label>Accession<input name="accession"></label>
        <label>From<input name="from" type="date"></label>
        <label>To<input name="to" type="date"></label>
        <label>Modality<select name="modality"><option value="">Any</option>
          ${MODALITIES.map((m) => `<option>${m}</option>`).join("")}</select></label>
        <div class="search-buttons">
          <button type="submit">Search</button>
          <button type="button" data-action="clear">Clear</button>
        </div>
      </form>
      <div class="list-state" role="status" aria-live="polite"></div>
      <div class="table-wrap">
        <table class="studies">
          <thead><tr>${COLUMNS.map(
            (c) =>
              `<th scope="col" data-column="${c.id}" class="${c.numeric ? "numeric" : ""}"><button type="button">${c.label}</button></th>`,
          ).join("")}</tr></thead>
          <tbody></tbody>
        </table>
      </div>
      <nav class="pager" aria-label="Pages">
        <button type="button" data-page="first" title="First page">«</button>
        <button type="button" data-page="prev" title="Previous page">‹ Previous</button>
        <span class="page-info"></span>
        <button type="button" data-page="next" title="Next page">Next ›</button>
        <label>Per page <select name="pageSize">${[25, 50, 100]
          .map((n) => `<option ${n === this.pageSize ? "selected" : ""}>${n}</option>`)
          .join("")}</select></label>
      </nav>`;
    this.form = this.root.querySelector("form");
    this.tbody = this.root.querySelector("tbody");
    this.state = this.root.querySelector(".list-state");
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.search();
    });
    this.typingTimer = 0;
    this.form.addEventListener("input", () => {
      clearTimeout(this.typingTimer);
      this.typingTimer = setTimeout(() => this.search(), 350);
    });
    this.root.querySelector("[data-action=clear]").addEventListener("click", () => {
      this.form.reset();
      this.search();
    });
    this.root.querySelector("thead").addEventListener("click", (event) => {
      const th = event.target.closest("th");
      if (!th) return;
      const column = th.dataset.column;
      this.sort =
        this.sort.column === column
          ? { column, descending: !this.sort.descending }
          : { column, descending: column === "date" || column === "images" };
      this.page = 0;
      this.#render();
      this.#saveQuery();
    });
    this.root.querySelector(".pager").addEventListener("click", (event) => {
      const which = event.target.closest("button")?.dataset.page;
      if (which) this.#turn(which);
    });
    this.root.querySelector("[name=pageSize]").addEventListener("change", (event) => {
      this.pageSize = Number(event.target.value);
      this.page = 0;
      this.#render();
    });
    this.tbody.addEventListener("click", (event) => {
      const row = event.target.closest("tr[data-study]");
      if (row) this.onOpen(row.dataset.study);
    });
    this.tbody.addEventListener("keydown", (event) => {
      const row = event.target.closest("tr[data-study]");
      if (!row) return;
      if (event.key === "Enter") {
        event.preventDefault();
        this.onOpen(row.dataset.study);
      } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const next = event.key === "ArrowDown" ? row.nextElementSibling : row.previousElementSibling;
        next?.focus();
      }
    });
    this.form.addEventListener("keydown", (event) => {
      // From the search fields, ↓ goes to the first result.
      if (event.key === "ArrowDown" && event.target.matches("input:not([type=date])")) {
        const first = this.tbody.querySelector("tr[data-study]");
        if (first) {
          event.preventDefault();
          first.focus();
        }
      }
    });
  }

  /** Fill the form from a saved query (the URL hash) and search. */
  restore(query) {
    for (const [name, val] of Object.entries(query)) {
      const field = this.form.elements.namedItem(name);
      if (field) field.value = val;
    }
    if (query.sort) {
      this.sort = { column: query.sort, descending: query.dir !== "asc" };
    }
    this.search(Number(query.page || 1) - 1);
  }

  focus() {
    const row = this.tbody.querySelector("tr[data-study]");
    (this.lastOpened && this.tbody.querySelector(`tr[data-study="${CSS.escape(this.lastOpened)}"]`))?.focus() ||
      this.form.elements.namedItem("name").focus();
    return row;
  }

  #keys() {
    const f = this.form.elements;
    const keys = {
      PatientName: contains(f.name.value),
      PatientID: contains(f.id.value),
      AccessionNumber: contains(f.accession.value),
      ModalitiesInStudy: f.modality.value || undefined,
    };
    const from = toDicomDate(f.from.value);
    const to = toDicomDate(f.to.value);
    if (from || to) keys.StudyDate = from === to ? from : `${from}-${to}`;
    return keys;
  }

  #saveQuery() {
    const f = this.form.elements;
    const query = {};
    for (const name of ["name", "id", "accession", "from", "to", "modality"]) {
      if (f[name].value) query[name] = f[name].value;
    }
    if (this.sort.column !== "date" || !this.sort.descending) {
      query.sort = this.sort.column;
      query.dir = this.sort.descending ? "desc" : "asc";
    }
    if (this.page) query.page = String(this.page + 1);
    this.onQueryChange?.(query);
  }

  async search(page = 0) {
    // Enter while typing searches now: the search the typing queued is this one.
    clearTimeout(this.typingTimer);
    const generation = ++this.generation;
    const keys = this.#keys();
    this.#setState("Searching…", "busy");
    this.root.classList.add("searching");
    try {
      const { rows, more } = await this.client.searchStudies(keys, { limit: this.fetchSize, offset: 0 });
      if (generation !== this.generation) return;
      this.keys = keys;
      this.rows = rows;
      this.more = more;
      this.page = page;
      this.#render();
      this.#saveQuery();
    } catch (error) {
      if (generation !== this.generation) return;
      this.rows = [];
      this.more = false;
      this.#render(error);
    } finally {
      if (generation === this.generation) this.root.classList.remove("searching");
    }
  }

  async #fetchMore() {
    const generation = this.generation;
    this.#setState("Fetching more studies…", "busy");
    try {
      const { rows, more } = await this.client.searchStudies(this.keys, {
        limit: this.fetchSize,
        offset: this.rows.length,
      });
      if (generation !== this.generation) return false;
      this.rows = this.rows.concat(rows);
      this.more = more;
      return true;
    } catch (error) {
      this.#render(error);
      return false;
    }
  }

  async #turn(which) {
    const pages = Math.max(1, Math.ceil(this.rows.length / this.pageSize));
    if (which === "first") this.page = 0;
    if (which === "prev") this.page = Math.max(0, this.page - 1);
    if (which === "next") {
      if (this.page + 1 >= pages && this.more) {
        if (!(await this.#fetchMore())) return;
      }
      const now = Math.max(1, Math.ceil(this.rows.length / this.pageSize));
      this.page = Math.min(now - 1, this.page + 1);
    }
    this.#render();
    this.#saveQuery();
  }

  #setState(message, kind = "") {
    this.state.textContent = message;
    this.state.className = `list-state ${kind}`;
  }

  #render(error = null) {
    for (const th of this.root.querySelectorAll("th[data-column]")) {
      const sorted = th.dataset.column === this.sort.column;
      th.setAttribute("aria-sort", sorted ? (this.sort.descending ? "descending" : "ascending") : "none");
    }
    const pager = this.root.querySelector(".pager");
    if (error) {
      this.tbody.innerHTML = "";
      pager.hidden = true;
      const retry = document.createElement("button");
      retry.textContent = "Try again";
      retry.addEventListener("click", () => this.search(this.page));
      this.#setState(
        error.kind === "unreachable"
          ? `${error.message} Check the network connection, then try again.`
          : error.message,
        "error",
      );
      this.state.appendChild(document.createTextNode(" "));
      this.state.appendChild(retry);
      return;
    }
    if (!this.rows.length) {
      this.tbody.innerHTML = "";
      pager.hidden = true;
      const criteria = Object.values(this.keys || {}).some(Boolean);
      this.#setState(
        criteria ? "No study matches these criteria." : "The archive holds no study yet.",
        "empty",
      );
      return;
    }
    const column = COLUMNS.find((c) => c.id === this.sort.column) || COLUMNS[2];
    const direction = this.sort.descending ? -1 : 1;
    const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: "base" });
    const sorted = [...this.rows].sort((a, b) => {
      const x = column.get(a);
      const y = column.get(b);
      const order = column.numeric ? x - y : collator.compare(String(x), String(y));
      return order * direction;
    });
    const pages = Math.max(1, Math.ceil(sorted.length / this.pageSize));
    this.page = Math.min(this.page, pages - 1);
    const start = this.page * this.pageSize;
    const shown = sorted.slice(start, start + this.pageSize);
    const fragment = document.createDocumentFragment();
    for (const row of shown) {
      const tr = document.createElement("tr");
      const uid = text(row, TAG.StudyInstanceUID);
      tr.dataset.study = uid;
      tr.tabIndex = 0;
      const cells = [
        personName(row, TAG.PatientName) || "(no name)",
        text(row, TAG.PatientID),
        `${formatDate(text(row, TAG.StudyDate))} ${formatTime(text(row, TAG.StudyTime))}`.trim(),
        values(row, TAG.ModalitiesInStudy).join(", "),
        text(row, TAG.StudyDescription),
        text(row, TAG.AccessionNumber),
        String(number(row, TAG.NumberOfStudyRelatedInstances, 0)),
      ];
      cells.forEach((value, i) => {
        const td = tr.insertCell();
        td.textContent = value;
        td.dataset.column = COLUMNS[i].id;
        if (COLUMNS[i].numeric) td.className = "numeric";
      });
      tr.title = "Open (click or Enter)";
      fragment.appendChild(tr);
    }
    this.tbody.replaceChildren(fragment);
    pager.hidden = false;
    const total = this.more ? `${sorted.length}+` : String(sorted.length);
    this.root.querySelector(".page-info").textContent =
      `${start + 1}–${start + shown.length} of ${total} · page ${this.page + 1} of ${pages}${this.more ? "+" : ""}`;
    pager.querySelector("[data-page=first]").disabled = this.page === 0;
    pager.querySelector("[data-page=prev]").disabled = this.page === 0;
    pager.querySelector("[data-page=next]").disabled = this.page + 1 >= pages && !this.more;
    this.#setState(
      this.more
        ? `More than ${sorted.length} studies match: sorted among those fetched; the next pages fetch more. Narrow the search to sort all of them.`
        : `${sorted.length} stud${sorted.length === 1 ? "y" : "ies"}`,
      "ok",
    );
  }
}

/** Who is logged in, with a way out (nothing when the archive has no accounts). */
function signedIn(config) {
  const auth = (config && config.auth) || {};
  if (auth.type !== "cookie" || !auth.user) return "";
  const who = auth.via === "share-link" ? "shared study" : `${auth.user} (${auth.role})`;
  const name = who.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
  return `<span class="signed-in">${name} · <a href="/logout" data-action="logout">Log out</a></span>`;
}
