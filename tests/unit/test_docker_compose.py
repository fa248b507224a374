"""The compose file's structure (containers cannot run on this machine)."""

from __future__ import annotations

import yaml

from flywheel.settings import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker" / "compose.yaml"


def test_compose_has_the_production_services_with_health_checks() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("postgres", "minio", "redis", "prefect-server", "prefect-worker", "mlflow", "gateway"):
        assert name in services, f"compose lacks {name}"
        assert "healthcheck" in services[name], f"{name} should have a health check"


def test_compose_dependencies_exist_and_wait_for_health() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            assert condition == {"condition": "service_healthy"}, (
                f"{name} should wait for {dependency} health"
            )


def test_compose_mounts_exist_in_the_repository() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).resolve().exists(), f"{name} mounts missing {source}"


def test_compose_urls_name_an_installed_driver_and_the_gateway_shares_state() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    text = COMPOSE.read_text()
    # SQLAlchemy reads a bare postgresql:// as psycopg 3, which the image does not have
    assert "postgresql://" not in text, "write the driver: postgresql+psycopg2:// or postgresql+asyncpg://"
    gateway = services["gateway"]["environment"]
    assert gateway["FLYWHEEL_REDIS_URL"].startswith("redis://redis:"), gateway
    assert gateway["FLYWHEEL_REQUEST_LOG_URL"].startswith("postgresql+psycopg2://"), gateway
    for name in ("prefect-worker", "gateway"):
        mounts = services[name].get("volumes", [])
        assert any(m.startswith("../params.yaml:") for m in mounts), f"{name} should mount params.yaml"
    for secret in (yaml.safe_load(COMPOSE.read_text()).get("secrets") or {}).values():
        assert (COMPOSE.parent / secret["file"]).exists(), f"missing secret file {secret['file']}"
