// Start-up: read config.json, then route between the study list (#/) and a
// study (#/study/UID). Everything the viewer knows about the server comes
// from config.json; everything it fetches goes through DicomWebClient.

import { DicomWebClient } from "./dicomweb.js";
import { buildHelp } from "./help.js";
import { Stats } from "./stats.js";
import { StudyList } from "./studylist.js";
import { StudyView } from "./studyview.js";

const listRoot = document.getElementById("study-list");
const studyRoot = document.getElementById("study-view");
const help = document.getElementById("help");
const fatal = document.getElementById("fatal");

function showFatal(message) {
  fatal.hidden = false;
  fatal.querySelector(".fatal-text").textContent = message;
}

async function loadConfig() {
  const url = new URL("config.json", document.baseURI);
  let response;
  try {
    response = await fetch(url, { cache: "no-cache" });
  } catch (error) {
    throw new Error(`The archive at ${url.origin} cannot be reached: ${error.message}. Check the network connection and reload.`);
  }
  if (response.status === 401) {
    // Not logged in (or the session ended) while the page came from the browser's cache.
    location.assign(`/login?next=${encodeURIComponent(location.pathname + location.hash)}`);
    return new Promise(() => {}); // the page is going away
  }
  if (!response.ok) throw new Error(`The viewer configuration could not be read (${response.status}).`);
  const config = await response.json();
  // The DICOMweb root is relative to config.json, so a reverse proxy can move both.
  config.dicomweb.url = new URL(config.dicomweb.root, url).href.replace(/\/+$/, "");
  return config;
}

function parseHash() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?");
  return { path, query: Object.fromEntries(new URLSearchParams(search)) };
}

function showHelp() {
  if (help.open) help.close();
  else help.showModal();
}

async function start() {
  let config;
  try {
    config = await loadConfig();
  } catch (error) {
    showFatal(error.message);
    return;
  }
  const client = new DicomWebClient({ root: config.dicomweb.url, auth: config.auth });
  const stats = new Stats();
  buildHelp(help);
  let listQuery = "";
  const list = new StudyList(listRoot, {
    client,
    config,
    onOpen: (uid) => {
      list.lastOpened = uid;
      location.hash = `#/study/${encodeURIComponent(uid)}`;
    },
    onQueryChange: (query) => {
      listQuery = new URLSearchParams(query).toString();
      const wanted = `#/${listQuery ? `?${listQuery}` : ""}`;
      if (parseHash().path === "/" && location.hash !== wanted) history.replaceState(null, "", wanted);
    },
  });
  listRoot.querySelector("[data-action=help]").addEventListener("click", showHelp);
  const view = new StudyView(studyRoot, {
    client,
    config,
    stats,
    onBack: () => {
      location.hash = `#/${listQuery ? `?${listQuery}` : ""}`;
    },
    showHelp,
  });
  window.pacsViewer = { config, client, stats, list, view };

  let searched = false;
  const route = () => {
    const { path, query } = parseHash();
    const study = path.match(/^\/study\/([^/]+)$/);
    if (study) {
      listRoot.hidden = true;
      studyRoot.hidden = false;
      const uid = decodeURIComponent(study[1]);
      if (view.studyUID !== uid) view.open(uid);
    } else {
      view.close();
      document.title = "pacs viewer";
      studyRoot.hidden = true;
      listRoot.hidden = false;
      if (!searched) {
        searched = true;
        list.restore(query);
      }
      list.focus();
    }
  };
  window.addEventListener("hashchange", route);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && help.open) return; // the dialog closes itself
    const typing = event.target.closest?.("input, select, textarea");
    if (!listRoot.hidden && !typing && (event.key === "?" || event.key === "h")) {
      event.preventDefault();
      showHelp();
    }
    if (!listRoot.hidden && !typing && event.key === "/") {
      event.preventDefault();
      listRoot.querySelector("input[name=name]").focus();
    }
  });
  route();
}

start();
