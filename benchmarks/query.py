"""C-FIND latency on a 100,000-study index, and C-MOVE throughput beside C-STORE.

Part 1 builds an index of 100,000 studies x 2 series x 5 instances (1,000,000
instances, metadata only) for 60,000 patients with Vietnamese and other names,
diacritics kept, and loads it with ``SqliteIndex.add_instances`` in batches. The
index is cached under ``benchmarks/.cache/`` keyed by the generator parameters,
so only the first run pays for it. A real ``pacs serve`` is started on it and
study-level C-FIND is timed over one pynetdicom association, request to final
response, for several kinds of key; every answer is checked against the count
the generator predicts. DCMTK ``findscu`` gives a second, C-written client.

Part 2 stores the deterministic 300-slice CT phantom into an empty pacs with
``storescu`` and moves the study back out with ``movescu`` to a DCMTK
``storescp``, and compares the two rates.

    python benchmarks/query.py [--studies N] [--queries N] [--repeat R] [--record]

Needs Debian's ``dcmtk`` (storescu, storescp, movescu, findscu).
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import math
import os
import platform
import random
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_ROOT_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from benchmarks.dicom_nodes import (
    LOCALHOST,
    _set_nodelay,
    free_port,
    pacs_serve,
    revision,
    send_files_storescu,
    stop_process,
    wait_for_echo,
)
from benchmarks.phantom import generate_ct_series
from pacs.dimse.transport import guard_reactor
from pacs.index import SqliteIndex
from pacs.index.base import InstanceRecord
from pacs.index.schema import ATTRIBUTES, normalise_name
from pacs.index.sqlite import SCHEMA_VERSION

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
README = HERE / "README.md"
BEGIN, END = "<!-- query:begin -->", "<!-- query:end -->"

# Bump when the generated data change, so that a cached index is not reused.
GENERATOR_VERSION = 1

# -- names ----------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Vietnamese family names with their approximate share of the population (percent):
# a third of all patients are Nguyễn, which is what makes name search hard.
VIETNAMESE_FAMILY = (
    ("Nguyễn", 38.0), ("Trần", 11.0), ("Lê", 9.5), ("Phạm", 7.1), ("Hoàng", 3.0),
    ("Huỳnh", 2.1), ("Phan", 4.5), ("Vũ", 2.5), ("Võ", 1.4), ("Đặng", 2.1), ("Bùi", 2.0),
    ("Đỗ", 1.4), ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1.0), ("Lý", 0.5), ("Đinh", 0.6),
    ("Trương", 0.7), ("Lâm", 0.4), ("Mai", 0.4), ("Tạ", 0.2), ("Cao", 0.4), ("Đoàn", 0.5),
    ("Lương", 0.4), ("Trịnh", 0.4), ("Châu", 0.2), ("Quách", 0.1), ("Tô", 0.2),
    ("Thái", 0.2), ("Kiều", 0.1),
)  # fmt: skip
# Middle names: Văn and Thị dominate, as in real registers.
VIETNAMESE_MIDDLE = {
    "M": (
        ("Văn", 40.0), ("Đức", 6.0), ("Minh", 8.0), ("Hữu", 5.0), ("Quang", 5.0),
        ("Thanh", 5.0), ("Công", 4.0), ("Xuân", 3.0), ("Anh", 3.0), ("Quốc", 4.0),
        ("Tuấn", 2.0), ("Hoàng", 3.0), ("Ngọc", 3.0), ("Trọng", 3.0), ("Duy", 3.0),
    ),
    "F": (
        ("Thị", 50.0), ("Ngọc", 6.0), ("Thu", 5.0), ("Thanh", 5.0), ("Minh", 3.0),
        ("Hồng", 4.0), ("Kim", 4.0), ("Mỹ", 3.0), ("Phương", 3.0), ("Thùy", 3.0),
        ("Bảo", 2.0), ("Khánh", 2.0), ("Hoài", 2.0), ("Diệu", 1.0), ("Quỳnh", 2.0),
    ),
}  # fmt: skip
VIETNAMESE_GIVEN = {
    "M": _words(
        "An Bảo Bình Cường Công Dũng Duy Đạt Định Đông Giang Hải Hào Hiếu Hiển Hòa Hoàng"
        " Hùng Huy Khải Khang Khánh Khoa Kiên Lâm Linh Lộc Long Luân Mạnh Minh Nam Nghĩa"
        " Nhân Phát Phong Phúc Phương Quân Quang Quý Sang Sơn Tài Tâm Thắng Thành Thiện"
        " Thịnh Thông Tiến Toàn Trí Trung Trường Tuấn Tùng Việt Vinh Vũ"
    ),
    "F": _words(
        "Anh Ánh Châu Chi Diễm Diệp Dung Duyên Giang Hà Hạnh Hằng Hân Hiền Hoa Hồng Huệ"
        " Hương Hường Huyền Lan Liên Linh Loan Mai My Nga Ngân Ngọc Nhi Nhung Oanh Phượng"
        " Quyên Quỳnh Thảo Thơ Thủy Thư Thương Trâm Trang Trinh Tuyết Uyên Vân Vy Xuân Yến"
    ),
}
# Patients from elsewhere, with the diacritics of their own languages.
OTHER_FAMILY = _words(
    "Lefèvre Müller García Núñez Dvořák Kowalczyk Søndergaard Björk Çelik Öztürk Ferreira"
    " Gonçalves Schäfer Martín Rodríguez Đurić Nováková Łukasiewicz Ångström Pérez Smith"
    " Johnson Dubois Mercier Fernández Jiménez Krüger Wójcik Håkansson Ibáñez"
)
OTHER_GIVEN = {
    "M": _words("José François Łukasz Jürgen Søren João Matěj Emre Andrés Rubén Zoltán Ömer"),
    "F": _words("Zoë Hélène Inés Chloé Renée Åsa Agnieszka Ayşe Noémie Björg Małgorzata Zuzana"),
}
VIETNAMESE_SHARE = 0.75
INSTITUTIONS = (
    "Bệnh viện Bạch Mai",
    "Bệnh viện Chợ Rẫy",
    "Bệnh viện Đại học Y Dược TP.HCM",
    "Bệnh viện Việt Đức",
    "Hôpital Saint-Louis",
)

# -- studies --------------------------------------------------------------------------

MODALITIES = (("CT", 30.0), ("MR", 20.0), ("CR", 25.0), ("US", 10.0), ("DX", 15.0))
MIXED_STUDY_SHARE = 0.04  # studies whose second series is of another modality
DESCRIPTIONS = {
    "CT": (
        ("CT SỌ NÃO KHÔNG TIÊM THUỐC", "HEAD"),
        ("CT NGỰC CÓ TIÊM THUỐC CẢN QUANG", "CHEST"),
        ("CT BỤNG CHẬU", "ABDOMEN"),
        ("CT THORAX ABDOMEN WITH CONTRAST", "CHEST"),
        ("CT CỘT SỐNG THẮT LƯNG", "LSPINE"),
        ("CT HEAD WITHOUT CONTRAST", "HEAD"),
    ),
    "MR": (
        ("MRI SỌ NÃO", "HEAD"),
        ("MRI CỘT SỐNG CỔ", "CSPINE"),
        ("MRI KHỚP GỐI", "KNEE"),
        ("MR BRAIN WITH AND WITHOUT CONTRAST", "HEAD"),
        ("MRI GAN MẬT", "ABDOMEN"),
    ),
    "CR": (
        ("X-QUANG NGỰC THẲNG", "CHEST"),
        ("XQ CỘT SỐNG THẮT LƯNG THẲNG NGHIÊNG", "LSPINE"),
        ("CHEST PA AND LATERAL", "CHEST"),
        ("XQ KHỚP GỐI", "KNEE"),
    ),
    "US": (
        ("SIÊU ÂM Ổ BỤNG TỔNG QUÁT", "ABDOMEN"),
        ("SIÊU ÂM TUYẾN GIÁP", "NECK"),
        ("SIÊU ÂM TIM", "HEART"),
        ("US PELVIS", "PELVIS"),
    ),
    "DX": (
        ("X-QUANG NGỰC KỸ THUẬT SỐ", "CHEST"),
        ("DX HAND", "HAND"),
        ("XQ XOANG", "HEAD"),
        ("DX PELVIS AP", "PELVIS"),
    ),
}
SERIES_DESCRIPTIONS = {
    "CT": ("AXIAL 5mm", "AXIAL 1mm"),
    "MR": ("T1 SE", "T2 FLAIR"),
    "CR": ("PA", "LAT"),
    "US": ("B-MODE", "DOPPLER"),
    "DX": ("AP", "LAT"),
}


@dataclass(frozen=True, slots=True)
class Equipment:
    sop_class_uid: str
    rows: int
    columns: int
    bits_stored: int
    photometric: str
    image_type: str
    manufacturer: str
    model: str
    station: str


EQUIPMENT = {
    "CT": Equipment(
        "1.2.840.10008.5.1.4.1.1.2", 512, 512, 12, "MONOCHROME2",
        "ORIGINAL\\PRIMARY\\AXIAL", "SIEMENS", "SOMATOM go.Up", "CT01",
    ),
    "MR": Equipment(
        "1.2.840.10008.5.1.4.1.1.4", 256, 256, 12, "MONOCHROME2",
        "ORIGINAL\\PRIMARY\\M\\ND", "Philips", "Ingenia", "MR01",
    ),
    "CR": Equipment(
        "1.2.840.10008.5.1.4.1.1.1", 2140, 1760, 10, "MONOCHROME1",
        "ORIGINAL\\PRIMARY", "FUJIFILM Corporation", "FCR PROFECT CS", "CR01",
    ),
    "US": Equipment(
        "1.2.840.10008.5.1.4.1.1.6.1", 600, 800, 8, "RGB",
        "ORIGINAL\\PRIMARY\\ABDOMINAL", "Canon Medical Systems", "Aplio i800", "US01",
    ),
    "DX": Equipment(
        "1.2.840.10008.5.1.4.1.1.1.1", 3000, 2500, 12, "MONOCHROME2",
        "ORIGINAL\\PRIMARY", "GE Healthcare", "Definium 656", "DX01",
    ),
}  # fmt: skip
FIRST_DAY = date(2015, 1, 1)
YEARS = 10


@dataclass(frozen=True, slots=True)
class Spec:
    """What the generated index holds; also the cache key."""

    studies: int = 100_000
    patients: int = 60_000
    series: int = 2
    instances: int = 5
    seed: int = 0

    @property
    def key(self) -> str:
        return (
            f"index-v{GENERATOR_VERSION}-schema{SCHEMA_VERSION}-{self.studies}st-{self.patients}pt"
            f"-{self.series}x{self.instances}-seed{self.seed}"
        )


@dataclass(frozen=True, slots=True)
class Patient:
    patient_id: str
    name: str
    sex: str
    birth_date: str


@dataclass(frozen=True, slots=True)
class Study:
    uid: str
    patient: Patient
    study_date: str
    study_time: str
    accession: str
    study_id: str
    description: str
    body_part: str
    modalities: tuple[str, ...]
    """One per series."""
    referring: str
    institution: str


def _weighted(rng: random.Random, table: Sequence[tuple[str, float]]) -> str:
    return rng.choices([name for name, _ in table], [weight for _, weight in table])[0]


def _person(rng: random.Random, sex: str) -> str:
    """A DICOM PN: family^given. Vietnamese names come upper case, as HIS send them."""
    if rng.random() < VIETNAMESE_SHARE:
        family = _weighted(rng, VIETNAMESE_FAMILY)
        middle = _weighted(rng, VIETNAMESE_MIDDLE[sex])
        given = rng.choice(VIETNAMESE_GIVEN[sex])
        return f"{family}^{middle} {given}".upper()
    return f"{rng.choice(OTHER_FAMILY)}^{rng.choice(OTHER_GIVEN[sex])}"


def _day(offset: int) -> str:
    return (FIRST_DAY + timedelta(days=offset)).strftime("%Y%m%d")


def _age(birth: str, on: str) -> str:
    years = int(on[:4]) - int(birth[:4]) - (on[4:] < birth[4:])
    return f"{max(years, 0):03d}Y"


def generate(spec: Spec) -> list[Study]:
    """The studies of ``spec``, in the order an archive would have received them."""
    rng = random.Random(spec.seed)
    patient_ids = rng.sample(range(10**9, 10**10), spec.patients)
    patients = []
    for number in patient_ids:
        sex = "M" if rng.random() < 0.5 else "F"
        birth = _day(rng.randrange(-85 * 365, -365))  # born 1930-2014
        patients.append(Patient(str(number), _person(rng, sex), sex, birth))
    physicians = [_person(rng, rng.choice("MF")) for _ in range(300)]

    days = (date(FIRST_DAY.year + YEARS, 1, 1) - FIRST_DAY).days
    # Fewer studies at the weekend: Saturday 40%, Sunday 15% of a weekday.
    week = (1.0, 1.0, 1.0, 1.0, 1.0, 0.4, 0.15)
    weights = [week[(FIRST_DAY + timedelta(d)).weekday()] for d in range(days)]
    study_days = rng.choices(range(days), weights, k=spec.studies)
    drafts: list[Study] = []
    for n, day in enumerate(study_days):
        # Every patient has a study; the rest go mostly to a minority of patients
        # (follow-ups), as in a real archive.
        patient = (
            patients[n] if n < spec.patients else patients[int(spec.patients * rng.random() ** 1.5)]
        )
        modality = _weighted(rng, MODALITIES)
        modalities = [modality] * spec.series
        if spec.series > 1 and rng.random() < MIXED_STUDY_SHARE:
            modalities[-1] = rng.choice([m for m, _ in MODALITIES if m != modality])
        description, body_part = rng.choice(DESCRIPTIONS[modality])
        moment = f"{rng.randrange(7, 20):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
        drafts.append(
            Study(
                uid="",  # numbered below, in date order
                patient=patient,
                study_date=_day(day),
                study_time=moment,
                accession="",
                study_id="",
                description=description,
                body_part=body_part,
                modalities=tuple(modalities),
                referring=rng.choice(physicians),
                institution=rng.choice(INSTITUTIONS),
            )
        )
    drafts.sort(key=lambda s: (s.study_date, s.study_time))

    studies = []
    per_day: Counter[str] = Counter()
    for n, draft in enumerate(drafts, 1):
        per_day[draft.study_date] += 1
        seq = per_day[draft.study_date]
        studies.append(
            replace(
                draft,
                uid=f"{PYDICOM_ROOT_UID}7.{spec.seed}.{n}",
                accession=f"{draft.modalities[0]}{draft.study_date[2:]}{seq:04d}",
                study_id=str(seq),
            )
        )
    return studies


def instance_records(study: Study, spec: Spec) -> Iterator[InstanceRecord]:
    """What ingest would index for each instance of ``study`` (see ``index_values``)."""
    patient = study.patient
    study_values = {
        "patient_name": patient.name,
        "patient_id": patient.patient_id,
        "patient_birth_date": patient.birth_date,
        "patient_sex": patient.sex,
        "study_instance_uid": study.uid,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "accession_number": study.accession,
        "study_id": study.study_id,
        "referring_physician_name": study.referring,
        "study_description": study.description,
        "patient_age": _age(patient.birth_date, study.study_date),
        "institution_name": study.institution,
    }
    stored_at = (
        f"{study.study_date[:4]}-{study.study_date[4:6]}-{study.study_date[6:]}"
        f"T{study.study_time[:2]}:{study.study_time[2:4]}:{study.study_time[4:]}.000+00:00"
    )
    for s, modality in enumerate(study.modalities, 1):
        kit = EQUIPMENT[modality]
        series_uid = f"{study.uid}.{s}"
        bits_allocated = 8 if kit.bits_stored == 8 else 16
        samples = 3 if kit.photometric == "RGB" else 1
        series_values = {
            **study_values,
            "series_instance_uid": series_uid,
            "modality": modality,
            "series_number": s,
            "series_description": SERIES_DESCRIPTIONS[modality][(s - 1) % 2],
            "series_date": study.study_date,
            "series_time": study.study_time,
            "body_part_examined": study.body_part,
            "station_name": kit.station,
            "manufacturer": kit.manufacturer,
            "manufacturer_model_name": kit.model,
            "sop_class_uid": kit.sop_class_uid,
            "content_date": study.study_date,
            "content_time": study.study_time,
            "acquisition_number": 1,
            "image_type": kit.image_type,
            "rows": kit.rows,
            "columns": kit.columns,
            "bits_allocated": bits_allocated,
            "bits_stored": kit.bits_stored,
            "pixel_representation": 0,
            "samples_per_pixel": samples,
            "photometric_interpretation": kit.photometric,
        }
        pixel_bytes = kit.rows * kit.columns * samples * bits_allocated // 8
        for i in range(1, spec.instances + 1):
            sop_uid = f"{series_uid}.{i}"
            yield InstanceRecord(
                values={**series_values, "sop_instance_uid": sop_uid, "instance_number": i},
                blob_key=f"{study.uid}/{series_uid}/{sop_uid}.0000000000000000.dcm",
                transfer_syntax_uid=ExplicitVRLittleEndian,
                size=pixel_bytes + 2_000,
                content_hash=hashlib.sha256(sop_uid.encode()).hexdigest(),
                pixel_data_offset=1_900,
                pixel_data_length=pixel_bytes,
                source_ae_title=kit.station,
                stored_at=stored_at,
            )


def build_index(spec: Spec, studies: list[Study], batch: int) -> tuple[Path, float | None]:
    """The data folder holding the index of ``spec``, built unless cached.

    Returns the folder and the build time (``None`` when it came from the cache).
    """
    folder = CACHE / spec.key
    if (folder / "index.sqlite").exists():
        return folder, None
    partial = CACHE / (spec.key + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    columns = {a.column for a in ATTRIBUTES}
    index = SqliteIndex(partial / "index.sqlite")
    start = time.perf_counter()
    try:
        pending: list[InstanceRecord] = []
        total = spec.studies * spec.series * spec.instances
        loaded = 0
        for study in studies:
            for record in instance_records(study, spec):
                pending.append(record)
                if len(pending) == batch:
                    loaded += _load(index, pending, columns)
                    pending = []
                    if loaded % (total // 10 or 1) < batch:
                        elapsed = time.perf_counter() - start
                        print(f"  {loaded:>9,} instances  {elapsed:6.0f} s", flush=True)
        loaded += _load(index, pending, columns)
    finally:
        index.close()
    seconds = time.perf_counter() - start
    partial.rename(folder)
    return folder, seconds


def _load(index: SqliteIndex, records: list[InstanceRecord], columns: set[str]) -> int:
    unknown = set(records[0].values) - columns if records else set()
    if unknown:
        raise ValueError(f"not index columns: {sorted(unknown)}")
    existing = index.add_instances(records)
    if any(e is not None for e in existing):
        raise RuntimeError("the generator produced a SOP Instance UID twice")
    return len(records)


# -- queries --------------------------------------------------------------------------

RETURN_KEYS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyID",
    "StudyDescription",
    "ReferringPhysicianName",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
KINDS = {
    "patient_id": "PatientID exact",
    "patient_name": "PatientName prefix*, lower case",
    "study_day": "StudyDate range, 1 day (a day's list)",
    "study_date": "StudyDate range, 1 week",
    "accession": "AccessionNumber exact",
    "date_modality": "StudyDate 1 week + ModalitiesInStudy",
}
NAME_MATCHES = (10, 99)  # "tens of studies" for a name prefix
PENDING = (0xFF00, 0xFF01)


@dataclass(frozen=True, slots=True)
class Case:
    keys: dict[str, str]
    expected: int
    """Studies that match, as the generator knows them."""


def query_cases(studies: list[Study], count: int, seed: int) -> dict[str, list[Case]]:
    """``count`` different queries of each kind, with the number of studies each matches.

    ``studies`` must be in date order (``generate`` returns them so).
    """
    rng = random.Random(f"queries-{seed}")
    cases: dict[str, list[Case]] = {}

    per_patient = Counter(s.patient.patient_id for s in studies)
    ids = rng.sample(sorted(per_patient), count)
    cases["patient_id"] = [Case({"PatientID": i}, per_patient[i]) for i in ids]

    # Name prefixes: from a random patient's name, the shortest prefix (past the
    # family name) that matches at most NAME_MATCHES[1] studies, kept if it matches
    # at least NAME_MATCHES[0]. Counted on the same folded form the index matches.
    names = sorted(normalise_name(s.patient.name) for s in studies)
    patients = sorted({s.patient for s in studies}, key=lambda p: p.patient_id)
    rng.shuffle(patients)
    chosen: dict[str, int] = {}
    for patient in patients:
        if len(chosen) == count:
            break
        name = normalise_name(patient.name)
        for end in range(name.index("^") + 2, len(name) + 1):
            prefix = name[:end]
            if prefix.endswith(" "):
                continue
            matches = bisect.bisect_left(names, prefix + "\U0010ffff") - bisect.bisect_left(
                names, prefix
            )
            if matches <= NAME_MATCHES[1]:
                if matches >= NAME_MATCHES[0]:
                    chosen.setdefault(prefix, matches)
                break
    if len(chosen) < count:
        raise RuntimeError(f"only {len(chosen)} name prefixes match {NAME_MATCHES} studies")
    cases["patient_name"] = [Case({"PatientName": p + "*"}, n) for p, n in chosen.items()]

    dates = [s.study_date for s in studies]
    days = (date(FIRST_DAY.year + YEARS, 1, 1) - FIRST_DAY).days

    def week(first: int, length: int = 7) -> tuple[str, int, int]:
        lower, upper = _day(first), _day(first + length - 1)
        return (
            f"{lower}-{upper}",
            bisect.bisect_left(dates, lower),
            bisect.bisect_right(dates, upper),
        )

    cases["study_day"] = []
    for first in rng.sample(range(days), count):
        text, lo, hi = week(first, 1)
        cases["study_day"].append(Case({"StudyDate": text}, hi - lo))

    cases["study_date"] = []
    for first in rng.sample(range(days - 6), count):
        text, lo, hi = week(first)
        cases["study_date"].append(Case({"StudyDate": text}, hi - lo))

    cases["accession"] = [
        Case({"AccessionNumber": s.accession}, 1) for s in rng.sample(studies, count)
    ]

    cases["date_modality"] = []
    for first in rng.sample(range(days - 6), count):
        text, lo, hi = week(first)
        modality = _weighted(rng, MODALITIES)
        matches = sum(modality in s.modalities for s in studies[lo:hi])
        cases["date_modality"].append(
            Case({"StudyDate": text, "ModalitiesInStudy": modality}, matches)
        )
    return cases


def identifier(keys: dict[str, str]) -> Dataset:
    """A study-level C-FIND identifier asking what a study list shows."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in RETURN_KEYS:
        setattr(ds, keyword, keys.get(keyword, ""))
    return ds


@dataclass(frozen=True, slots=True)
class Timing:
    seconds: float
    matches: int
    status: int


def cpu_seconds(pid: int) -> float:
    """CPU time used so far by process ``pid`` and its children (Linux ``/proc``).

    Unlike latency, this hardly moves when other work shares the machine.
    """
    total = 0.0
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for process in [pid, *map(int, children)]:
            fields = Path(f"/proc/{process}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return math.nan
    return total


def time_finds(
    port: int, runs: dict[str, list[Case]], warmup: int, server_pid: int
) -> dict[str, tuple[list[Timing], float]]:
    """Every case over one association, request to final response, kind after kind.

    The first ``warmup`` cases of each kind are run once beforehand and not reported.
    Returns the timings of each kind and the server's CPU time for them.
    """
    # By default pynetdicom formats every response identifier for a debug log that
    # is off (~0.16 ms per match here): the client would be measured, not pacs.
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    ae = AE(ae_title="PACSBENCH")
    ae.add_requested_context(
        StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    ae.acse_timeout = 30
    ae.dimse_timeout = ae.network_timeout = 300
    assoc = ae.associate(LOCALHOST, port, ae_title="PACS")
    if not assoc.is_established:
        raise RuntimeError("C-FIND association rejected")
    _set_nodelay(assoc)
    guard_reactor(assoc)  # else pynetdicom now and then drops a response (transport.py)
    results: dict[str, tuple[list[Timing], float]] = {}
    try:
        for cases in runs.values():
            for case in cases[:warmup]:
                _find(assoc, case)
        for kind, cases in runs.items():
            before = cpu_seconds(server_pid)
            timings = [_find(assoc, case) for case in cases[warmup:]]
            results[kind] = (timings, cpu_seconds(server_pid) - before)
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def _find(assoc: Any, case: Case) -> Timing:
    query = identifier(case.keys)
    matches, status = 0, -1
    start = time.perf_counter()
    for response, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
        code = int(getattr(response, "Status", -1))
        if code in PENDING:
            matches += 1
        else:
            status = code
    return Timing(time.perf_counter() - start, matches, status)


# DCMTK's logger with microsecond time stamps: the request and final response lines
# of each query give its latency as findscu saw it.
_LOG_CONFIG = """\
log4cplus.rootLogger = INFO, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""
_STAMP = r"(\d\d):(\d\d):(\d\d)\.(\d{3})\.(\d{3}) "
_SENT = re.compile(_STAMP + r"Sending Find Request")
_FINAL = re.compile(_STAMP + r"Received Final Find Response \((\w+)")
_PENDING_LINE = re.compile(_STAMP + r"Find Response: \d+ \(Pending\)")


def _seconds(match: re.Match[str]) -> float:
    h, m, s, ms, us = (int(g) for g in match.groups()[:5])
    return h * 3600 + m * 60 + s + ms / 1e3 + us / 1e6


def time_findscu(
    port: int, runs: dict[str, list[Case]], warmup: int, workdir: Path
) -> dict[str, list[Timing]]:
    """The same queries with DCMTK's findscu: one process and association per kind."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "log.cfg"
    config.write_text(_LOG_CONFIG)
    env = {**os.environ, "TCP_NODELAY": "1"}
    results: dict[str, list[Timing]] = {}
    for kind, cases in runs.items():
        files = []
        for n, case in enumerate(cases):
            ds = identifier(case.keys)
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = StudyRootQueryRetrieveInformationModelFind
            ds.file_meta.MediaStorageSOPInstanceUID = UID(f"{PYDICOM_ROOT_UID}8.{n + 1}")
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            path = workdir / f"{kind}-{n:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(str(path))
        command = ["findscu", "-S", "-aet", "PACSBENCH", "-aec", "PACS", "-lc", str(config)]
        output = subprocess.run(
            [*command, LOCALHOST, str(port), *files],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        timings, sent, matches = [], 0.0, 0
        for line in output.splitlines():
            if found := _SENT.match(line):
                sent, matches = _seconds(found), 0
            elif _PENDING_LINE.match(line):
                matches += 1
            elif found := _FINAL.match(line):
                ok = 0 if found.group(6) == "Success" else -1
                seconds = (_seconds(found) - sent) % 86400  # past midnight
                timings.append(Timing(seconds, matches, ok))
        if len(timings) != len(cases):
            raise RuntimeError(
                f"findscu answered {len(timings)} of {len(cases)} queries:\n" + output[-2000:]
            )
        results[kind] = timings[warmup:]
    return results


# -- servers --------------------------------------------------------------------------


def start_pacs(data_dir: Path, log_path: Path, *extra: str) -> tuple[subprocess.Popen[Any], int]:
    """``pacs serve`` on ``data_dir``, once it answers C-ECHO; returns it and its DICOM port."""
    dicom_port = free_port()
    with log_path.open("ab") as log:
        process = pacs_serve(data_dir, dicom_port, free_port(), log, *extra)
    try:
        wait_for_echo(LOCALHOST, dicom_port, "PACS", timeout=60, proc=process)
    except BaseException as exc:
        stop_process(process)
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"pacs serve did not come up: {exc}\n{tail}") from exc
    return process, dicom_port


def start_storescp(
    out_dir: Path, log_path: Path, max_pdu: int
) -> tuple[subprocess.Popen[Any], int]:
    """DCMTK's storescp as the C-MOVE destination ``DEST``, writing into ``out_dir``."""
    port = free_port()
    env = {**os.environ, "TCP_NODELAY": "1"}  # see dicom_nodes._set_nodelay
    command = ["storescp", "-aet", "DEST", "--max-pdu", str(max_pdu), "-od", str(out_dir)]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*command, str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for_echo(LOCALHOST, port, "DEST", timeout=30, proc=process)
    except BaseException:
        stop_process(process)
        raise
    return process, port


def movescu(port: int, study_uid: str, log_path: Path) -> tuple[float, bool]:
    """C-MOVE one study to ``DEST`` with DCMTK's movescu; wall time and success.

    Timed like ``send_files_storescu``: from starting the process to its exit.
    """
    command = [
        "movescu",
        "--log-level",
        "info",
        "-S",
        "-aet",
        "PACSBENCH",
        "-aec",
        "PACS",
        "-aem",
        "DEST",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        LOCALHOST,
        str(port),
    ]
    env = {**os.environ, "TCP_NODELAY": "1"}
    with log_path.open("wb") as log:
        start = time.perf_counter()
        code = subprocess.call(
            command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        seconds = time.perf_counter() - start
    output = log_path.read_text(errors="replace")
    return seconds, code == 0 and "Received Final Move Response (Success)" in output


@dataclass(frozen=True, slots=True)
class Transfer:
    store_seconds: float
    store_failures: int
    move_seconds: float
    move_ok: bool
    received: int


def store_and_move(
    root: Path, phantom: Path, study_uid: str, processes: int, dest_pdu: int
) -> Transfer:
    """C-STORE the phantom into an empty pacs, then C-MOVE the study to a storescp."""
    run = root / "run"
    shutil.rmtree(run, ignore_errors=True)
    received_dir = run / "dest"
    received_dir.mkdir(parents=True)
    scp, dest_port = start_storescp(received_dir, run / "storescp.log", dest_pdu)
    try:
        server, port = start_pacs(
            run / "pacs-data",
            run / "pacs.log",
            "--dicom-processes",
            str(processes),
            "--node",
            f"DEST@{LOCALHOST}:{dest_port}",
        )
        try:
            store = send_files_storescu(LOCALHOST, port, "PACS", phantom)
            with sqlite3.connect(run / "pacs-data" / "index.sqlite") as db:
                stored = int(db.execute("SELECT count(*) FROM instances").fetchone()[0])
            files = sum(1 for p in phantom.iterdir() if p.is_file())
            move_seconds, ok = movescu(port, study_uid, run / "movescu.log")
            received = sum(1 for p in received_dir.iterdir() if p.is_file())
        finally:
            stop_process(server)
    finally:
        stop_process(scp)
    failures = max(store["failures"], files - stored)
    return Transfer(store["seconds"], failures, move_seconds, ok and received == files, received)


# -- report ---------------------------------------------------------------------------


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def _ms(timings: Sequence[Timing]) -> tuple[float, float]:
    seconds = [t.seconds for t in timings]
    return statistics.median(seconds) * 1e3, _p95(seconds) * 1e3


def _wrong(timings: Sequence[Timing], cases: Sequence[Case]) -> int:
    """How many answers had a failure status or the wrong count; each is printed."""
    wrong = 0
    for t, c in zip(timings, cases, strict=True):
        if t.status != 0 or t.matches != c.expected:
            wrong += 1
            print(
                f"    WRONG: status 0x{t.status & 0xFFFF:04X}, {t.matches} matches"
                f" (expected {c.expected}) after {t.seconds * 1e3:.0f} ms for {c.keys}"
            )
    return wrong


def record(lines: list[str]) -> None:
    """Replace the query figures between the markers in benchmarks/README.md."""
    text = README.read_text()
    if BEGIN not in text:
        text += f"\n## Query and retrieve: `query.py`\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    README.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def _build_time(folder: Path, built: float | None) -> tuple[float | None, str]:
    """Build time, measured now or remembered from when the cached index was built."""
    stamp = folder / "build-seconds"
    if built is not None:
        stamp.write_text(f"{built:.1f} {time.strftime('%Y-%m-%d')}\n")
        return built, "built now"
    if not stamp.exists():
        return None, "cached"
    seconds, day = stamp.read_text().split()
    return float(seconds), f"cached, built {day}"


def main(argv: Sequence[str] | None = None) -> int:
    defaults = Spec()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=defaults.studies)
    parser.add_argument("--patients", type=int, default=defaults.patients)
    parser.add_argument("--series", type=int, default=defaults.series, help="series per study")
    parser.add_argument(
        "--instances", type=int, default=defaults.instances, help="instances per series"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument(
        "--batch", type=int, default=5000, help="instances per add_instances transaction"
    )
    parser.add_argument("--queries", type=int, default=200, help="timed queries of each kind")
    parser.add_argument(
        "--warmup", type=int, default=20, help="other queries of each kind run first, untimed"
    )
    parser.add_argument("--no-findscu", action="store_true", help="time pynetdicom only")
    parser.add_argument("--slices", type=int, default=300, help="CT phantom for C-MOVE")
    parser.add_argument("--repeat", type=int, default=3, help="C-STORE + C-MOVE runs (median)")
    parser.add_argument(
        "--dest-max-pdu",
        type=int,
        default=16384,
        help="max PDU storescp accepts, as C-MOVE destination (DCMTK's default 16384)",
    )
    parser.add_argument(
        "--dicom-processes", type=int, default=1, help="pacs serve --dicom-processes"
    )
    parser.add_argument("--part", choices=("find", "move", "both"), default="both")
    parser.add_argument("--workdir", type=Path, help="for servers and files (default: /tmp)")
    parser.add_argument(
        "--record", action="store_true", help="write the tables into benchmarks/README.md"
    )
    args = parser.parse_args(argv)
    if args.record and args.part != "both":
        parser.error("--record needs --part both")

    spec = Spec(args.studies, args.patients, args.series, args.instances, args.seed)
    total = spec.studies * spec.series * spec.instances
    root = Path(tempfile.mkdtemp(prefix="pacs-query-", dir=args.workdir))
    lines = [
        f"{os.cpu_count()} cores, Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}, {time.strftime('%Y-%m-%d')}, {revision()},"
        f" load average {os.getloadavg()[0]:.1f} at the start",
        "",
    ]
    failed = False
    try:
        if args.part in ("find", "both"):
            start = time.perf_counter()
            studies = generate(spec)
            print(f"generated {spec.studies:,} studies in {time.perf_counter() - start:.1f} s")
            folder, built = build_index(spec, studies, args.batch)
            build_seconds, how = _build_time(folder, built)
            size = (folder / "index.sqlite").stat().st_size / 1e6
            build = (
                f"in {build_seconds:.0f} s ({total / build_seconds:,.0f} instances/s)"
                if build_seconds
                else "(build time unknown)"
            )
            print(f"index {folder} ({how}): {total:,} instances {build}, {size:.0f} MB", flush=True)
            runs = query_cases(studies, args.queries + args.warmup, spec.seed)
            server, port = start_pacs(
                folder, root / "pacs-find.log", "--dicom-processes", str(args.dicom_processes)
            )
            try:
                found = time_finds(port, runs, args.warmup, server.pid)
                dcmtk = (
                    None
                    if args.no_findscu
                    else time_findscu(port, runs, args.warmup, root / "findscu")
                )
            finally:
                stop_process(server)

            lines += [
                f"**C-FIND, study level**, on {spec.studies:,} studies and {total:,} instances"
                f" ({spec.patients:,} patients). Index built by `add_instances`"
                f" ({args.batch:,} instances per transaction) {build}, {size:.0f} MB."
                f" {args.queries} different queries per kind after {args.warmup} untimed ones,"
                " request to final response, one association per client; the last column is"
                " the server's CPU time (all its threads, from `/proc`) during the pynetdicom"
                " run, divided by the number of queries;"
                f" `pacs serve --dicom-processes {args.dicom_processes}`.",
                "",
                "| query | matches: median (min-max) | pynetdicom median ms | p95 ms"
                " | findscu median ms | p95 ms | both medians < 20 ms (target)"
                " | pacs CPU ms per query (mean) |",
                "|---|---:|---:|---:|---:|---:|:---:|---:|",
            ]
            wrong_answers = 0
            for kind, label in KINDS.items():
                cases = runs[kind][args.warmup :]
                timings, cpu = found[kind]
                cpu_ms = cpu * 1e3 / len(timings)
                matches = [t.matches for t in timings]
                median, p95 = _ms(timings)
                wrong = _wrong(timings, cases)
                print(
                    f"  {label:40} {median:7.1f} ms median {p95:7.1f} ms p95"
                    f"  matches {statistics.median(matches):g} ({min(matches)}-{max(matches)})"
                    f"  wrong={wrong}  pacs CPU {cpu_ms:.1f} ms per query",
                    flush=True,
                )
                columns = "- | -"
                worst = median
                if dcmtk is not None:
                    d_median, d_p95 = _ms(dcmtk[kind])
                    d_wrong = _wrong(dcmtk[kind], cases)
                    print(
                        f"  {'  findscu':40} {d_median:7.1f} ms median {d_p95:7.1f} ms p95"
                        f"  wrong={d_wrong}"
                    )
                    columns = f"{d_median:.1f} | {d_p95:.1f}"
                    wrong += d_wrong
                    worst = max(worst, d_median)
                failed = failed or wrong > 0
                wrong_answers += wrong
                lines.append(
                    f"| {label} | {statistics.median(matches):g} ({min(matches)}-{max(matches)})"
                    f" | {median:.1f} | {p95:.1f} | {columns} | {'yes' if worst < 20 else 'no'}"
                    f" | {cpu_ms:.1f} |"
                )
            clients = 1 if dcmtk is None else 2
            lines += [
                "",
                f"Answers with a failure status or the wrong number of matches: {wrong_answers}"
                f" of {clients * len(KINDS) * args.queries}.",
                "",
            ]

        if args.part in ("move", "both"):
            phantom = root / "phantom"
            files = generate_ct_series(phantom, slices=args.slices)
            megabytes = sum(f.stat().st_size for f in files) / 1e6
            study_uid = str(dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            transfers = []
            for n in range(args.repeat):
                t = store_and_move(
                    root, phantom, study_uid, args.dicom_processes, args.dest_max_pdu
                )
                print(
                    f"  run {n + 1}: C-STORE {megabytes / t.store_seconds:6.1f} MB/s"
                    f" (failures={t.store_failures}), C-MOVE {megabytes / t.move_seconds:6.1f}"
                    f" MB/s ({t.received} received, ok={t.move_ok})",
                    flush=True,
                )
                transfers.append(t)
                failed = failed or t.store_failures > 0 or not t.move_ok
            store_s = statistics.median(t.store_seconds for t in transfers)
            move_s = statistics.median(t.move_seconds for t in transfers)
            ratio = store_s / move_s
            store_failed = sum(t.store_failures > 0 for t in transfers)
            move_failed = sum(not t.move_ok for t in transfers)
            lines += [
                f"**C-STORE then C-MOVE** of the {len(files)}-slice CT phantom"
                f" ({megabytes:.1f} MB),"
                f" median of {args.repeat} runs, each on an empty data folder: `storescu` (one"
                " association) into pacs, then `movescu` moves the study to DCMTK `storescp`"
                f" (max PDU {args.dest_max_pdu}, writing files). Both timed from process start"
                " to exit. A run fails when an instance is not stored, or not received.",
                "",
                "| operation | inst/s | MB/s | failed runs |",
                "|---|---:|---:|---:|",
                f"| C-STORE, storescu → pacs | {len(files) / store_s:.0f}"
                f" | {megabytes / store_s:.1f} | {store_failed} of {len(transfers)} |",
                f"| C-MOVE, pacs → storescp | {len(files) / move_s:.0f}"
                f" | {megabytes / move_s:.1f} | {move_failed} of {len(transfers)} |",
                f"| C-MOVE / C-STORE, ratio of the medians (target ≥ 0.80) | | {ratio:.2f}"
                f" ({'met' if ratio >= 0.8 else 'not met'}) | |",
            ]
        print("\n" + "\n".join(lines))
        if args.record:
            record(lines)
        return 1 if failed else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
