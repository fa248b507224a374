"""Tasks of the demo workload (the seed-demo flow)."""

from tasks.demo.seed import publish_seed_summary, record_demo_with_dvc, write_demo_workload

__all__ = ["publish_seed_summary", "record_demo_with_dvc", "write_demo_workload"]
