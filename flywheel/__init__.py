"""Flywheel: the LLM data flywheel as Prefect flows, with MLflow and DVC.

This package holds what every part shares: typed settings, record schemas, the
model runtime, the demo workload, the embedded-stack launcher and the CLI.
"""

__version__ = "0.1.0"
