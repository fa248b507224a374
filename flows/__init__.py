"""Prefect flows: thin tables of contents over `tasks/`. Deployments are declared in `flows.deployments`."""
