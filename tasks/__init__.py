"""Prefect tasks, by stage. Each task is a thin shell over plain functions the tests call directly."""
