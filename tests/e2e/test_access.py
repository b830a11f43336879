"""Who may see what, against a real `pacs serve`: every deny path over HTTP and DIMSE,
shares and share links, CSRF, login throttling, the audit trail, secure defaults, TLS.

Two satellite hospitals (Lào Cai and Bạch Mai), a radiologist, an admin and a
modality account; a study of each hospital and one of the central hospital.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs.core.access import new_secret
from pacs.index import SqliteIndex
from pacs.index.access import AuditQuery, CredentialRecord
from pacs.types import AuditEvent
from tests.conftest import ServerProcess, get_port, start_server, stop_server
from tests.dicom_clients import association, store_all
from tests.dicom_factory import encode, make_ct, part10_bytes
from tests.e2e.test_viewer import ARTIFACTS
from tests.e2e.test_viewer import browser as browser  # the fixture

LAO_CAI = "Bệnh viện Đa khoa tỉnh Lào Cai"
BACH_MAI = "Bệnh viện Bạch Mai"
PASSWORDS = {
    "admin": "admin password 1",
    "dr-an": "radiologist password 1",
    "laocai": "lao cai password 1",
    "bachmai": "bach mai password 1",
    "ct1": "modality password 1",
}
ROLES = {
    "admin": "admin",
    "dr-an": "radiologist",
    "laocai": "hospital",
    "bachmai": "hospital",
    "ct1": "modality",
}
INSTITUTIONS = {"laocai": LAO_CAI, "bachmai": BACH_MAI}


def study(name: str, institution: str, patient: str) -> Dataset:
    ds = make_ct(f"access-{name}", 1, 1, patient_id=patient, patient_name=f"Access^{name}")
    ds.InstitutionName = institution
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


STUDIES = {
    "laocai": study("laocai", LAO_CAI.upper(), "LC-0001"),  # any case, as modalities write it
    "bachmai": study("bachmai", BACH_MAI, "BM-0001"),
    "central": study("central", "Bệnh viện Trung ương", "TW-0001"),
}


@dataclass
class Site:
    server: ServerProcess
    tokens: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.http_url

    def get(self, path: str, who: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if who is not None:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        return httpx.get(self.url + path, headers=headers, timeout=30, **kwargs)

    def index(self) -> SqliteIndex:
        return SqliteIndex(self.server.data_dir / "index.sqlite")

    def audit(self, **filters: str) -> list[AuditEvent]:
        time.sleep(0.6)  # the server writes its trail every quarter of a second
        index = self.index()
        try:
            return list(index.audit(AuditQuery(**filters)))
        finally:
            index.close()


def pacs_cli(data_dir: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs", *args, "--data-dir", str(data_dir)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("access")
    data = root / "pacs-data"
    for name, role in ROLES.items():
        extra = ["--institution", INSTITUTIONS[name]] if name in INSTITUTIONS else []
        done = pacs_cli(
            data,
            "user",
            "add",
            name,
            "--role",
            role,
            *extra,
            "--password-stdin",
            stdin=PASSWORDS[name] + "\n",
        )
        assert done.returncode == 0, done.stderr
    tokens = {}
    for name in ROLES:
        done = pacs_cli(data, "token", "create", "--user", name, "--expires", "1d")
        assert done.returncode == 0, done.stderr
        tokens[name] = done.stdout.strip()
    config = root / "pacs.toml"
    config.write_text(
        "known_nodes_only = true\n"
        '[[nodes]]\nae_title = "PROBE"\nhost = "127.0.0.1"\nport = 104\n'
        '[[nodes]]\nae_title = "MODALITY"\nhost = "127.0.0.1"\nport = 104\nallow = ["store"]\n'
        '[[nodes]]\nae_title = "LAOCAI"\nhost = "127.0.0.1"\nport = 104\n'
        f'allow = ["find", "move", "get"]\ninstitutions = ["{LAO_CAI}"]\n'
        '[[nodes]]\nae_title = "FARAWAY"\nhost = "10.254.254.254"\nport = 104\n',
        encoding="utf-8",
    )
    server = start_server(data, "--config", str(config), "--check-node-address")
    try:
        store_all(server, list(STUDIES.values()), ae_title="MODALITY")
        yield Site(server, tokens)
    finally:
        stop_server(server)


def study_path(name: str) -> str:
    ds = STUDIES[name]
    return f"/dicom-web/studies/{ds.StudyInstanceUID}"


def instance_path(name: str) -> str:
    ds = STUDIES[name]
    return f"{study_path(name)}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def every_resource(name: str) -> list[tuple[str, dict[str, str]]]:
    """Each kind of read of one study: retrieve, metadata, frames, rendered, thumbnail..."""
    ds = STUDIES[name]
    instance = instance_path(name)
    dicom = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    return [
        (study_path(name), dicom),
        (f"{study_path(name)}/metadata", {"Accept": "application/dicom+json"}),
        (f"{study_path(name)}/series/{ds.SeriesInstanceUID}", dicom),
        (instance, dicom),
        (f"{instance}/metadata", {"Accept": "application/dicom+json"}),
        (f"{instance}/frames/1", {"Accept": 'multipart/related; type="application/octet-stream"'}),
        (f"{instance}/rendered", {"Accept": "image/png"}),
        (f"{instance}/frames/1/rendered", {"Accept": "image/jpeg"}),
        (f"{study_path(name)}/thumbnail", {"Accept": "image/jpeg"}),
        (f"{instance}/bulkdata/7FE00010", {"Accept": "*/*"}),
        (
            f"/wado?requestType=WADO&studyUID={ds.StudyInstanceUID}"
            f"&seriesUID={ds.SeriesInstanceUID}&objectUID={ds.SOPInstanceUID}",
            {"Accept": "*/*"},
        ),
    ]


def found_studies(site: Site, who: str, **params: str) -> list[str]:
    response = site.get("/dicom-web/studies", who, params=params)
    assert response.status_code == 200, response.text
    return sorted(s["0020000D"]["Value"][0] for s in response.json())


def uids(*names: str) -> list[str]:
    return sorted(STUDIES[n].StudyInstanceUID for n in names)


# -- HTTP: who gets in ----------------------------------------------------------------


def test_health_and_login_page_are_open_everything_else_needs_a_credential(site: Site) -> None:
    assert site.get("/health").status_code == 200
    assert site.get("/login").status_code == 200
    for path, headers in [*every_resource("central"), ("/dicom-web/studies", {}), ("/system", {})]:
        response = site.get(path, headers=headers)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
    stow = httpx.post(
        site.url + "/dicom-web/studies",
        content=b"x",
        timeout=10,
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert stow.status_code == 401
    page = site.get("/viewer/", headers={"Accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")


def test_expired_and_revoked_tokens_and_a_disabled_user(site: Site) -> None:
    index = site.index()
    try:
        secret = new_secret("pacs")
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
        index.put_credential(
            CredentialRecord(secret.identifier, "token", secret.digest, "dr-an", past, past)
        )
    finally:
        index.close()
    expired = site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {secret.text}"})
    assert expired.status_code == 401 and "expired" in expired.text

    made = pacs_cli(site.server.data_dir, "token", "create", "--user", "dr-an", "--expires", "1h")
    token = made.stdout.strip()
    assert site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}).is_success
    identifier = token.split("_", 1)[1].split(".")[0]
    assert pacs_cli(site.server.data_dir, "token", "revoke", identifier).returncode == 0
    revoked = site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"})
    assert revoked.status_code == 401 and "revoked" in revoked.text  # at once, no cache
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    assert (
        site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {tampered}"}).status_code
        == 401
    )

    add = pacs_cli(
        site.server.data_dir,
        "user",
        "add",
        "leaver",
        "--role",
        "radiologist",
        "--password-stdin",
        stdin="leaver password 1\n",
    )
    assert add.returncode == 0, add.stderr
    token = pacs_cli(site.server.data_dir, "token", "create", "--user", "leaver").stdout.strip()
    assert site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}).is_success
    assert pacs_cli(site.server.data_dir, "user", "disable", "leaver").returncode == 0
    assert (
        site.get("/dicom-web/studies", headers={"Authorization": f"Bearer {token}"}).status_code
        == 401
    )


def test_wrong_roles_are_403(site: Site) -> None:
    for path, headers in every_resource("central")[:3]:
        assert site.get(path, "ct1", headers=headers).status_code == 403, path
    assert site.get("/dicom-web/studies", "ct1").status_code == 403
    assert site.get("/system", "laocai").status_code == 403
    assert site.get("/system", "dr-an").status_code == 403
    assert site.get("/system", "admin").status_code == 200
    ds = make_ct("access-stow", 1, 1, patient_id="STOW-1")
    body = (
        b"--B\r\nContent-Type: application/dicom\r\n\r\n"
        + part10_bytes(ds.SOPClassUID, ds.SOPInstanceUID, ExplicitVRLittleEndian, encode(ds))
        + b"\r\n--B--\r\n"
    )
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=B'}
    for who, status in (("laocai", 403), ("ct1", 200)):
        response = httpx.post(
            site.url + "/dicom-web/studies",
            content=body,
            timeout=30,
            headers={**headers, "Authorization": f"Bearer {site.tokens[who]}"},
        )
        assert response.status_code == status, (who, response.text)
    shared = httpx.post(
        site.url + f"/api/studies/{STUDIES['central'].StudyInstanceUID}/shares",
        json={"user": "laocai"},
        timeout=10,
        headers={"Authorization": f"Bearer {site.tokens['laocai']}"},
    )
    assert shared.status_code == 403


def test_a_hospital_sees_its_own_studies_only(site: Site) -> None:
    assert found_studies(site, "laocai") == uids("laocai")
    assert found_studies(site, "bachmai") == uids("bachmai")
    assert set(uids("bachmai", "central", "laocai")) <= set(found_studies(site, "dr-an"))
    # By UID, by any key, with the study-level counts: Bạch Mai's study does not exist for Lào Cai.
    other = STUDIES["bachmai"]
    assert found_studies(site, "laocai", StudyInstanceUID=other.StudyInstanceUID) == []
    assert found_studies(site, "laocai", PatientID="BM-0001") == []
    series = site.get(f"{study_path('bachmai')}/series", "laocai")
    missing = site.get("/dicom-web/studies/1.2.3.4.5/series", "laocai")
    assert (series.status_code, series.text) == (missing.status_code, missing.text)
    instances = site.get("/dicom-web/instances", "laocai", params={"PatientID": "BM-0001"})
    assert instances.json() == []
    for path, headers in every_resource("bachmai"):
        response = site.get(path, "laocai", headers=headers)
        assert response.status_code == 404, (path, response.status_code)
        assert "Bạch Mai" not in response.text and "BM-0001" not in response.text
    for path, headers in every_resource("laocai"):
        assert site.get(path, "laocai", headers=headers).status_code == 200, path
    # The refusals are in the audit trail, as refusals, with the patient.
    retrievals = [
        e
        for e in site.audit(actor="laocai", study_uid=other.StudyInstanceUID)
        if e.action == "retrieve"
    ]
    assert {e.outcome for e in retrievals} == {"denied"}
    assert {e.patient_id for e in retrievals} == {"BM-0001"}
    # Retrievals in a burst are one event with a count (a viewer asks frame by frame).
    assert sum(e.count for e in retrievals) >= len(every_resource("bachmai"))


def test_sharing_with_a_hospital_works_and_revoking_is_immediate(site: Site) -> None:
    central = STUDIES["central"].StudyInstanceUID
    assert found_studies(site, "laocai") == uids("laocai")
    added = pacs_cli(site.server.data_dir, "share", "--study", central, "--with", "laocai")
    assert added.returncode == 0, added.stderr
    assert found_studies(site, "laocai") == uids("laocai", "central")
    assert site.get(instance_path("central") + "/rendered", "laocai").status_code == 200
    assert found_studies(site, "bachmai") == uids("bachmai")  # only Lào Cai's
    gone = pacs_cli(
        site.server.data_dir, "share", "--study", central, "--with", "laocai", "--revoke"
    )
    assert gone.returncode == 0, gone.stderr
    assert site.get(instance_path("central") + "/rendered", "laocai").status_code == 404
    assert found_studies(site, "laocai") == uids("laocai")
    actions = [e.action for e in site.audit(study_uid=central) if e.action in ("share", "unshare")]
    assert actions[-2:] == ["share", "unshare"]


def test_share_links_over_http_expire_and_are_revoked(site: Site) -> None:
    central = STUDIES["central"].StudyInstanceUID
    auth = {"Authorization": f"Bearer {site.tokens['dr-an']}"}
    made = httpx.post(
        site.url + f"/api/studies/{central}/links", json={"expires": "1h"}, headers=auth, timeout=10
    )
    assert made.status_code == 201, made.text
    link = made.json()
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        landing = browser.get(link["url"].replace(site.url, ""), follow_redirects=False)
        assert landing.status_code == 303
        assert landing.headers["location"] == f"/viewer/#/study/{central}"
        session = browser.get("/session").json()
        assert session["via"] == "share-link" and session["studies"] == [central]
        studies = browser.get("/dicom-web/studies").json()
        assert [s["0020000D"]["Value"][0] for s in studies] == [central]
        assert browser.get(instance_path("central") + "/rendered").status_code == 200
        assert browser.get(instance_path("laocai") + "/rendered").status_code == 404
        posted = browser.post(f"/api/studies/{central}/links", json={})
        assert posted.status_code == 403  # read-only: no CSRF token to give, no right either
        revoked = httpx.delete(site.url + f"/api/links/{link['id']}", headers=auth, timeout=10)
        assert revoked.status_code == 204
        after = browser.get(instance_path("central") + "/rendered")
        assert after.status_code == 401 and "revoked" in after.text
    index = site.index()
    try:
        secret = new_secret("share")
        past = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)).isoformat()
        index.put_credential(
            CredentialRecord(
                secret.identifier, "link", secret.digest, "dr-an", past, past, study_uid=central
            )
        )
    finally:
        index.close()
    expired = site.get(f"/share/{secret.text}", follow_redirects=False)
    assert expired.status_code == 401 and "expired" in expired.text


def test_viewer_sessions_need_the_csrf_token_to_change_anything(site: Site) -> None:
    central = STUDIES["central"].StudyInstanceUID
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        wrong = browser.post("/login", data={"username": "dr-an", "password": "nope"})
        assert wrong.status_code == 401 and "pacs_session" not in browser.cookies
        logged = browser.post(
            "/login",
            data={"username": "DR-AN", "password": PASSWORDS["dr-an"], "next": "//evil.example/x"},
            follow_redirects=False,
        )
        assert logged.status_code == 303 and logged.headers["location"] == "/viewer/"
        cookie = logged.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert browser.get("/dicom-web/studies").status_code == 200
        csrf = browser.get("/viewer/config.json").json()["auth"]["csrfToken"]
        refused = browser.post(f"/api/studies/{central}/shares", json={"user": "bachmai"})
        assert refused.status_code == 403 and "CSRF" in refused.text
        done = browser.post(
            f"/api/studies/{central}/shares",
            json={"user": "bachmai"},
            headers={"X-CSRF-Token": csrf},
        )
        assert done.status_code == 201, done.text
        listed = browser.get(f"/api/studies/{central}/shares").json()
        assert [u["user"] for u in listed["users"]] == ["bachmai"]
        gone = browser.delete(
            f"/api/studies/{central}/shares/bachmai", headers={"X-CSRF-Token": csrf}
        )
        assert gone.status_code == 204
        browser.post("/logout")
        assert browser.get("/dicom-web/studies").status_code == 401


def test_only_an_admin_deletes_and_each_deletion_is_audited_with_its_patient(
    site: Site,
) -> None:
    doomed = study("doomed", LAO_CAI, "LC-0002")
    store_all(site.server, [doomed], ae_title="MODALITY")
    path = f"/dicom-web/studies/{doomed.StudyInstanceUID}"

    def delete(who: str | None) -> int:
        headers = {"Authorization": f"Bearer {site.tokens[who]}"} if who else {}
        return httpx.delete(site.url + path, headers=headers, timeout=30).status_code

    assert delete(None) == 401
    assert [delete(who) for who in ("dr-an", "laocai", "ct1")] == [403] * 3
    with httpx.Client(base_url=site.url, timeout=10) as browser:
        logged = browser.post("/login", data={"username": "admin", "password": PASSWORDS["admin"]})
        assert logged.status_code in (200, 303)
        assert browser.delete(path).status_code == 403  # a session needs its CSRF token
    assert site.get(path + "/metadata", "laocai").status_code == 200  # still there
    assert delete("admin") == 204
    assert site.get(path + "/metadata", "admin").status_code == 404
    assert delete("admin") == 404

    deletions = site.audit(action="delete", study_uid=str(doomed.StudyInstanceUID))
    done = [e for e in deletions if e.outcome == "success"]
    assert [(e.actor, e.patient_id) for e in done] == [("admin", "LC-0002")]
    refused = {e.actor for e in deletions if e.outcome == "denied"}
    assert {"dr-an", "laocai", "ct1"} <= refused
    # Reads over HTTP name their patient too, found from the study by the writer.
    reads = site.audit(patient_id="LC-0002", action="retrieve")
    assert any(e.actor == "laocai" and e.actor_kind == "user" for e in reads)


def test_failed_logins_are_throttled_and_audited(site: Site) -> None:
    statuses = [
        httpx.post(
            site.url + "/login", json={"username": "bachmai", "password": "guess"}, timeout=10
        ).status_code
        for _ in range(7)
    ]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    right = httpx.post(
        site.url + "/login",
        timeout=10,
        json={"username": "bachmai", "password": PASSWORDS["bachmai"]},
    )
    assert right.status_code == 429 and right.headers["retry-after"]
    logins = [e.outcome for e in site.audit(actor="bachmai", action="login")]
    assert logins.count("failure") >= 5 and logins.count("denied") >= 3


# -- DIMSE ------------------------------------------------------------------------------


def find(site: Site, ae_title: str, keys: dict[str, str]) -> tuple[list[str], int]:
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", site.server.dicom_port, ae_title="PACS")
    if not assoc.is_established:
        return [], -1
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    found, status = [], 0
    for response, identifier in assoc.send_c_find(
        query, StudyRootQueryRetrieveInformationModelFind
    ):
        status = int(response.Status)
        if status in (0xFF00, 0xFF01) and identifier is not None:
            found.append(str(identifier.StudyInstanceUID))
    assoc.release()
    return sorted(found), status


def test_an_unknown_ae_is_refused_and_audited(site: Site) -> None:
    assert find(site, "STRANGER", {}) == ([], -1)
    refused = [e for e in site.audit(actor="STRANGER") if e.action == "login"]
    assert refused and refused[-1].outcome == "denied"


def test_a_node_limited_to_its_institution(site: Site) -> None:
    assert find(site, "LAOCAI", {}) == (uids("laocai"), 0)
    assert find(site, "LAOCAI", {"StudyInstanceUID": STUDIES["bachmai"].StudyInstanceUID}) == (
        [],
        0,
    )
    assert set(uids("bachmai", "central", "laocai")) <= set(find(site, "PROBE", {})[0])
    # A C-MOVE of another hospital's study moves nothing, and is audited as refused.
    mover = AE(ae_title="LAOCAI")
    mover.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = mover.associate("127.0.0.1", site.server.dicom_port, ae_title="PACS")
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = STUDIES["bachmai"].StudyInstanceUID
    model = StudyRootQueryRetrieveInformationModelMove
    responses = list(assoc.send_c_move(query, "PROBE", model))
    assoc.release()
    final = responses[-1][0]
    assert int(final.Status) == 0 and int(final.NumberOfCompletedSuboperations or 0) == 0
    denied = [
        e for e in site.audit(actor="LAOCAI") if e.action == "retrieve" and e.outcome == "denied"
    ]
    assert denied and denied[-1].study_uid == STUDIES["bachmai"].StudyInstanceUID


def test_a_known_ae_from_another_address_is_refused(site: Site) -> None:
    """FARAWAY is configured at 10.254.254.254; from 127.0.0.1 it gets 0x0124."""
    assert find(site, "FARAWAY", {}) == ([], 0x0124)
    ds = make_ct("access-faraway", 1, 1)
    with association(
        site.server, [(str(ds.SOPClassUID), ExplicitVRLittleEndian)], ae_title="FARAWAY"
    ) as assoc:
        assert int(assoc.send_c_store(ds).Status) == 0x0124
    assert [e.outcome for e in site.audit(actor="FARAWAY")][-1] == "denied"


def test_every_refusal_above_is_in_the_audit_trail(site: Site) -> None:
    """Runs after the deny-path tests of this module (pytest keeps their order)."""
    trail = site.audit()
    refused = [e for e in trail if e.outcome == "denied"]

    def seen(check: Any) -> bool:
        return any(check(e) for e in refused)

    # no, expired, revoked or tampered credentials (the caller is unknown then)
    assert seen(lambda e: e.actor_kind == "unauthenticated" and "-> 401" in e.detail)
    assert seen(lambda e: e.actor == "ct1" and "-> 403" in e.detail)  # a role that may not
    assert seen(
        lambda e: e.actor == "laocai" and e.study_uid == STUDIES["bachmai"].StudyInstanceUID
    )
    assert seen(lambda e: e.action == "share" and e.actor == "laocai")  # sharing, as a hospital
    assert seen(lambda e: e.action == "login" and e.actor == "bachmai")  # throttled
    assert seen(lambda e: e.action == "login" and e.actor == "STRANGER")  # unknown AE
    assert seen(lambda e: e.actor == "FARAWAY")  # a node from the wrong address
    assert seen(lambda e: e.actor == "LAOCAI" and e.action == "retrieve")  # outside its scope
    started = [e for e in trail if e.action == "config"]
    assert started and "known_nodes_only=True" in started[0].detail


def test_the_audit_trail_is_append_only_and_exported_as_atna_json(site: Site) -> None:
    index = site.index()
    try:
        with pytest.raises(Exception, match="append-only"):
            index._access_write([("DELETE FROM audit", ())])
    finally:
        index.close()
    exported = pacs_cli(site.server.data_dir, "audit", "--json", "--patient", "LC-0001")
    assert exported.returncode == 0, exported.stderr
    messages = [json.loads(line) for line in exported.stdout.splitlines()]
    assert messages and all(
        {"Patient": "LC-0001"}.items()
        <= {
            o["ParticipantObjectTypeCodeRole"]: o["ID"]
            for o in m["ParticipantObjectIdentification"]
        }.items()
        for m in messages
    )
    assert {m["EventID"]["code"] for m in messages} >= {"110106"}
    text = pacs_cli(site.server.data_dir, "audit", "--user", "laocai", "--since", "1h")
    assert "laocai" in text.stdout and text.returncode == 0
    # No HTTP way to change it exists.
    for method in ("DELETE", "PUT", "POST"):
        response = httpx.request(
            method,
            site.url + "/api/audit",
            timeout=10,
            headers={"Authorization": f"Bearer {site.tokens['admin']}"},
        )
        assert response.status_code in (404, 405)


# -- secure defaults and TLS ----------------------------------------------------------


def test_a_public_address_without_accounts_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pacs",
            "serve",
            "--data-dir",
            str(tmp_path / "d"),
            "--host",
            "0.0.0.0",
            "--http-port",
            str(get_port()),
            "--dicom-port",
            str(get_port()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "without authentication" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in PEM files."""
    now = dt.datetime.now(dt.UTC)

    def make(
        name: str, issuer: tuple[x509.Name, Any] | None, ca: bool, san: bool
    ) -> tuple[x509.Name, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        issuer_name, issuer_key = issuer or (subject, key)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
        certificate = builder.sign(issuer_key, hashes.SHA256())
        (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (folder / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return subject, key

    ca = make("ca", None, True, False)
    make("server", ca, False, True)
    make("client", ca, False, False)
    return {n: folder / f"{n}.pem" for n in ("ca", "server", "client")} | {
        f"{n}-key": folder / f"{n}.key" for n in ("server", "client")
    }


def test_https_and_dicom_over_tls(tmp_path: Path) -> None:
    files = _certificates(tmp_path)
    http_port, dicom_port, tls_port = get_port(), get_port(), get_port()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pacs",
                "serve",
                "--data-dir",
                str(tmp_path / "d"),
                "--http-port",
                str(http_port),
                "--dicom-port",
                str(dicom_port),
                "--dicom-tls-port",
                str(tls_port),
                "--tls-cert",
                str(files["server"]),
                "--tls-key",
                str(files["server-key"]),
                "--tls-client-ca",
                str(files["ca"]),
                "--log-level",
                "warning",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"https://127.0.0.1:{http_port}"
        trust = ssl.create_default_context(cafile=str(files["ca"]))
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/health", verify=trust, timeout=2).is_success:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise AssertionError(log.read_text()) from None
                time.sleep(0.2)
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=5)
        # DICOM over TLS with a client certificate the CA signed: C-ECHO and C-STORE work.
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca"]))
        client.load_cert_chain(files["client"], files["client-key"])
        ae = AE(ae_title="TLSCLIENT")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", tls_port, ae_title="PACS", tls_args=(client, "127.0.0.1"))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assert int(assoc.send_c_store(make_ct("access-tls", 1, 1)).Status) == 0
        assoc.release()
        # Without a client certificate the handshake fails; the plain port still answers.
        bare = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files["ca"]))
        with (
            socket.create_connection(("127.0.0.1", tls_port), timeout=10) as raw,
            pytest.raises((ssl.SSLError, ConnectionResetError, OSError)),
            bare.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"\x01\x00")
            tls.recv(1)
        plain = AE(ae_title="PLAIN")
        plain.add_requested_context(Verification)
        assoc = plain.associate("127.0.0.1", dicom_port, ae_title="PACS")
        assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
        assoc.release()
        found = httpx.get(url + "/dicom-web/studies", verify=trust, timeout=10)
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [
            make_ct("access-tls", 1, 1).StudyInstanceUID
        ]
    finally:
        process.terminate()
        process.wait(timeout=15)


# -- the viewer behind a login ---------------------------------------------------------


def test_the_viewer_asks_to_log_in_then_shows_only_what_the_hospital_may_see(
    site: Site, browser: Any
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.set_default_timeout(20_000)
    try:
        page.goto(site.url + "/viewer/")
        page.wait_for_selector("form[action='/login']")
        page.fill("#username", "laocai")
        page.fill("#password", "not the password")
        page.click("button[type=submit]")
        page.wait_for_selector(".error")
        assert "wrong user name or password" in page.inner_text(".error")
        page.fill("#username", "laocai")
        page.fill("#password", PASSWORDS["laocai"])
        page.click("button[type=submit]")
        page.wait_for_selector(".list-state.ok, .list-state.empty")
        assert "laocai (hospital)" in page.inner_text(".signed-in")
        rows = page.locator("table.studies tbody tr").all_inner_texts()
        assert len(rows) == 1 and "LC-0001" in rows[0], rows
        # Another hospital's study, asked for by URL, does not exist for this account.
        page.goto(f"{site.url}/viewer/#/study/{STUDIES['bachmai'].StudyInstanceUID}")
        page.wait_for_function("() => /not in the archive/.test(document.body.innerText)")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "access-login.png"))
        page.goto(site.url + "/viewer/")
        page.wait_for_selector(".signed-in")
        page.click("text=Log out")
        page.wait_for_selector("form[action='/login']")
        page.goto(site.url + "/viewer/")  # the session is gone: back to the login page
        page.wait_for_url("**/login?next=*")
        page.wait_for_selector("form[action='/login']")
    finally:
        context.close()
    assert not errors, errors
