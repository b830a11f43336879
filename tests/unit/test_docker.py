"""docker/: the compose file is one `docker compose` accepts, and what it configures works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pacs.config import load_settings
from storage import S3Location, parse_storage_url

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "docker-compose.yml"
SECRETS = {
    "MINIO_ROOT_PASSWORD": "minio-secret",
    "POSTGRES_PASSWORD": "postgres-secret",
    "PACS_ADMIN_PASSWORD": "admin-secret",
}


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or `docker-compose` (Debian's package), if installed."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    found = shutil.which("docker-compose")
    return [found] if found else None


def run_compose_config(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (make test does)")
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS and not k.startswith("PACS_")}
    return subprocess.run(
        [*command, "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        cwd=DOCKER,
        env={**clean, **environment},
        timeout=60,
    )


def test_docker_compose_accepts_the_file() -> None:
    result = run_compose_config(SECRETS)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"minio", "postgres", "pacs-1", "pacs-2", "proxy"}
    # the secrets reach the services from the environment, not from the file
    assert resolved["services"]["pacs-1"]["environment"]["PACS_S3_SECRET_KEY"] == "minio-secret"
    assert "minio-secret" not in COMPOSE.read_text()


def test_docker_compose_refuses_to_start_without_the_passwords() -> None:
    result = run_compose_config({})
    assert result.returncode != 0
    assert "MINIO_ROOT_PASSWORD" in result.stderr or "POSTGRES_PASSWORD" in result.stderr


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def _environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with ${VAR...} filled in as compose would."""

    def fill(value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, _, rest = match.group(1).partition(":")
            if name in SECRETS:
                return SECRETS[name]
            return rest[1:] if rest.startswith("-") else ""

        return re.sub(r"\$\{([^}]+)\}", one, value)

    return {k: fill(str(v)) for k, v in service["environment"].items()}


def test_every_service_has_a_health_check_and_its_data_on_a_volume() -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    services = document["services"]
    for name, service in services.items():
        assert "healthcheck" in service and service["healthcheck"]["test"], name
    for name in ("minio", "postgres", "pacs-1", "pacs-2"):
        (volume,) = services[name]["volumes"]
        assert volume.split(":")[0] in document["volumes"], name
    # each replica its own spool; both wait for healthy storage and index
    assert services["pacs-1"]["volumes"] != services["pacs-2"]["volumes"]
    for name in ("pacs-1", "pacs-2"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "minio": {"condition": "service_healthy"},
        }
        assert services[name]["volumes"][0].endswith(":/var/lib/pacs")
    assert set(services["proxy"]["depends_on"]) == {"pacs-1", "pacs-2"}
    assert {p.split(":")[0] for p in services["proxy"]["ports"]} == {"8080", "11112"}


def test_the_replicas_configuration_is_valid_for_pacs() -> None:
    """What compose hands the replicas loads as pacs settings: PostgreSQL at the
    postgres service, S3 at the minio service, MinIO's own credentials."""
    services = _services()
    environment = _environment(services["pacs-1"])
    settings = load_settings(environ=environment)
    assert settings.index_location == "postgresql://pacs@postgres:5432/pacs"
    location = parse_storage_url(settings.blob_store_url)
    assert isinstance(location, S3Location)
    assert (location.endpoint, location.secure) == ("minio:9000", False)
    minio = _environment(services["minio"])
    assert settings.s3_access_key == minio["MINIO_ROOT_USER"]
    assert settings.s3_secret_key == minio["MINIO_ROOT_PASSWORD"]
    assert environment["PGPASSWORD"] == _environment(services["postgres"])["POSTGRES_PASSWORD"]
    assert settings.upload_spool  # acknowledged once in the replica's spool volume


def test_the_proxy_spreads_http_and_dicom_over_both_replicas() -> None:
    conf = (DOCKER / "nginx.conf").read_text()
    http, stream = conf.split("stream {")
    for block, port in ((http, 8080), (stream, 11112)):
        assert f"server pacs-1:{port}" in block and f"server pacs-2:{port}" in block
    assert "listen 8080" in http and "listen 11112" in stream
    assert "proxy_set_header Host $http_host" in http  # absolute DICOMweb URLs


def test_the_image_runs_pacs_serve_with_a_health_check() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"(?m)^HEALTHCHECK .*\n.*/health", dockerfile)
    assert re.search(r"(?m)^EXPOSE 11112 8080$", dockerfile)
    assert (
        'ENTRYPOINT ["/opt/pacs/docker/entrypoint.sh"]' in dockerfile
        and 'CMD ["serve"]' in dockerfile
    )
    assert re.search(r"(?m)^USER pacs$", dockerfile)  # never as root


def test_the_entrypoint_makes_the_first_administrator_then_serves(tmp_path: Path) -> None:
    """Replicas listen on 0.0.0.0, which pacs allows only once an account exists."""
    entrypoint = COMPOSE.parent / "entrypoint.sh"
    assert os.access(entrypoint, os.X_OK)
    assert '"/opt/pacs/docker/entrypoint.sh"' in (COMPOSE.parent / "Dockerfile").read_text()
    fake = tmp_path / "pacs"
    calls = tmp_path / "calls"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat >> {calls}\n')
    fake.chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "PACS_ADMIN_PASSWORD": "admin-secret"}
    done = subprocess.run(
        [str(entrypoint), "serve"], env=env, stdin=subprocess.DEVNULL, timeout=30, check=False
    )
    assert done.returncode == 0
    assert calls.read_text().splitlines() == [
        "user add admin --role admin --password-stdin",
        "admin-secret",
        "serve",
    ]
    assert services_environment_has_admin_password()


def services_environment_has_admin_password() -> bool:
    return all("PACS_ADMIN_PASSWORD" in _services()[n]["environment"] for n in ("pacs-1", "pacs-2"))
