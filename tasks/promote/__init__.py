"""Promotion: approval checks, the staged canary with metric analysis, audit trail and notifications.

Pure parts (`policy`, `analysis`) import no framework; `canary` runs the step loop
over small ports (registry, request-log `window` reader, clock) so tests can fake
them; `review` and `rollback` are the flows' other steps; `audit` and `notify`
record and announce every decision; `tasks` holds the Prefect shells.
"""
