"""Benchmark: how long the embedded stack takes to come up, and how long the LLM takes to load.

    python bench/bench_startup.py [--repeat N] [--skip-model]

Starts a private stack (temporary FLYWHEEL_HOME, free ports) N times, timing each
service to its first healthy answer, then loads SmolLM2 in fresh processes
(a cold load each time). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.settings import Environment, apply_offline_environ  # noqa: E402
from flywheel.stack import launcher  # noqa: E402
from flywheel.stack.ports import free_port  # noqa: E402
from flywheel.stack.services import embedded_services  # noqa: E402

MODEL_LOAD = """
import time, json
t0 = time.perf_counter()
from flywheel.runtime import load_chat_model
from flywheel.settings import ModelParams
t_import = time.perf_counter() - t0
t1 = time.perf_counter()
model = load_chat_model(ModelParams())
t_load = time.perf_counter() - t1
t2 = time.perf_counter()
g = model.generate([{"role": "user", "content": "What is the capital of France?"}], max_new_tokens=16)
t_gen = time.perf_counter() - t2
print(json.dumps({"import_s": t_import, "load_s": t_load, "first_answer_s": t_gen, "text": g.text}))
"""


def bench_stack(repeat: int) -> None:
    """Start and stop a private stack `repeat` times; print per-service time to healthy."""
    totals: list[float] = []
    per_service: dict[str, list[float]] = {}
    for i in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            env = Environment(
                FLYWHEEL_HOME=Path(tmp) / "home",
                FLYWHEEL_DATA_DIR=Path(tmp) / "data",
                FLYWHEEL_PREFECT_PORT=free_port(),
                FLYWHEEL_MLFLOW_PORT=free_port(),
                FLYWHEEL_RUNNER_PORT=free_port(),
            )
            specs = embedded_services(env)
            marks: dict[str, float] = {}
            t0 = time.perf_counter()

            def on_event(message: str, marks: dict[str, float] = marks, t0: float = t0) -> None:
                if ": healthy" in message:
                    marks[message.split(":")[0]] = time.perf_counter() - t0

            try:
                launcher.up(env, specs, on_event=on_event)
                total = time.perf_counter() - t0
            finally:
                t_down = time.perf_counter()
                launcher.down(env, specs)
                down_s = time.perf_counter() - t_down
            totals.append(total)
            for name, seconds in marks.items():
                per_service.setdefault(name, []).append(seconds)
            print(
                f"run {i + 1}: stack healthy in {total:.1f}s "
                + " ".join(f"{k}={v:.1f}s" for k, v in marks.items())
                + f"; down in {down_s:.1f}s",
                flush=True,
            )
    print(
        "stack start-up (prefect + mlflow in parallel, then runner): "
        f"median {statistics.median(totals):.1f}s over {len(totals)} run(s)"
    )
    for name, values in per_service.items():
        print(f"  {name:8} healthy after median {statistics.median(values):.1f}s (from the start of `up`)")


def bench_model(repeat: int) -> None:
    """Load the real model in fresh processes (cold) and print the timings."""
    import json

    loads = []
    for i in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", MODEL_LOAD], capture_output=True, text=True, cwd=ROOT, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        loads.append(result["load_s"])
        print(
            f"model run {i + 1}: import {result['import_s']:.1f}s, load SmolLM2-135M (GGUF -> fp32) "
            f"{result['load_s']:.1f}s, first answer {result['first_answer_s']:.1f}s: {result['text']!r}",
            flush=True,
        )
    print(f"model load: median {statistics.median(loads):.1f}s over {len(loads)} cold load(s)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=2, help="How many cold starts of each (default 2).")
    parser.add_argument("--skip-model", action="store_true", help="Only time the stack.")
    parser.add_argument("--skip-stack", action="store_true", help="Only time the model load.")
    args = parser.parse_args()
    apply_offline_environ()
    if not args.skip_stack:
        bench_stack(args.repeat)
    if not args.skip_model:
        bench_model(args.repeat)


if __name__ == "__main__":
    main()
