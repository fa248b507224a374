"""The compose file's structure (containers cannot run on this machine)."""

from __future__ import annotations

import yaml

from flywheel.settings import PROJECT_ROOT

COMPOSE = PROJECT_ROOT / "docker" / "compose.yaml"


def test_compose_has_the_production_services_with_health_checks() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    for name in ("postgres", "minio", "prefect-server", "prefect-worker", "mlflow"):
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
