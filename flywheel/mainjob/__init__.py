"""The main job (`make run`, `flywheel demo`): one whole turn of the loop on the embedded stack, reported.

Kept apart from `flywheel/demo/` (the workload generator, a DVC stage's dependency), so a
change to how the job runs or reports does not mark the seeded data out of date.
"""
