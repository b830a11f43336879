"""pacs.config: precedence flag > environment > file > default, and one-line errors."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacs.app import build_blob_store
from pacs.cli import build_parser
from pacs.config import SERVICES, Node, Settings, load_settings, parse_node, redact_url
from pacs.core.archive import DuplicatePolicy
from pacs.errors import ConfigError
from storage import FilesystemBlobStore, SpooledBlobStore

NO_ENV: dict[str, str] = {}


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "pacs.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    settings = load_settings(environ=NO_ENV)
    assert settings == Settings()
    assert settings.ae_title == "PACS" and settings.dicom_port == 11112
    assert settings.http_port == 8080 and settings.host == "127.0.0.1"
    assert settings.duplicate_policy is DuplicatePolicy.KEEP
    assert settings.nodes == ()
    assert settings.index_path == Path("pacs-data") / "index.sqlite"
    assert settings.blob_dir == Path("pacs-data") / "blobs"


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        'ae_title = "FROMFILE"\ndicom_port = 2000\nhttp_port = 2001\nhost = "10.0.0.1"\n'
        'duplicate_policy = "reject"\n',
    )
    environ = {"PACS_DICOM_PORT": "3000", "PACS_HTTP_PORT": "3001"}
    flags = {"dicom_port": "4000", "ae_title": None, "nodes": []}  # None and [] mean "not given"

    file_only = load_settings(None, config, NO_ENV)
    assert (file_only.ae_title, file_only.dicom_port, file_only.http_port) == (
        "FROMFILE",
        2000,
        2001,
    )
    assert file_only.duplicate_policy is DuplicatePolicy.REJECT

    with_env = load_settings(None, config, environ)
    assert (with_env.ae_title, with_env.dicom_port, with_env.http_port) == ("FROMFILE", 3000, 3001)

    everything = load_settings(flags, config, environ)
    assert everything.dicom_port == 4000  # flag
    assert everything.http_port == 3001  # environment
    assert everything.ae_title == "FROMFILE"  # file
    assert everything.host == "10.0.0.1"  # file
    assert everything.max_associations == Settings().max_associations  # default


def test_config_file_named_by_environment(tmp_path: Path) -> None:
    config = toml(tmp_path, 'ae_title = "ENVFILE"\n')
    assert load_settings(environ={"PACS_CONFIG": str(config)}).ae_title == "ENVFILE"
    other = tmp_path / "other.toml"
    other.write_text('ae_title = "FLAGFILE"\n')
    # an explicit --config wins over PACS_CONFIG
    assert load_settings(None, other, {"PACS_CONFIG": str(config)}).ae_title == "FLAGFILE"


def test_unrelated_environment_is_ignored() -> None:
    settings = load_settings(environ={"PACS": "x", "PACSX_DICOM_PORT": "1", "HOME": "/root"})
    assert settings == Settings()


def test_every_type_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "PACS_DATA_DIR": "/srv/pacs",
            "PACS_AE_TITLE": "  ARCHIVE  ",
            "PACS_HOST": "::1",
            "PACS_DUPLICATE_POLICY": "REPLACE",
            "PACS_MAX_ASSOCIATIONS": "8",
            "PACS_MAX_PDU_SIZE": "0",
            "PACS_NETWORK_TIMEOUT": "2.5",
            "PACS_LOG_LEVEL": "DEBUG",
        }
    )
    assert settings.data_dir == Path("/srv/pacs")
    assert settings.ae_title == "ARCHIVE"
    assert settings.host == "::1"
    assert settings.duplicate_policy is DuplicatePolicy.REPLACE
    assert settings.max_associations == 8
    assert settings.max_pdu_size == 0
    assert settings.network_timeout == 2.5
    assert settings.log_level == "debug"


def test_nodes_as_toml_tables(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        "[[nodes]]\n"
        'ae_title = "CT1"\nhost = "10.1.2.3"\nport = 104\n\n'
        "[[nodes]]\n"
        'ae_title = "VIEWER"\nhost = "viewer.example.org"\nport = 11113\n',
    )
    settings = load_settings(None, config, NO_ENV)
    assert settings.nodes == (
        Node("CT1", "10.1.2.3", 104),
        Node("VIEWER", "viewer.example.org", 11113),
    )
    assert str(settings.nodes[0]) == "CT1@10.1.2.3:104"


def test_nodes_as_strings_from_flags_env_and_file(tmp_path: Path) -> None:
    flags = {"nodes": ["CT1@10.1.2.3:104", "MR@mr-host:11112"]}
    assert load_settings(flags, environ=NO_ENV).nodes == (
        Node("CT1", "10.1.2.3", 104),
        Node("MR", "mr-host", 11112),
    )
    env = {"PACS_NODES": "A@h1:1, B@h2:2"}
    assert [n.ae_title for n in load_settings(environ=env).nodes] == ["A", "B"]
    config = toml(tmp_path, 'nodes = ["X@[::1]:104"]\n')
    assert load_settings(None, config, NO_ENV).nodes == (Node("X", "::1", 104),)
    # flags replace the file's list rather than adding to it
    assert load_settings({"nodes": ["Y@h:5"]}, config, NO_ENV).nodes == (Node("Y", "h", 5),)


def test_repeated_node_flags_reach_the_settings() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--node",
            "CT1@10.1.2.3:104",
            "--node",
            "MR@mr-host:11112",
            "--dicom-port",
            "5000",
        ]
    )
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    settings = load_settings(flags, environ={"PACS_NODES": "OTHER@h:1"})
    assert [str(n) for n in settings.nodes] == ["CT1@10.1.2.3:104", "MR@mr-host:11112"]
    assert settings.dicom_port == 5000
    assert settings.http_port == Settings().http_port  # flags not given stay unset


def test_parse_node() -> None:
    assert parse_node(" STORE SCP@127.0.0.1:4242 ") == Node("STORE SCP", "127.0.0.1", 4242)
    with pytest.raises(ConfigError, match="AE@HOST:PORT"):
        parse_node("no-port@host")


BAD_VALUES = [
    ("dicom_port", "abc", "dicom_port must be an integer"),
    ("dicom_port", "0", "between 1 and 65535"),
    ("dicom_port", "65536", "between 1 and 65535"),
    ("dicom_port", "-5", "non-negative"),
    ("http_port", "8o80", "http_port must be an integer"),
    ("ae_title", "", "not a valid AE title"),
    ("ae_title", "A" * 17, "not a valid AE title"),
    ("ae_title", "BACK\\SLASH", "not a valid AE title"),
    ("ae_title", "NGUYỄN", "not a valid AE title"),
    ("host", "not a host!", "not an IP address or host name"),
    ("duplicate_policy", "sometimes", "keep, replace, reject"),
    ("log_level", "verbose", "debug, info, warning or error"),
    ("max_associations", "0", "at least 1"),
    ("max_associations", "many", "must be an integer"),
    ("network_timeout", "0", "must be positive"),
    ("network_timeout", "-1", "must be positive"),
    ("dimse_timeout", "soon", "number of seconds"),
    ("acse_timeout", "nan", "must be positive"),
    ("acse_timeout", "inf", "acse_timeout must be a finite number"),
    ("nodes", "CT1@host", "AE@HOST:PORT"),
    ("nodes", "CT1@host:99999", "between 1 and 65535"),
    ("nodes", "A@h:1,A@h:2", "defined twice"),
    ("nodes", "THIS_AE_IS_FAR_TOO_LONG@h:1", "AE@HOST:PORT|not a valid AE title"),
    ("known_nodes_only", "maybe", "true or false"),
    ("cors_origins", "viewer.example.org", "not an origin"),
    ("case_insensitive_names", "2", "true or false"),
    ("min_free_space", "60%", "under 50%"),
    ("min_free_space", "-1GB", "must be a size"),
    ("min_free_space", "lots", "must be a size"),
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_bad_values_from_the_environment(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ={f"PACS_{name.upper()}": value})
    text = str(info.value)
    assert "\n" not in text and len(text) < 200
    assert name.split("_")[0] in text or "node" in text


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_bad_values_from_flags(name: str, value: str, message: str) -> None:
    flag_value: object = value.split(",") if name == "nodes" else value
    with pytest.raises(ConfigError, match=message) as info:
        load_settings({name: flag_value}, environ=NO_ENV)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dicom_port = 104.5\n", "dicom_port must be an integer"),
        ("dicom_port = true\n", "dicom_port"),
        ('dicom_port = "x"\n', "dicom_port must be an integer"),
        ("data_dir = 5\n", "data_dir must be a string"),
        ("ae_title = ['A']\n", "ae_title must be a string"),
        ("colour = 'blue'\n", "unknown setting 'colour'"),
        ("dicom_port = \n", "not valid TOML"),
        ("nodes = 'A@h:1'\nnodes = 'B@h:2'\n", "not valid TOML"),
        ("nodes = 5\n", "list of nodes"),
        ("nodes = [5]\n", "neither AE@HOST:PORT nor a table"),
        ("[[nodes]]\nae_title = 'A'\nhost = 'h'\n", "lacks 'port'"),
        (
            "[[nodes]]\nae_title = 'A'\nhost = 'h'\nport = 1\nmodality = 'CT'\n",
            "unknown key 'modality'",
        ),
        ("[[nodes]]\nae_title = 'A'\nhost = 'h'\nport = 70000\n", "between 1 and 65535"),
        ("dicom_port = 5000\nhttp_port = 5000\n", "must differ, not 5000, 5000"),
    ],
)
def test_bad_config_files(tmp_path: Path, text: str, message: str) -> None:
    config = toml(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(None, config, NO_ENV)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(None, tmp_path / "nope.toml", NO_ENV)


def test_unknown_flag_name() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_settings({"colour": "blue"}, environ=NO_ENV)


# -- the command line -----------------------------------------------------------------


def run_pacs(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    return subprocess.run(
        [sys.executable, "-m", "pacs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacs: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_cli_bad_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_pacs(
        "serve", "--dicom-port", "abc", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert_one_line_error(result, "dicom_port", "'abc'")
    assert result.stdout == ""
    assert not (tmp_path / "d").exists()  # refused before touching anything


def test_cli_bad_environment_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env["PACS_DUPLICATE_POLICY"] = "sometimes"
    result = subprocess.run(
        [sys.executable, "-m", "pacs", "serve"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert_one_line_error(result, "duplicate_policy")


def test_cli_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_pacs(
            "serve",
            "--http-port",
            str(port),
            "--dicom-port",
            str(port + 1 if port < 65535 else 1025),
            "--data-dir",
            str(tmp_path / "d"),
            cwd=tmp_path,
        )
    assert_one_line_error(result, "cannot listen for HTTP", str(port))


def test_cli_missing_config_file_is_one_line(tmp_path: Path) -> None:
    result = run_pacs(
        "import", "--config", str(tmp_path / "nope.toml"), str(tmp_path), cwd=tmp_path
    )
    assert_one_line_error(result, "does not exist")


def test_example_config_lists_every_setting_with_its_default(tmp_path: Path) -> None:
    """docker/pacs.example.toml, uncommented, is valid and equals the defaults."""
    example = Path(__file__).resolve().parents[2] / "docker" / "pacs.example.toml"
    # The [[nodes]] table (up to the next blank line) is a sample, not a default.
    text = re.sub(r"(?ms)^# \[\[nodes\]\].*?^$", "", example.read_text())
    settings = dict(re.findall(r"(?m)^# ([a-z0-9_]+) = (.+)$", text))
    settings.pop("nodes")  # a sample too; the default is no nodes
    config = tmp_path / "pacs.toml"
    config.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
    assert set(settings) == {f.name for f in dataclasses.fields(Settings)} - {"nodes"}
    assert load_settings(config_file=config, environ={}) == Settings()


def test_node_tables_with_permissions_and_transfer_syntaxes(tmp_path: Path) -> None:
    config = toml(
        tmp_path,
        "known_nodes_only = true\ncase_insensitive_names = false\n"
        '[[nodes]]\nae_title = "WS"\nhost = "10.0.0.40"\nport = 11112\n'
        'allow = ["find", "GET"]\n'
        'transfer_syntaxes = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2"]\n'
        '[[nodes]]\nae_title = "CT1"\nhost = "10.0.0.21"\nport = 104\n',
    )
    settings = load_settings(None, config, NO_ENV)
    assert settings.known_nodes_only is True
    assert settings.case_insensitive_names is False
    workstation, scanner = settings.nodes
    assert workstation.allow == frozenset({"find", "get"})
    assert workstation.transfer_syntaxes == ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2")
    # A node given without "allow" may do everything; without preferences, as stored.
    assert scanner.allow == frozenset(SERVICES)
    assert scanner.transfer_syntaxes == ()
    assert settings.node(" WS ") is workstation
    assert settings.node("UNKNOWN") is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('allow = ["find", "delete"]', "unknown service 'delete'"),
        ('allow = "find"', "list of services"),
        ('transfer_syntaxes = ["1.2.3"]', "not a known transfer syntax"),
        ('transfer_syntaxes = "1.2.840.10008.1.2"', "list of UIDs"),
        ('colour = "red"', "unknown key 'colour'"),
    ],
)
def test_bad_node_tables(tmp_path: Path, table: str, message: str) -> None:
    config = toml(tmp_path, f'[[nodes]]\nae_title = "WS"\nhost = "h"\nport = 1\n{table}\n')
    with pytest.raises(ConfigError, match=message):
        load_settings(None, config, NO_ENV)


@pytest.mark.parametrize(("text", "expected"), [("1", True), ("on", True), ("False", False)])
def test_booleans_from_the_environment(text: str, expected: bool) -> None:
    settings = load_settings(environ={"PACS_KNOWN_NODES_ONLY": text})
    assert settings.known_nodes_only is expected


def test_known_nodes_only_flag() -> None:
    args = build_parser().parse_args(["serve", "--known-nodes-only"])
    assert args.known_nodes_only is True
    assert build_parser().parse_args(["serve"]).known_nodes_only is None


@pytest.mark.parametrize("command", ["serve", "import"])
def test_direct_io_is_off_unless_asked_and_reaches_the_blob_stores(
    tmp_path: Path, command: str
) -> None:
    """Off by default (a just-stored study stays in the page cache for its
    first viewing); ``--direct-io`` or PACS_DIRECT_IO turns it on for the
    archive's folder and the S3 upload spool alike."""
    args = build_parser().parse_args(
        [command, "--direct-io"] + (["x"] if command == "import" else [])
    )
    assert args.direct_io is True
    assert load_settings(environ=NO_ENV).direct_io is False
    on = load_settings({"data_dir": str(tmp_path)}, environ={"PACS_DIRECT_IO": "true"})
    off = load_settings({"data_dir": str(tmp_path / "other")}, environ=NO_ENV)
    stores = {"on": build_blob_store(on), "off": build_blob_store(off)}
    assert isinstance(stores["on"], FilesystemBlobStore)
    assert isinstance(stores["off"], FilesystemBlobStore)
    assert stores["on"]._direct is (os.O_DIRECT != 0) and stores["off"]._direct is False
    spooled = dataclasses.replace(on, storage_url="s3://bucket/archive?endpoint=127.0.0.1:9")
    spool = build_blob_store(spooled)
    try:
        assert isinstance(spool, SpooledBlobStore)
        assert spool.spool._direct is (os.O_DIRECT != 0)
    finally:
        spool.close()


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("1%", (0, 1.0)),
        ("0", (0, 0.0)),
        ("500MB", (500_000_000, 0.0)),
        ("500 mb", (500_000_000, 0.0)),
        ("2GiB", (2 * 1024**3, 0.0)),
        ("1.5G", (1_500_000_000, 0.0)),
        ("64k", (64_000, 0.0)),
        ("4096", (4096, 0.0)),
    ],
)
def test_min_free_space_as_a_size_or_a_share(text: str, kept: tuple[int, float]) -> None:
    assert load_settings({"min_free_space": text}, environ=NO_ENV).keep_free() == kept


def test_min_free_space_reaches_the_blob_stores(tmp_path: Path) -> None:
    """1% of the disk by default; the archive's folder and the S3 spool alike."""
    args = build_parser().parse_args(["serve", "--min-free-space", "2GiB"])
    assert args.min_free_space == "2GiB"
    default = build_blob_store(load_settings({"data_dir": str(tmp_path / "a")}, environ=NO_ENV))
    assert isinstance(default, FilesystemBlobStore)
    total = shutil.disk_usage(tmp_path).total
    assert default.keep_free == int(total * 0.01)
    sized = load_settings({"data_dir": str(tmp_path), "min_free_space": "3MB"}, environ=NO_ENV)
    spooled = dataclasses.replace(sized, storage_url="s3://bucket/archive?endpoint=127.0.0.1:9")
    spool = build_blob_store(spooled)
    try:
        assert isinstance(spool, SpooledBlobStore)
        assert spool.spool.keep_free == 3_000_000
    finally:
        spool.close()


def test_cors_origins_from_flags_and_environment() -> None:
    args = build_parser().parse_args(
        ["serve", "--cors-origin", "https://viewer.example.org", "--cors-origin", "*"]
    )
    assert args.cors_origins == ["https://viewer.example.org", "*"]
    settings = load_settings({"cors_origins": args.cors_origins}, environ=NO_ENV)
    assert settings.cors_origins == ("https://viewer.example.org", "*")
    env = {"PACS_CORS_ORIGINS": "https://a.example.org, http://b.example.org:8042"}
    assert load_settings(environ=env).cors_origins == (
        "https://a.example.org",
        "http://b.example.org:8042",
    )


def test_storage_and_index_urls() -> None:
    settings = load_settings(
        environ={
            "PACS_STORAGE_URL": "s3://pacs-images/archive?endpoint=minio:9000&secure=false",
            "PACS_INDEX_URL": "postgresql://pacs@db:5432/pacs",
        }
    )
    assert settings.uses_s3 and settings.blob_store_url.startswith("s3://pacs-images/")
    assert settings.index_location == "postgresql://pacs@db:5432/pacs"
    defaults = Settings()
    assert not defaults.uses_s3
    assert defaults.blob_store_url == str(Path("pacs-data") / "blobs")
    assert defaults.index_location == str(Path("pacs-data") / "index.sqlite")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("PACS_STORAGE_URL", "s3://key:secret@bucket/x", "must not hold credentials"),
        ("PACS_STORAGE_URL", "s3://Bad_Bucket/x", "not a valid S3 bucket name"),
        ("PACS_STORAGE_URL", "s3://bucket/x?endpont=h:1", "unknown option 'endpont'"),
        ("PACS_STORAGE_URL", "ftp://host/x", "unknown scheme"),
        ("PACS_INDEX_URL", "mysql://u:pw@h/db", "must be postgresql://"),
    ],
)
def test_bad_storage_and_index_urls(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(environ={name: value})
    assert ":secret@" not in str(info.value) and ":pw@" not in str(info.value)


def test_s3_credentials_from_pacs_or_aws_variables_never_shown(tmp_path: Path) -> None:
    aws = {"AWS_ACCESS_KEY_ID": "AKIAFROMAWS", "AWS_SECRET_ACCESS_KEY": "aws-secret"}
    assert load_settings(environ=aws).s3_credentials().access_key == "AKIAFROMAWS"
    config = toml(tmp_path, 's3_access_key = "FROMFILE"\n')
    assert load_settings(None, config, aws).s3_access_key == "FROMFILE"  # the file wins
    both = {**aws, "PACS_S3_ACCESS_KEY": "FROMPACS", "PACS_S3_SECRET_KEY": "pacs-secret"}
    settings = load_settings(None, config, both)
    assert (settings.s3_access_key, settings.s3_secret_key) == ("FROMPACS", "pacs-secret")
    assert "secret" not in repr(settings) and "FROMPACS" not in repr(settings)
    assert "secret" not in repr(settings.s3_credentials())


def test_redacted_index_url() -> None:
    assert (
        redact_url("postgresql://pacs:hunter2@db:5432/pacs") == "postgresql://pacs:***@db:5432/pacs"
    )
    assert redact_url("postgresql://pacs@db/pacs") == "postgresql://pacs@db/pacs"
