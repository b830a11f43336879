"""``pacs deidentify``: one study from the archive, de-identified, to a folder or a node.

Reads the study through the same ``Archive`` as every front end (so whatever
index and blob store the settings name), makes each instance with
``pacs.core.deidentify``, and writes Part 10 files (``DIR/STUDY/SERIES/INSTANCE.dcm``,
named by the new UIDs) or sends them to a known node with C-STORE. Before
anything leaves, every instance is checked for burned-in annotation: one that
may show the patient's identity stops the whole study (nothing written or
sent) unless ``--allow-burned-in``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import orjson
from pydicom.dataset import Dataset

from pacs.config import Node, parse_node
from pacs.core import Archive
from pacs.core.deidentify import (
    DeidentifiedInstance,
    Deidentifier,
    PseudonymMap,
    burned_in_risk,
)
from pacs.dimse.store_scu import StoreSCU
from pacs.errors import ConfigError, NotFoundError, PacsError
from pacs.index.base import StoredInstance
from pacs.index.schema import Level


@dataclass
class DeidentifySummary:
    study_instance_uid: str = ""
    """The new Study Instance UID."""
    instances: int = 0
    done: int = 0
    warnings: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(original SOP Instance UID, reason) of every instance that did not get out."""

    @property
    def ok(self) -> bool:
        return not self.failed


class StudyRefused(PacsError):
    """Instances of the study may show patient identity in their pixels."""

    def __init__(self, reasons: list[tuple[str, str]]) -> None:
        self.reasons = reasons
        lines = "".join(f"\n  {uid}: {reason}" for uid, reason in reasons)
        super().__init__(
            f"refused: {len(reasons)} instance(s) may show the patient's identity in their"
            f" pixels, which de-identification leaves unchanged:{lines}\nNothing was written"
            " or sent. Check the images, then pass --allow-burned-in to proceed."
        )


def study_instances(archive: Archive, study_instance_uid: str) -> list[StoredInstance]:
    keys = {"StudyInstanceUID": study_instance_uid}
    instances = archive.instances_to_retrieve(Level.STUDY, keys)
    if not instances:
        raise NotFoundError(f"no study {study_instance_uid} in the archive")
    return sorted(instances, key=lambda s: (s.series_instance_uid, s.sop_instance_uid))


def burned_in_reasons(archive: Archive, study_instance_uid: str) -> list[tuple[str, str]]:
    """(SOP Instance UID, reason) for every instance ``burned_in_risk`` flags,
    from the precomputed metadata (no image is read)."""
    reasons = []
    for raw in archive.metadata(Level.STUDY, {"StudyInstanceUID": study_instance_uid}):
        header = orjson.loads(raw)
        probe = Dataset()
        for keyword, tag in (
            ("SOPInstanceUID", "00080018"),
            ("SOPClassUID", "00080016"),
            ("BurnedInAnnotation", "00280301"),
            ("ImageType", "00080008"),
        ):
            values = header.get(tag, {}).get("Value")
            if values:
                setattr(probe, keyword, values if keyword == "ImageType" else values[0])
        reason = burned_in_risk(probe)
        if reason is not None:
            reasons.append((str(probe.get("SOPInstanceUID", "?")), reason))
    return reasons


def prepare(
    archive: Archive, study_instance_uid: str, deidentifier: Deidentifier
) -> list[StoredInstance]:
    """The study's instances, once none may show identity in its pixels.

    Raises ``NotFoundError`` for an unknown study and ``StudyRefused`` when an
    instance may carry burned-in identity and ``allow_burned_in`` is off.
    """
    instances = study_instances(archive, study_instance_uid)
    if not deidentifier.options.allow_burned_in:
        reasons = burned_in_reasons(archive, study_instance_uid)
        if reasons:
            raise StudyRefused(reasons)
    return instances


def deidentify_study(
    archive: Archive,
    instances: list[StoredInstance],
    deidentifier: Deidentifier,
    emit: Callable[[DeidentifiedInstance], tuple[bool, str]],
    *,
    progress: TextIO | None = sys.stdout,
) -> DeidentifySummary:
    """De-identify each of ``instances`` (from ``prepare``) and hand it to
    ``emit``, which returns (done, what happened)."""
    summary = DeidentifySummary(instances=len(instances))
    for number, stored in enumerate(instances, start=1):
        try:
            result = deidentifier.part10(archive.read_instance(stored.sop_instance_uid))
        except PacsError as exc:
            summary.failed.append((stored.sop_instance_uid, str(exc)))
            _say(progress, f"[{number}/{len(instances)}] FAILED {stored.sop_instance_uid}: {exc}")
            continue
        summary.study_instance_uid = result.study_instance_uid
        for warning in result.warnings:
            summary.warnings += 1
            _say(progress, f"[{number}/{len(instances)}] warning: {warning}")
        done, what = emit(result)
        if done:
            summary.done += 1
            _say(progress, f"[{number}/{len(instances)}] {what}")
        else:
            summary.failed.append((stored.sop_instance_uid, what))
            _say(progress, f"[{number}/{len(instances)}] FAILED {result.sop_instance_uid}: {what}")
    return summary


def folder_writer(root: Path) -> Callable[[DeidentifiedInstance], tuple[bool, str]]:
    """Write each instance to ``root/STUDY/SERIES/INSTANCE.dcm`` (new UIDs), whole or not at all."""

    def write(instance: DeidentifiedInstance) -> tuple[bool, str]:
        folder = root / instance.study_instance_uid / instance.series_instance_uid
        path = folder / f"{instance.sop_instance_uid}.dcm"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomically(path, instance.data)
        except OSError as exc:
            return False, f"cannot write {path}: {exc.strerror or exc}"
        return True, f"written {path}"

    return write


def node_sender(store: StoreSCU) -> Callable[[DeidentifiedInstance], tuple[bool, str]]:
    """Send each instance over ``store``, an association in use."""

    def send(instance: DeidentifiedInstance) -> tuple[bool, str]:
        result = store.send(instance.data, instance.sop_class_uid, instance.sop_instance_uid)
        status = "no response" if result.status is None else f"status 0x{result.status:04X}"
        detail = f" ({result.reason})" if result.reason else ""
        if result.stored:
            return (
                True,
                f"sent {instance.sop_instance_uid} to {store.node.ae_title}: {status}{detail}",
            )
        return False, f"{store.node.ae_title} refused it: {status}{detail}"

    return send


def resolve_node(text: str, known: tuple[Node, ...]) -> Node:
    """``AE`` (one of the configured nodes) or ``AE@HOST:PORT``."""
    if "@" in text:
        return parse_node(text)
    node = next((n for n in known if n.ae_title == text.strip()), None)
    if node is None:
        names = ", ".join(n.ae_title for n in known) or "none configured"
        raise ConfigError(
            f"--node {text}: not a known node (known: {names}); give AE@HOST:PORT"
            " or add it to [[nodes]]"
        )
    return node


def load_mapping(path: Path | None) -> PseudonymMap:
    if path is None or not path.exists():
        return PseudonymMap()
    try:
        return PseudonymMap.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--mapping {path}: {exc}") from None


def save_mapping(path: Path, mapping: PseudonymMap) -> None:
    """Write the map readable by its owner only (it re-identifies the patients)."""
    data = json.dumps(mapping.to_json(), indent=2, ensure_ascii=False).encode() + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, data, mode=0o600)


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _say(out: TextIO | None, line: str) -> None:
    if out is not None:
        out.write(line + "\n")
        out.flush()
