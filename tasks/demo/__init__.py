"""Tasks of the demo workload (the seed-demo flow)."""

from tasks.demo.seed import publish_seed_summary, write_demo_workload

__all__ = ["publish_seed_summary", "write_demo_workload"]
