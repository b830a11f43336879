"""The ``pacs`` command: ``serve``, ``import``, ``deidentify``, ``migrate-storage``, and
the administration of users, tokens, shares and the audit trail (``pacs.admin``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pacs import __version__, admin
from pacs.config import ENV_PREFIX, load_settings
from pacs.errors import ConfigError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML settings file (also {ENV_PREFIX}CONFIG)"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="archive folder (default ./pacs-data)")
    parser.add_argument(
        "--duplicate-policy",
        choices=("keep", "replace", "reject"),
        help="same SOP Instance UID with different content: keep the first copy"
        " (default), replace it, or reject the new one",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--direct-io",
        action="store_const",
        const=True,
        help="write images past the page cache (O_DIRECT): less CPU per image on a VM,"
        " but a just-stored study is read from the disk",
    )
    parser.add_argument(
        "--min-free-space",
        metavar="SIZE",
        help="space stores leave free on the images' disk: 500MB, 2GiB, 1%% (default) or 0",
    )
    parser.add_argument(
        "--index-url",
        metavar="URL",
        help="metadata index: postgresql://USER@HOST:PORT/DB (default: SQLite in the data folder)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacs",
        description="Self-hosted PACS: DICOM store, query/retrieve and DICOMweb.",
        epilog=f"Every option can also be set in the TOML file or as {ENV_PREFIX}<NAME>"
        " (e.g. PACS_DICOM_PORT); flags win over the environment, which wins over the file.",
    )
    parser.add_argument("--version", action="version", version=f"pacs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the DICOM node and the HTTP server")
    _common(serve)
    _storage(serve)
    serve.add_argument("--ae-title", help="our AE title (default PACS)")
    serve.add_argument("--dicom-port", metavar="PORT", help="DICOM port (default 11112)")
    serve.add_argument("--http-port", metavar="PORT", help="HTTP port (default 8080)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--node",
        dest="nodes",
        action="append",
        metavar="AE@HOST:PORT",
        help="a known remote DICOM node; repeat for several",
    )
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="a web origin allowed to call DICOMweb from a browser (* for any); repeatable",
    )
    serve.add_argument(
        "--known-nodes-only",
        action="store_const",
        const=True,
        help="refuse associations from calling AE titles not given with --node",
    )
    serve.add_argument(
        "--max-associations", metavar="N", help="concurrent associations per process (64)"
    )
    serve.add_argument(
        "--dicom-processes",
        metavar="N",
        help="processes serving DICOM associations (default: one per CPU core)",
    )
    serve.add_argument("--tls-cert", metavar="PEM", help="certificate: HTTPS (and DICOM TLS)")
    serve.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    serve.add_argument(
        "--dicom-tls-port", metavar="PORT", help="DICOM over TLS on this port too (e.g. 2762)"
    )
    serve.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="DICOM TLS peers must present a certificate signed by this CA",
    )
    serve.add_argument(
        "--check-node-address",
        action="store_const",
        const=True,
        help="a known node's associations must come from its configured host",
    )

    importer = commands.add_parser(
        "import", help="bulk-import DICOM files and folders into the archive"
    )
    _common(importer)
    _storage(importer)
    importer.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    importer.add_argument("--workers", type=int, default=4, help="parallel files (default 4)")

    migrate = commands.add_parser(
        "migrate-storage",
        help="copy every blob to another store (e.g. filesystem to S3), verified",
    )
    _common(migrate)
    migrate.add_argument(
        "--from",
        dest="source",
        metavar="URL",
        help="store to copy from (default: the configured storage_url)",
    )
    migrate.add_argument(
        "--to", dest="target", metavar="URL", required=True, help="store to copy to"
    )
    migrate.add_argument("--workers", type=int, default=4, help="parallel copies (default 4)")
    migrate.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="do not read each copy back to compare its SHA-256",
    )
    remove = commands.add_parser(
        "delete",
        help="remove a study, a series or an instance from the archive (audited)",
    )
    _common(remove)
    _storage(remove)
    remove.add_argument("--study", dest="del_study", metavar="UID", required=True)
    remove.add_argument("--series", dest="del_series", metavar="UID")
    remove.add_argument("--instance", dest="del_instance", metavar="UID", help="needs --series")
    _deidentify_parser(commands)
    admin.add_parsers(commands, _common)
    return parser


def _storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-url",
        metavar="URL",
        help="blob store: s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false or a folder"
        " (default: blobs/ in the data folder); S3 keys from PACS_S3_ACCESS_KEY and"
        " PACS_S3_SECRET_KEY or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    )


def _deidentify_parser(commands: Any) -> None:
    # Its own options are dest="deid_*": they are not settings (see main).
    deid = commands.add_parser(
        "deidentify",
        help="copy a study de-identified (PS3.15 Basic Profile) to a folder or a DICOM node",
        description="De-identify one study with the DICOM PS3.15 Annex E Basic Application"
        " Level Confidentiality Profile and write it to a folder or send it to a node.",
    )
    _common(deid)
    deid.add_argument("--ae-title", help="our AE title when sending (default PACS)")
    deid.add_argument("--study", dest="deid_study", required=True, metavar="UID")
    target = deid.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--to", dest="deid_to", metavar="DIR", help="write Part 10 files under DIR/STUDY/SERIES/"
    )
    target.add_argument(
        "--node",
        dest="deid_node",
        metavar="AE|AE@HOST:PORT",
        help="send with C-STORE to a configured node ([[nodes]]) or to AE@HOST:PORT",
    )
    deid.add_argument(
        "--mapping",
        dest="deid_mapping",
        metavar="FILE",
        help="JSON file of pseudonyms, replaced UIDs and date offsets, read if it exists and"
        " updated; keep it apart from the data: it re-identifies the patient",
    )
    deid.add_argument("--patient-id", dest="deid_patient_id", metavar="ID")
    deid.add_argument("--patient-name", dest="deid_patient_name", metavar="NAME")
    deid.add_argument(
        "--dates",
        dest="deid_dates",
        choices=("remove", "shift"),
        help="remove dates as the profile says (default), or shift them (Retain Longitudinal"
        " Temporal Information with Modified Dates)",
    )
    deid.add_argument(
        "--date-offset",
        dest="deid_date_offset",
        type=int,
        metavar="DAYS",
        help="shift every date by DAYS (negative: earlier); implies --dates shift",
    )
    deid.add_argument(
        "--offset-per",
        dest="deid_offset_per",
        choices=("patient", "study"),
        default="patient",
        help="without --date-offset, one derived offset per patient (default) or per study",
    )
    deid.add_argument(
        "--retain-patient-characteristics",
        dest="deid_characteristics",
        action="store_true",
        help="keep sex, age, size, weight (Retain Patient Characteristics Option)",
    )
    deid.add_argument(
        "--clean-descriptors",
        dest="deid_descriptors",
        action="store_true",
        help="keep descriptions and comments, cleaned of names, IDs and dates",
    )
    deid.add_argument(
        "--allow-burned-in",
        dest="deid_allow_burned_in",
        action="store_true",
        help="de-identify images that may show the patient's identity in their pixels"
        " (they are sent unchanged), with a warning",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags: dict[str, Any] = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "config", "paths", "workers", "source", "target", "verify")
        and not key.startswith(("deid_", "admin_", "del_"))
    }
    try:
        settings = load_settings(flags, args.config)
        if args.command == "serve":
            from pacs.app import serve

            serve(settings)
            return 0
        if args.command == "deidentify":
            return _deidentify(settings, args)
        if args.command in admin.COMMANDS:
            return admin.run(settings, args)
        if args.command == "delete":
            return _delete(settings, args.del_study, args.del_series, args.del_instance)
        if args.command == "migrate-storage":
            return _migrate(settings, args.source, args.target, args.workers, args.verify)
        return _import(settings, args.paths, args.workers)
    except ConfigError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _audit_export(archive: Any, study: str, outcome: str, detail: str) -> None:
    """A study leaving de-identified is an export of patient data (PS3.15 A.5.3.5)."""
    from pacs.types import AuditEvent

    operator = admin.system_operator()
    archive.audit.record(
        AuditEvent("deidentify", outcome, operator, "system", "", "", study, detail)
    )


def _delete(settings: Any, study: str, series: str | None, instance: str | None) -> int:
    """What ``DELETE /dicom-web/studies/...`` does, for an administrator at the server."""
    from pacs.app import build_archive
    from pacs.errors import PacsError
    from pacs.index.schema import Level
    from pacs.types import AuditEvent

    if instance and not series:
        raise ConfigError("--instance needs --series")
    keys = {"StudyInstanceUID": study}
    level = Level.STUDY
    if series:
        keys["SeriesInstanceUID"], level = series, Level.SERIES
    if instance:
        keys["SOPInstanceUID"], level = instance, Level.IMAGE
    operator = admin.system_operator()
    detail = f"pacs delete {' '.join(f'{k}={v}' for k, v in keys.items())}"
    archive = build_archive(settings)
    try:
        try:
            deletion = archive.delete(level, keys)
        except PacsError as exc:
            archive.audit.record(
                AuditEvent(
                    "delete", "failure", operator, "system", "", "", study, f"{detail}: {exc}"
                )
            )
            print(f"pacs: error: {exc}", file=sys.stderr)
            return 1
        archive.audit.record(
            AuditEvent(
                "delete",
                "success",
                operator,
                "system",
                "",
                deletion.patient_id,
                deletion.study_uid,
                f"{detail}: {deletion.instances} instances",
            )
        )
        what = list(keys.values())[-1]
        print(f"deleted {deletion.instances} instances of {level.value.lower()} {what}")
        return 0
    finally:
        archive.close()


def _import(settings: Any, paths: list[str], workers: int) -> int:
    from pacs.app import build_archive, configure_libraries
    from pacs.bulk_import import import_paths, print_summary
    from storage import SpooledBlobStore

    configure_libraries()
    archive = build_archive(settings)
    try:
        summary = import_paths(archive, paths, workers=max(1, workers))
        pending = archive.uploads_pending()
        if pending and isinstance(archive.blobs, SpooledBlobStore):
            # Done means in S3, not in this machine's spool (Ctrl-C leaves the
            # rest there, for the next server started on this data folder).
            print(f"waiting for {pending} upload(s) to S3", file=sys.stderr, flush=True)
            archive.blobs.drain()
    finally:
        archive.close()
    print_summary(summary)
    return 1 if summary.counts["rejected"] else 0


def _deidentify(settings: Any, args: argparse.Namespace) -> int:
    from pathlib import Path

    from pacs import deidentify_study as command
    from pacs.app import build_archive, configure_libraries, configure_logging
    from pacs.core.deidentify import DatePolicy, Deidentifier, DeidentifyOptions, OffsetScope
    from pacs.dimse.store_scu import StoreSCU
    from pacs.errors import NotFoundError, PacsError

    if args.deid_dates == "remove" and args.deid_date_offset is not None:
        raise ConfigError("--date-offset shifts dates; it cannot go with --dates remove")
    shift = args.deid_dates == "shift" or args.deid_date_offset is not None
    options = DeidentifyOptions(
        dates=DatePolicy.SHIFT if shift else DatePolicy.REMOVE,
        offset_scope=OffsetScope(args.deid_offset_per),
        date_offset_days=args.deid_date_offset,
        retain_patient_characteristics=args.deid_characteristics,
        clean_descriptors=args.deid_descriptors,
        allow_burned_in=args.deid_allow_burned_in,
        patient_id=args.deid_patient_id,
        patient_name=args.deid_patient_name,
    )
    for flag, value in (
        ("--patient-id", options.patient_id),
        ("--patient-name", options.patient_name),
    ):
        if value is not None and (not value.strip() or len(value) > 64 or "\\" in value):
            raise ConfigError(f"{flag} must be 1 to 64 characters without a backslash")
    mapping_path = Path(args.deid_mapping) if args.deid_mapping else None
    mapping = command.load_mapping(mapping_path)
    node = command.resolve_node(args.deid_node, settings.nodes) if args.deid_node else None
    configure_logging(settings)
    configure_libraries()
    archive = build_archive(settings)
    deidentifier = Deidentifier(options, mapping)
    try:
        instances = command.prepare(archive, args.deid_study, deidentifier)
        if node is None:
            target = Path(args.deid_to)
            summary = command.deidentify_study(
                archive, instances, deidentifier, command.folder_writer(target)
            )
            where = f"written under {target}"
        else:
            presentations = {(s.sop_class_uid, s.transfer_syntax_uid) for s in instances}
            with StoreSCU(settings, node, sorted(presentations)) as store:
                summary = command.deidentify_study(
                    archive, instances, deidentifier, command.node_sender(store)
                )
            where = f"sent to {node}"
        _audit_export(archive, args.deid_study, "success" if summary.ok else "failure", where)
    except NotFoundError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 1
    except PacsError as exc:  # refused (burned-in annotation), node unreachable
        _audit_export(archive, args.deid_study, "failure", str(exc))
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    finally:
        archive.close()
        # Whatever went out was made with this map: keep it, even after an interruption.
        if mapping_path is not None and deidentifier.mapping.uids:
            try:
                command.save_mapping(mapping_path, deidentifier.mapping)
            except OSError as exc:
                print(f"pacs: error: cannot write {mapping_path}: {exc}", file=sys.stderr)
                mapping_path = None
    print(
        f"De-identified study {summary.study_instance_uid or '(none)'}:"
        f" {summary.done} of {summary.instances} instances {where},"
        f" {len(summary.failed)} failed, {summary.warnings} warnings."
    )
    for uid, reason in summary.failed:
        print(f"  {uid}: {reason}")
    if mapping_path is not None:
        print(f"Pseudonyms and replaced UIDs are in {mapping_path}; keep it apart from the data.")
    return 0 if summary.ok and (mapping_path is not None or not args.deid_mapping) else 1


def _migrate(settings: Any, source: str | None, target: str, workers: int, verify: bool) -> int:
    from dataclasses import replace

    from pacs.app import build_blob_store, build_index
    from pacs.migrate import migrate_blobs, print_summary

    source_settings = replace(settings, storage_url=source) if source else settings
    target_settings = replace(settings, storage_url=target)
    load_settings({"storage_url": target})  # the same one-line errors as any setting
    if source_settings.blob_store_url == target_settings.blob_store_url:
        raise ConfigError("--from and --to name the same store")
    # Straight to the stores: a copy tool has no use for the upload spool.
    origin = build_blob_store(source_settings, spool=False)
    destination = build_blob_store(target_settings, spool=False)
    index = build_index(settings)
    try:
        summary = migrate_blobs(
            origin, destination, index=index, workers=max(1, workers), verify=verify
        )
    finally:
        index.close()
    print_summary(summary, target)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
