"""DICOMweb: pacs beside Orthanc's DICOMweb plugin, same data, same client, same run.

Generates a QIDO index of small studies (8x8 pixels, one or two instances each,
names drawn so that a two-letter prefix such as ``BE*`` matches ~140 of 4,000
studies) plus the deterministic 300-slice 512x512 CT phantom, loads the same
files into both servers (``pacs import`` before pacs starts; ``storescu`` into
Orthanc), then times over one keep-alive HTTP/1.1 connection per server, the two
servers running side by side and taking turns, ten requests each (so that a
change in the machine's load weighs on both alike):

1. QIDO-RS study search by PatientID and by a PatientName prefix (median, p95);
   every answer's number of studies is checked against the generator.
2. WADO-RS retrieval of the whole CT study, ``multipart/related;
   type="application/dicom"; transfer-syntax=*`` (as stored) for both: MB/s and
   time to the first body byte. The multipart stream is read raw in 1 MiB
   reads and counted, never parsed, so the client is not what is measured.
3. Study metadata (300 instances), warm: median of calls after a first one.
4. Frame 1 of different instances of the CT, ``multipart/related;
   type="application/octet-stream"``.

If ``benchmarks/.cache`` holds the 100,000-study index built by ``query.py``,
pacs's QIDO latency is also measured on a copy of it (the cache is never
modified, nor built here).

    python benchmarks/dicomweb.py [--studies N] [--queries N] [--repeat R] [--record]

Needs Debian's ``orthanc``, ``orthanc-dicomweb`` and ``dcmtk`` (storescu).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_ROOT_UID,
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
)

from benchmarks.dicom_nodes import (
    LOCALHOST,
    OrthancProcess,
    ScaleBackends,
    dicomweb_plugin,
    free_port,
    orthanc_get,
    pacs_serve,
    revision,
    send_files_storescu,
    start_orthanc,
    stop_process,
    wait_uploaded,
)
from benchmarks.phantom import generate_ct_series
from pacs.index.schema import normalise_name

T = TypeVar("T")
HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
README = HERE / "README.md"
BEGIN, END = "<!-- dicomweb:begin -->", "<!-- dicomweb:end -->"

ACCEPT_STUDY = 'multipart/related; type="application/dicom"; transfer-syntax=*'
ACCEPT_FRAME = 'multipart/related; type="application/octet-stream"'
ACCEPT_JSON = "application/dicom+json"

# -- the QIDO data set ----------------------------------------------------------------

# 28 groups of family names by their first two letters, each given to the patients
# of 1/28 of the studies: a two-letter prefix matches ~143 of 4,000 studies.
FAMILIES = {
    "BE": ("BECKER", "BENNETT", "BERGER", "BERNARD"),
    "CO": ("COSTA", "COLOMBO", "COOPER", "CORDIER"),
    "DA": ("DAVIES", "DANG", "DAVID", "DAHL"),
    "DU": ("DUBOIS", "DUPONT", "DURAND", "DUARTE"),
    "FE": ("FERRARI", "FERREIRA", "FERNANDEZ", "FELDMANN"),
    "GA": ("GARCIA", "GARNIER", "GALLO", "GAUTHIER"),
    "HO": ("HOFFMANN", "HOWARD", "HOLM", "HORVATH"),
    "HU": ("HUYNH", "HUBER", "HUGHES", "HUSSAIN"),
    "JO": ("JOHNSON", "JONES", "JOHANSSON", "JORDAN"),
    "KI": ("KIM", "KIMURA", "KING", "KIRBY"),
    "KO": ("KOCH", "KOWALSKI", "KOVAC", "KOHLER"),
    "LE": ("LEFEBVRE", "LEROY", "LEHMANN", "LEONE"),
    "LI": ("LI", "LINDQVIST", "LIM", "LISTER"),
    "MA": ("MARTIN", "MARCHAND", "MAYER", "MASSON"),
    "MU": ("MULLER", "MURPHY", "MUNOZ", "MUNRO"),
    "NG": ("NGUYEN", "NGO", "NGATA", "NGEMA"),
    "PA": ("PARK", "PAREDES", "PAYNE", "PARISI"),
    "PH": ("PHAM", "PHAN", "PHILIPPE", "PHELPS"),
    "RI": ("RICHTER", "RIVERA", "RIZZO", "RIVIERE"),
    "RO": ("ROUSSEAU", "ROSSI", "ROBERT", "ROTH"),
    "SA": ("SATO", "SANCHEZ", "SANTOS", "SAUER"),
    "SC": ("SCHMIDT", "SCHULZ", "SCHNEIDER", "SCOTT"),
    "TA": ("TAYLOR", "TANAKA", "TAVARES", "TAN"),
    "TR": ("TRAN", "TRUONG", "TRAORE", "TRIPODI"),
    "VO": ("VOGEL", "VO", "VOLKOV", "VOSS"),
    "WA": ("WAGNER", "WALKER", "WATANABE", "WARD"),
    "WI": ("WILSON", "WINTER", "WILLIAMS", "WIEGAND"),
    "YA": ("YAMAMOTO", "YANG", "YATES", "YAMADA"),
}
GIVEN = (
    "ANNA", "BAO", "CLAIRE", "DAVID", "ELENA", "FRANZ", "HANA", "IVAN", "JULIA", "KENJI",
    "LAURA", "MINH", "NORA", "OSCAR", "PAUL", "QUANG", "ROSA", "SOFIA", "THANH", "YUKI",
)  # fmt: skip
MODALITIES = (
    ("CT", CTImageStorage),
    ("MR", MRImageStorage),
    ("CR", ComputedRadiographyImageStorage),
    ("DX", DigitalXRayImageStorageForPresentation),
)


@dataclass(frozen=True, slots=True)
class SmallStudy:
    uid: str
    patient_id: str
    patient_name: str
    instances: int


def generate_studies(directory: Path, count: int, seed: int) -> list[SmallStudy]:
    """Write ``count`` small studies as Part 10 files in ``directory`` (flat, for storescu)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    # Every patient has a study; the other studies are follow-ups (1.6 per patient).
    patient_count = max(1, count * 5 // 8)
    owners = [n if n < patient_count else rng.randrange(patient_count) for n in range(count)]
    per_patient = [0] * patient_count
    for owner in owners:
        per_patient[owner] += 1
    # Family groups dealt so that each holds the same number of studies (+-1 or 2):
    # patients with most studies first, each to the group with fewest so far.
    load = dict.fromkeys(sorted(FAMILIES), 0)
    group_of = [""] * patient_count
    for n in sorted(range(patient_count), key=lambda n: -per_patient[n]):
        group = min(load, key=lambda g: load[g])
        group_of[n] = group
        load[group] += per_patient[n]
    patients = []
    for n in range(patient_count):
        family = rng.choice(FAMILIES[group_of[n]])
        sex = rng.choice("MF")
        birth = f"{rng.randrange(1935, 2015)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        patients.append((f"QB{seed}{n:07d}", f"{family}^{rng.choice(GIVEN)}", sex, birth))
    pixels = np.arange(64, dtype="<u2").reshape(8, 8).tobytes()
    root = f"{PYDICOM_ROOT_UID}9.{seed}"
    studies = []
    for n in range(count):
        patient_id, name, sex, birth = patients[owners[n]]
        modality, sop_class = rng.choice(MODALITIES)
        day = f"20{rng.randrange(15, 25)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        study_uid, series_uid = f"{root}.{n + 1}", f"{root}.{n + 1}.1"
        instances = rng.choice((1, 2))
        for i in range(1, instances + 1):
            sop_uid = f"{series_uid}.{i}"
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = sop_class
            meta.MediaStorageSOPInstanceUID = UID(sop_uid)
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = sop_class
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate = ds.SeriesDate = ds.ContentDate = day
            ds.StudyTime = ds.SeriesTime = ds.ContentTime = f"{rng.randrange(7, 20):02d}0000"
            ds.AccessionNumber = f"A{seed}{n + 1:08d}"
            ds.Modality = modality
            ds.ReferringPhysicianName = "REFERRER^DOCTOR"
            ds.StudyDescription = f"{modality} STUDY"
            ds.SeriesDescription = f"{modality} SERIES"
            ds.PatientName = name
            ds.PatientID = patient_id
            ds.PatientBirthDate = birth
            ds.PatientSex = sex
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = str(n + 1)
            ds.SeriesNumber = 1
            ds.InstanceNumber = i
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.PixelData = pixels
            ds.save_as(directory / f"S{n + 1:06d}-{i}.dcm", enforce_file_format=True)
        studies.append(SmallStudy(study_uid, patient_id, name, instances))
    return studies


@dataclass(frozen=True, slots=True)
class Query:
    params: dict[str, str]
    expected: int
    """Studies that match, as the generator (or the index) knows them."""


def patient_queries(pairs: Sequence[tuple[str, str]], count: int, seed: int) -> list[Query]:
    """``count`` different PatientID queries; ``pairs`` holds (patient ID, study UID)."""
    studies: dict[str, int] = {}
    for patient_id, _ in pairs:
        studies[patient_id] = studies.get(patient_id, 0) + 1
    chosen = random.Random(f"patients-{seed}").sample(sorted(studies), min(count, len(studies)))
    return [Query({"PatientID": p}, studies[p]) for p in chosen]


def prefix_queries(
    names: Sequence[str], count: int, wanted: tuple[int, int], seed: int
) -> list[Query]:
    """Name prefixes (``PREFIX*``) matching ``wanted`` studies; ``names`` has one per study.

    From random studies' names, the shortest prefix past the ``^`` that matches at
    most ``wanted[1]`` studies, kept if it matches at least ``wanted[0]``; counted on
    the case-folded form pacs matches (the names are upper case, as sent).
    """
    folded = sorted(normalise_name(n) for n in names)
    rng = random.Random(f"prefixes-{seed}")
    chosen: dict[str, int] = {}
    for name in rng.sample(list(names), len(names)):
        if len(chosen) == count:
            break
        for end in range(name.index("^") + 2, len(name) + 1):
            prefix = name[:end]
            if prefix.endswith(" "):
                continue
            key = normalise_name(prefix)
            matches = bisect_left(folded, key + "\U0010ffff") - bisect_left(folded, key)
            if matches <= wanted[1]:
                if matches >= wanted[0]:
                    chosen.setdefault(prefix, matches)
                break
    return [Query({"PatientName": p + "*"}, n) for p, n in chosen.items()]


# -- HTTP client ----------------------------------------------------------------------


@dataclass(slots=True)
class Reply:
    status: int
    content_type: str
    body: bytes
    seconds: float


@dataclass(slots=True)
class Stream:
    status: int
    content_type: str
    size: int
    first_byte: float
    """Seconds from sending the request to the first byte of the body."""
    seconds: float
    body: bytes | None = None


class Client:
    """One keep-alive HTTP/1.1 connection (``http.client`` sets TCP_NODELAY).

    ``Accept-Encoding: identity`` on every request, so that neither server
    compresses and both send the same kind of bytes.
    """

    def __init__(self, port: int, root: str = "/dicom-web") -> None:
        self.root = root
        self.connection = http.client.HTTPConnection(LOCALHOST, port, timeout=600)
        self.connections = 0

    def close(self) -> None:
        self.connection.close()

    def _send(self, path: str, accept: str) -> http.client.HTTPResponse:
        headers = {"Accept": accept, "Accept-Encoding": "identity"}
        reused = self.connection.sock is not None
        if not reused:
            self.connections += 1
        try:
            self.connection.request("GET", self.root + path, headers=headers)
            return self.connection.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
        # The server closed a connection left idle while another server had its
        # turn (uvicorn keeps one 5 s): a new one, as any keep-alive client would.
        self.connection.close()
        self.connections += 1
        self.connection.request("GET", self.root + path, headers=headers)
        return self.connection.getresponse()

    def get(self, path: str, accept: str) -> Reply:
        start = time.perf_counter()
        response = self._send(path, accept)
        body = response.read()
        seconds = time.perf_counter() - start
        return Reply(response.status, response.getheader("Content-Type", ""), body, seconds)

    def stream(self, path: str, accept: str, keep: bool = False) -> Stream:
        """Read the body in 1 MiB reads, counting bytes (and keeping them if ``keep``)."""
        buffer = bytearray(1 << 20)
        view = memoryview(buffer)
        kept: list[bytes] = []
        start = time.perf_counter()
        response = self._send(path, accept)
        first = response.read1(1 << 20)
        first_byte = time.perf_counter() - start
        size = len(first)
        if keep:
            kept.append(first)
        while n := response.readinto(view):
            size += n
            if keep:
                kept.append(bytes(view[:n]))
        seconds = time.perf_counter() - start
        return Stream(
            response.status,
            response.getheader("Content-Type", ""),
            size,
            first_byte,
            seconds,
            b"".join(kept) if keep else None,
        )


def wait_for_http(port: int, path: str, proc: subprocess.Popen[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        connection = http.client.HTTPConnection(LOCALHOST, port, timeout=5)
        try:
            connection.request("GET", path)
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            connection.close()
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer from http://{LOCALHOST}:{port}{path}")
        time.sleep(0.1)


# -- servers --------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    http_port: int
    process: subprocess.Popen[Any]


def pacs_import(
    data_dir: Path,
    paths: Sequence[Path],
    log_path: Path,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> float:
    """``pacs import`` into ``data_dir``; returns its wall time."""
    command = [sys.executable, "-m", "pacs", "import", "--data-dir", str(data_dir), *options]
    start = time.perf_counter()
    with log_path.open("ab") as log:
        code = subprocess.call(
            [*command, "--log-level", "warning", *map(str, paths)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    if code != 0:
        raise RuntimeError(f"pacs import failed:\n{log_path.read_text()[-2000:]}")
    return time.perf_counter() - start


def start_pacs(
    data_dir: Path,
    log_path: Path,
    options: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Server:
    """``pacs serve --dicom-processes 1`` on ``data_dir``, once /health answers."""
    http_port = free_port()
    with log_path.open("ab") as log:
        process = pacs_serve(
            data_dir, free_port(), http_port, log, "--dicom-processes", "1", *options, env=env
        )
    try:
        wait_for_http(http_port, "/health", process)
    except BaseException as exc:
        stop_process(process)
        raise RuntimeError(f"pacs did not come up: {exc}\n{log_path.read_text()[-2000:]}") from exc
    return Server("pacs", http_port, process)


def start_orthanc_dicomweb(workdir: Path, plugin: str) -> tuple[OrthancProcess, str]:
    """Orthanc with only the DICOMweb plugin, at its defaults, root ``/dicom-web/``.

    Returns the process and the versions of Orthanc and of the plugin.
    """
    process = start_orthanc(
        workdir,
        overrides={
            "Plugins": [plugin],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        },
    )
    try:
        wait_for_http(process.http_port, "/dicom-web/studies?limit=1", process)
        core = orthanc_get(process, "/system")["Version"]
        plugin_version = orthanc_get(process, "/plugins/dicom-web")["Version"]
    except BaseException:
        stop_process(process)
        raise
    return process, f"{core}, DICOMweb plugin {plugin_version}"


def load_orthanc(process: OrthancProcess, folders: Sequence[Path], expected: int) -> float:
    """C-STORE every file of ``folders`` into Orthanc with storescu; returns the wall time."""
    start = time.perf_counter()
    for folder in folders:
        result = send_files_storescu(LOCALHOST, process.dicom_port, process.ae_title, folder, 2)
        if result["failures"]:
            raise RuntimeError(f"storescu: {result['failures']} failures {result['errors'][:1]}")
    seconds = time.perf_counter() - start
    stored = int(orthanc_get(process, "/statistics")["CountInstances"])
    if stored != expected:
        raise RuntimeError(f"Orthanc holds {stored} instances, not {expected}")
    return seconds


# -- measurements ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Study:
    uid: str
    series_uid: str
    sop_uids: tuple[str, ...]
    megabytes: float
    first_pixels: bytes


@dataclass
class Results:
    qido: dict[str, list[float]] = field(default_factory=dict)
    qido_matches: dict[str, list[int]] = field(default_factory=dict)
    study_mb_s: list[float] = field(default_factory=list)
    study_first_byte: list[float] = field(default_factory=list)
    study_bytes: int = 0
    metadata: list[float] = field(default_factory=list)
    metadata_first: float = 0.0
    metadata_bytes: int = 0
    frames: list[float] = field(default_factory=list)
    connections: int = 0
    errors: list[str] = field(default_factory=list)


def _search(query: Query) -> str:
    # Orthanc 1.10 does not percent-decode query values: "BE%2A" finds nothing.
    return "/studies?" + urllib.parse.urlencode(query.params, safe="*^")


def in_turns(
    clients: dict[str, Client],
    items: Sequence[T],
    block: int,
    settle: Callable[[Client], object] | None = None,
) -> Iterator[tuple[str, Client, int, T]]:
    """(server, client, position, item): ``block`` items to one server, the same items
    to the next, then the next block, so that a change in the machine's load weighs on
    every server alike. Whole blocks, because a server may go on working (freeing,
    logging) after its answer, which would slow whoever is asked right after it.

    ``settle(client)``, untimed, opens each server's turn: on this VM the first
    requests after a pause are slow whatever answers them (a bare uvicorn app
    sending 512 kB: 1.3 ms for the first request after 100 ms idle, then 0.7,
    0.65, 0.6 ... and 0.4 from about the tenth on; a client busy beforehand
    changes nothing), so without it a server whose whole turn lasts a few
    milliseconds is timed while it wakes up, and a slow one is not."""
    for start in range(0, len(items), block):
        for name, client in clients.items():
            if settle is not None:
                settle(client)
            for position in range(start, min(start + block, len(items))):
                yield name, client, position, items[position]


def time_queries(
    clients: dict[str, Client],
    kinds: dict[str, list[Query]],
    warmup: int,
    block: int,
    results: dict[str, Results],
    settle: int = 0,
) -> None:
    """Each kind's queries after ``warmup`` untimed ones, servers in turns, each
    turn opened by ``settle`` untimed ones; counts checked."""
    for queries in kinds.values():
        for _, client, _, query in in_turns(clients, queries[:warmup], block):
            client.get(_search(query), ACCEPT_JSON)
    for kind, queries in kinds.items():

        def opening(client: Client, queries: list[Query] = queries) -> None:
            for query in queries[:settle]:
                client.get(_search(query), ACCEPT_JSON)

        for name, client, _, query in in_turns(clients, queries[warmup:], block, opening):
            reply = client.get(_search(query), ACCEPT_JSON)
            found = len(json.loads(reply.body)) if reply.status == 200 else -1
            if found != query.expected:
                results[name].errors.append(
                    f"QIDO {query.params}: {found} studies (status {reply.status}),"
                    f" expected {query.expected}"
                )
            results[name].qido.setdefault(kind, []).append(reply.seconds)
            results[name].qido_matches.setdefault(kind, []).append(found)


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "boundary":
            return value.strip('"').encode()
    return b""


def measure(
    clients: dict[str, Client],
    kinds: dict[str, list[Query]],
    study: Study,
    args: argparse.Namespace,
) -> dict[str, Results]:
    """Every figure for every server, the servers taking turns (see ``in_turns``)."""
    results = {name: Results() for name in clients}
    time_queries(clients, kinds, args.warmup, args.block, results, args.settle)

    # WADO-RS study: one untimed run that keeps the body, to check it.
    path = f"/studies/{study.uid}"
    for name, client in clients.items():
        check = client.stream(path, ACCEPT_STUDY, keep=True)
        assert check.body is not None
        parts = check.body.count(b"--" + _boundary(check.content_type)) - 1
        if check.status != 200 or parts != len(study.sop_uids):
            results[name].errors.append(
                f"study retrieval: status {check.status}, {parts} parts ({check.content_type})"
            )
        results[name].study_bytes = check.size
    for name, client, _, _ in in_turns(clients, range(args.repeat), args.block):
        run = client.stream(path, ACCEPT_STUDY)
        if run.size != results[name].study_bytes:
            results[name].errors.append(f"study retrieval: {run.size} bytes this time")
        results[name].study_mb_s.append(run.size / 1e6 / run.seconds)
        results[name].study_first_byte.append(run.first_byte)

    # Metadata, then frames: the order of a viewer opening the study.
    path = f"/studies/{study.uid}/metadata"
    for name, client in clients.items():
        first = client.get(path, ACCEPT_JSON)
        results[name].metadata_first = first.seconds
        results[name].metadata_bytes = len(first.body)
        objects = len(json.loads(first.body)) if first.status == 200 else -1
        if objects != len(study.sop_uids):
            results[name].errors.append(f"metadata: {objects} objects (status {first.status})")
    for name, client, _, _ in in_turns(clients, range(args.repeat), args.block):
        results[name].metadata.append(client.get(path, ACCEPT_JSON).seconds)

    # Frames: evenly spread instances, each asked once; a few others first, untimed.
    series = f"/studies/{study.uid}/series/{study.series_uid}/instances/"
    timed = study.sop_uids[:: max(1, len(study.sop_uids) // args.frames)][: args.frames]
    others = [uid for uid in study.sop_uids if uid not in set(timed)][:10]
    for _, client, _, uid in in_turns(clients, others, args.block):
        client.get(series + uid + "/frames/1", ACCEPT_FRAME)

    def opening(client: Client) -> None:
        for uid in others[: args.settle]:
            client.get(series + uid + "/frames/1", ACCEPT_FRAME)

    for name, client, n, uid in in_turns(clients, timed, args.block, opening):
        reply = client.get(series + uid + "/frames/1", ACCEPT_FRAME)
        if n == 0:  # the first instance's pixels are known: check the bytes
            start = reply.body.find(b"\r\n\r\n") + 4
            frame = reply.body[start : start + len(study.first_pixels)]
            if reply.status != 200 or frame != study.first_pixels:
                results[name].errors.append(
                    f"frame of {uid}: status {reply.status}, not the stored pixels"
                )
        results[name].frames.append(reply.seconds)
    for name, client in clients.items():
        results[name].connections = client.connections
    return results


# -- the 100,000-study index of query.py ----------------------------------------------


def cached_index() -> Path | None:
    """The newest complete index folder query.py left in benchmarks/.cache, if any."""
    found = [
        p.parent
        for p in CACHE.glob("index-*/index.sqlite")
        if not p.parent.name.endswith(".partial")
    ]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def copy_index(source: Path, data_dir: Path) -> list[tuple[str, str]]:
    """A consistent copy of ``source``'s index (SQLite backup, read-only source).

    pacs serve upgrades an older schema in place, so it runs on the copy and
    the cache stays as query.py left it. Returns (patient ID, name) per study.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source / 'index.sqlite'}?mode=ro", uri=True)
    dst = sqlite3.connect(data_dir / "index.sqlite")
    try:
        src.backup(dst)
        rows = src.execute(
            "SELECT p.patient_id, p.patient_name FROM studies s"
            " JOIN patients p ON p.pk = s.patient_pk"
        ).fetchall()
    finally:
        src.close()
        dst.close()
    return [(str(pid), str(name)) for pid, name in rows]


# -- report ---------------------------------------------------------------------------


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _ms(values: Sequence[float]) -> float:
    return statistics.median(values) * 1e3


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    pacs: float
    orthanc: float | None
    unit: str
    higher_is_better: bool = False
    s3: float | None = None
    """pacs over S3 and PostgreSQL, if measured."""
    target: float | None = None
    """Least pacs advantage over Orthanc wanted, if this row has a target."""
    below: float | None = None
    """A bound pacs must stay under, if this row has one."""

    def advantage(self) -> float | None:
        if self.orthanc is None or not self.pacs or not self.orthanc:
            return None
        return self.pacs / self.orthanc if self.higher_is_better else self.orthanc / self.pacs

    def s3_speed(self) -> float | None:
        """How fast pacs over S3 and PostgreSQL is, filesystem and SQLite being 1."""
        if self.s3 is None or not self.pacs or not self.s3:
            return None
        return self.s3 / self.pacs if self.higher_is_better else self.pacs / self.s3

    def verdict(self) -> str:
        met, texts = [], []
        advantage = self.advantage()
        if self.target is not None:
            met.append(advantage is not None and advantage >= self.target)
            texts.append(f"≥ {self.target:g}x Orthanc")
        if self.below is not None:
            met.append(self.pacs < self.below)
            texts.append(f"< {self.below:g} {self.unit}")
        if not met:
            return ""
        return " and ".join(texts) + (": met" if all(met) else ": **not met**")


def _number(value: float) -> str:
    return f"{value:.1f}" if value < 100 else f"{value:,.0f}"


def table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| figure | pacs | Orthanc | pacs advantage | target | pacs S3+PG | S3+PG speed |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        orthanc = f"{_number(row.orthanc)} {row.unit}" if row.orthanc is not None else "-"
        advantage = row.advantage()
        s3 = f"{_number(row.s3)} {row.unit}" if row.s3 is not None else "-"
        speed = row.s3_speed()
        lines.append(
            f"| {row.label} | {_number(row.pacs)} {row.unit} | {orthanc}"
            f" | {f'{advantage:.2f}x' if advantage else '-'} | {row.verdict()}"
            f" | {s3} | {f'{speed:.2f}x' if speed else '-'} |"
        )
    return lines


def _matches(results: Results, kind: str) -> str:
    found = results.qido_matches[kind]
    return f"{statistics.median(found):g} ({min(found)}-{max(found)})"


def report_rows(
    pacs: Results,
    orthanc: Results | None,
    studies: int,
    study: Study,
    large: Results | None,
    large_studies: int,
    scale: Results | None = None,
) -> list[Row]:
    """The table: pacs beside Orthanc, with the targets of the issue, and pacs over
    S3 and PostgreSQL beside pacs on the filesystem and SQLite."""

    def both(get: Callable[[Results], float]) -> tuple[float, float | None]:
        return get(pacs), get(orthanc) if orthanc is not None else None

    def s3(get: Callable[[Results], float]) -> float | None:
        return get(scale) if scale is not None else None

    rows = []
    for kind, label in (
        ("patient_id", "PatientID"),
        ("patient_name", "PatientName `BE*` and 27 other two-letter prefixes"),
    ):
        text = f"QIDO-RS, {studies:,} studies, by {label} ({_matches(pacs, kind)} matches)"
        median = both(lambda r, k=kind: _ms(r.qido[k]))  # type: ignore[misc]
        p95 = both(lambda r, k=kind: _p95(r.qido[k]) * 1e3)  # type: ignore[misc]
        s3_median = s3(lambda r, k=kind: _ms(r.qido[k]))  # type: ignore[misc]
        s3_p95 = s3(lambda r, k=kind: _p95(r.qido[k]) * 1e3)  # type: ignore[misc]
        rows.append(Row(f"{text}: median", *median, "ms", target=2.0, s3=s3_median))
        rows.append(Row(f"{text}: p95", *p95, "ms", s3=s3_p95))
    if large is not None:
        for kind, label in (("patient_id", "PatientID"), ("patient_name", "PatientName prefix*")):
            text = (
                f"QIDO-RS, {large_studies:,} studies (pacs only), by {label}"
                f" ({_matches(large, kind)} matches)"
            )
            rows.append(Row(f"{text}: median", _ms(large.qido[kind]), None, "ms", below=20))
            rows.append(Row(f"{text}: p95", _p95(large.qido[kind]) * 1e3, None, "ms"))
    instances = len(study.sop_uids)
    rows += [
        Row(
            f"WADO-RS study, {instances} instances ({pacs.study_bytes / 1e6:.1f} MB multipart):"
            " throughput",
            *both(lambda r: statistics.median(r.study_mb_s)),
            "MB/s",
            higher_is_better=True,
            target=1.5,
            s3=s3(lambda r: statistics.median(r.study_mb_s)),
        ),
        Row(
            "WADO-RS study: time to first body byte",
            *both(lambda r: _ms(r.study_first_byte)),
            "ms",
            s3=s3(lambda r: _ms(r.study_first_byte)),
        ),
        Row(
            f"Study metadata, {instances} instances, warm: median",
            *both(lambda r: _ms(r.metadata)),
            "ms",
            target=5.0,
            s3=s3(lambda r: _ms(r.metadata)),
        ),
        Row(
            f"Frame 1 of {len(pacs.frames)} different CT instances (512x512, 16-bit): median",
            *both(lambda r: _ms(r.frames)),
            "ms",
            target=5.0,
            s3=s3(lambda r: _ms(r.frames)),
        ),
        Row(
            "Frame 1: p95",
            *both(lambda r: _p95(r.frames) * 1e3),
            "ms",
            s3=s3(lambda r: _p95(r.frames) * 1e3),
        ),
    ]
    return rows


def record(lines: list[str]) -> None:
    """Replace the DICOMweb figures between the markers in benchmarks/README.md."""
    text = README.read_text()
    if BEGIN not in text:
        text += f"\n## DICOMweb: `dicomweb.py`\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


@dataclass(frozen=True, slots=True)
class Data:
    small: list[SmallStudy]
    study: Study
    folders: tuple[Path, ...]
    instances: int
    kinds: dict[str, list[Query]]


def prepare(root: Path, args: argparse.Namespace) -> Data:
    """Write the small studies and the CT phantom; the queries and their answers."""
    start = time.perf_counter()
    small = generate_studies(root / "studies", args.studies, args.seed)
    files = generate_ct_series(root / "phantom", slices=args.slices)
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    study = Study(
        str(headers[0].StudyInstanceUID),
        str(headers[0].SeriesInstanceUID),
        tuple(str(h.SOPInstanceUID) for h in headers),
        sum(f.stat().st_size for f in files) / 1e6,
        bytes(dcmread(files[0]).PixelData),
    )
    instances = sum(s.instances for s in small) + len(files)
    print(
        f"generated {args.studies:,} small studies and a {len(files)}-slice CT"
        f" ({study.megabytes:.1f} MB; {instances:,} instances in all)"
        f" in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    names = [s.patient_name for s in small] + [str(headers[0].PatientName)]
    prefixes = [
        Query({"PatientName": f"{group}*"}, sum(n.startswith(group) for n in names))
        for group in sorted(FAMILIES)  # BE first, the example of the issue
    ]
    print(
        "two-letter name prefixes match "
        + ", ".join(f"{q.params['PatientName']} {q.expected}" for q in prefixes[:4])
        + ", ... studies",
        flush=True,
    )
    pairs = [(s.patient_id, s.uid) for s in small]
    kinds = {
        "patient_id": patient_queries(pairs, args.queries + args.warmup, args.seed),
        "patient_name": [prefixes[i % len(prefixes)] for i in range(args.warmup)]
        + [prefixes[i % len(prefixes)] for i in range(args.queries)],
    }
    return Data(small, study, (root / "studies", root / "phantom"), instances, kinds)


def measure_large(root: Path, source: Path, args: argparse.Namespace) -> tuple[Results, int]:
    """pacs QIDO on a copy of query.py's cached index; returns the figures and its studies."""
    rows = copy_index(source, root / "large")
    count = args.queries + args.warmup
    kinds = {
        "patient_id": patient_queries([(pid, "") for pid, _ in rows], count, args.seed),
        # As many matches as a two-letter prefix has among 4,000 studies.
        "patient_name": prefix_queries([name for _, name in rows], count, (100, 180), args.seed),
    }
    server = start_pacs(root / "large", root / "pacs-large.log")
    results = {"pacs": Results()}
    client = Client(server.http_port)
    try:
        time_queries({"pacs": client}, kinds, args.warmup, args.block, results)
    finally:
        client.close()
        stop_process(server.process)
    return results["pacs"], len(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=4000, help="small studies for QIDO")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries of each kind")
    parser.add_argument("--slices", type=int, default=300, help="CT phantom slices")
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed study retrievals and metadata calls"
    )
    parser.add_argument("--frames", type=int, default=100, help="instances asked for frame 1")
    parser.add_argument(
        "--block", type=int, default=10, help="requests to one server before the other's turn"
    )
    parser.add_argument(
        "--settle",
        type=int,
        default=10,
        help="untimed requests that open each server's turn (0: none)",
    )
    parser.add_argument("--no-orthanc", action="store_true", help="measure pacs only")
    parser.add_argument("--no-scale", action="store_true", help="skip pacs over S3 and PostgreSQL")
    parser.add_argument(
        "--no-large", action="store_true", help="skip query.py's cached 100,000-study index"
    )
    parser.add_argument("--workdir", type=Path, help="for servers and files (default: /tmp)")
    parser.add_argument(
        "--record", action="store_true", help="write the table into benchmarks/README.md"
    )
    args = parser.parse_args(argv)

    plugin = None if args.no_orthanc else dicomweb_plugin()
    if not args.no_orthanc and (plugin is None or not shutil.which("Orthanc")):
        parser.error("needs Debian's orthanc and orthanc-dicomweb (or --no-orthanc)")
    root = Path(tempfile.mkdtemp(prefix="pacs-dicomweb-", dir=args.workdir))
    try:
        data = prepare(root, args)
        # Both servers run side by side and take turns request by request.
        servers: dict[str, tuple[subprocess.Popen[Any], int]] = {}
        clients: dict[str, Client] = {}
        backends: ScaleBackends | None = None
        orthanc_version = "-"
        try:
            seconds = pacs_import(root / "pacs-data", data.folders, root / "pacs.log")
            print(f"pacs import: {data.instances:,} instances in {seconds:.0f} s", flush=True)
            pacs = start_pacs(root / "pacs-data", root / "pacs.log")
            servers["pacs"] = pacs.process, pacs.http_port
            if not args.no_scale:
                backends = ScaleBackends()
                options, environment, _ = backends.fresh()
                seconds = pacs_import(
                    root / "pacs-s3", data.folders, root / "pacs-s3.log", options, environment
                )
                scaled = start_pacs(root / "pacs-s3", root / "pacs-s3.log", options, environment)
                servers["pacs S3+PG"] = scaled.process, scaled.http_port
                # Measured once every blob is in S3: reads then come from S3, not the spool.
                drained = wait_uploaded(scaled.http_port)
                print(
                    f"pacs S3+PG ({backends.s3_kind}) import: {data.instances:,} instances"
                    f" in {seconds:.0f} s, then {drained:.0f} s until all in S3",
                    flush=True,
                )
            if plugin is not None:
                orthanc, orthanc_version = start_orthanc_dicomweb(root / "orthanc", plugin)
                servers["Orthanc"] = orthanc, orthanc.http_port
                seconds = load_orthanc(orthanc, data.folders, data.instances)
                print(
                    f"Orthanc ({orthanc_version}), storescu: {data.instances:,} instances"
                    f" in {seconds:.0f} s",
                    flush=True,
                )
            clients = {name: Client(port) for name, (_, port) in servers.items()}
            results = measure(clients, data.kinds, data.study, args)
        finally:
            for client in clients.values():
                client.close()
            for process, _ in servers.values():
                stop_process(process)
            if backends is not None:
                backends.close()

        large, large_studies, source = None, 0, None if args.no_large else cached_index()
        if source is not None:
            large, large_studies = measure_large(root, source, args)

        for name, r in results.items():
            print(
                f"  {name}: study {r.study_bytes / 1e6:.1f} MB as multipart; metadata"
                f" {r.metadata_bytes / 1e6:.2f} MB, first call {r.metadata_first * 1e3:.0f} ms;"
                f" {r.connections} TCP connection(s) opened"
            )
        rows = report_rows(
            results["pacs"],
            results.get("Orthanc"),
            args.studies + 1,
            data.study,
            large,
            large_studies,
            results.get("pacs S3+PG"),
        )
        lines = [
            f"{os.cpu_count()} cores, Python {platform.python_version()},"
            f" SQLite {sqlite3.sqlite_version}, Orthanc {orthanc_version},"
            f" {time.strftime('%Y-%m-%d')}, {revision()}",
            "",
            f"QIDO: {args.queries} different queries of each kind after {args.warmup} untimed"
            f" ones. Study retrieval and metadata: median of {args.repeat} calls after an"
            f" untimed one; study retrieval asks `{ACCEPT_STUDY}` of both. Frames: each"
            " instance asked once, after 10 others. One keep-alive connection per server,"
            f" the servers taking turns in blocks of {args.block} requests, each turn of"
            f" QIDO and frames opened by {args.settle} untimed requests of its kind"
            " (see `in_turns`), `Accept-Encoding: identity`; the client reads the bytes"
            ' and parses nothing while timing. "pacs advantage" is how many times faster pacs is.'
            ' "pacs S3+PG": pacs over S3 and PostgreSQL (every blob uploaded before'
            ' timing), its "speed" relative to pacs on the filesystem and SQLite (1.00x:'
            " as fast).",
            "",
            *table(rows),
        ]
        if source is not None:
            lines += ["", f"Large index: a copy of `benchmarks/.cache/{source.name}`."]
        print("\n" + "\n".join(lines))
        errors = [f"{name}: {e}" for name, r in results.items() for e in r.errors]
        errors += [f"pacs, large index: {e}" for e in (large.errors if large else [])]
        for error in errors[:20]:
            print("ERROR", error)
        if args.record:
            record(lines)
        return 1 if errors else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
