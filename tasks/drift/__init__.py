"""Monitoring: drift of what is served, current window against a baseline window of the request log.

Plain functions, no Prefect or MLflow: `frame.load_window` reads a window of
the request log, `drift.compute_drift` computes every signal (overall, per
application, per version) and the new topics, `report` renders them.
"""
