"""Benchmark: the LLM runtime on this machine (load, time to first token, tokens/s, memory).

    python bench/bench_model.py [--new-tokens 64] [--batch 8] [--threads 2] [--dtype float32]
                                [--skip-lora] [--skip-embedder] [--json]

Runs in this (fresh) process, so the load figures are a cold process start
(the OS file cache may be warm). Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Greedy SmolLM2 answers this with well over 64 tokens, so the run is a fixed 64.
PROMPT = [{"role": "user", "content": "Write a long essay about the history of the bicycle."}]
BATCH_PROMPTS = [
    "How do I reset my password?",
    "What is the capital of Italy?",
    "Give me three tips for writing clear emails.",
    "What does a CPU do?",
    "Name a fruit that is yellow.",
    "How many days are in a leap year?",
    "What is photosynthesis?",
    "Suggest a name for a pet turtle.",
]


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=64, help="new tokens for the single-prompt run")
    parser.add_argument("--batch", type=int, default=8, help="prompts in the batch run (0 to skip)")
    parser.add_argument("--batch-tokens", type=int, default=32, help="new tokens per prompt in the batch run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: params)")
    parser.add_argument(
        "--dtype", choices=["auto", "float32", "bfloat16"], default=None, help="default: auto"
    )
    parser.add_argument("--skip-lora", action="store_true", help="skip the LoRA adapter figures")
    parser.add_argument("--skip-embedder", action="store_true", help="skip the embedder figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser.parse_args(argv)


def _rates(prefix: str, generation: Any) -> dict[str, Any]:
    decode_s = generation.latency_s - generation.ttft_s
    return {
        f"{prefix}_completion_tokens": generation.completion_tokens,
        f"{prefix}_ttft_s": generation.ttft_s,
        f"{prefix}_latency_s": generation.latency_s,
        # Decode rate excludes the prompt pass; the end-to-end rate includes it.
        f"{prefix}_decode_tok_per_s": (generation.completion_tokens - 1) / decode_s if decode_s > 0 else 0.0,
        f"{prefix}_tok_per_s": generation.completion_tokens / generation.latency_s,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure everything and return the figures."""
    # Other processes on a 2-core machine change every figure: record how busy it was.
    figures: dict[str, Any] = {"loadavg_1m_start": os.getloadavg()[0]}
    started = time.perf_counter()
    from flywheel.runtime import load_chat_model, load_embedder, new_lora, save_adapter
    from flywheel.runtime.llm import generation_dtype
    from flywheel.settings import ModelParams, apply_offline_environ

    apply_offline_environ()
    import torch
    import transformers  # noqa: F401  # timed here so the load figures exclude imports

    figures["import_s"] = time.perf_counter() - started
    overrides = {k: v for k, v in {"threads": args.threads, "dtype": args.dtype}.items() if v is not None}
    params = ModelParams(**overrides)
    # what ran, not the setting: "auto" is bfloat16 or float32 depending on the CPU
    figures["dtype"], figures["threads"] = generation_dtype(params.dtype), params.threads

    t0 = time.perf_counter()
    chat = load_chat_model(params)
    figures["load_s"] = time.perf_counter() - t0
    figures.update({f"load_{k}": v for k, v in chat.load_timings.items()})
    t0 = time.perf_counter()
    load_chat_model(params)
    figures["cached_load_s"] = time.perf_counter() - t0
    figures["rss_after_load_mb"] = _peak_rss_mb()
    figures["torch_threads"] = torch.get_num_threads()

    first = chat.generate(PROMPT, max_new_tokens=8)
    figures["first_call_ttft_s"] = first.ttft_s
    figures["prompt_tokens"] = first.prompt_tokens

    single = chat.generate(PROMPT, max_new_tokens=args.new_tokens)
    figures.update(_rates("greedy", single))
    figures["greedy_finish_reason"] = single.finish_reason

    # Streaming as a client sees it: time to the first text chunk, from the call.
    t0 = time.perf_counter()
    stream = chat.stream(PROMPT, max_new_tokens=args.new_tokens)
    first_chunk_s = None
    for _chunk in stream:
        if first_chunk_s is None:
            first_chunk_s = time.perf_counter() - t0
    figures.update(_rates("stream", stream.result))
    figures["stream_first_chunk_s"] = first_chunk_s

    if args.batch > 0:
        chats = [[{"role": "user", "content": p}] for p in (BATCH_PROMPTS * args.batch)[: args.batch]]
        t0 = time.perf_counter()
        results = chat.generate_batch(chats, max_new_tokens=args.batch_tokens, batch_size=args.batch)
        wall = time.perf_counter() - t0
        tokens = sum(r.completion_tokens for r in results)
        figures.update(
            {
                "batch_size": args.batch,
                "batch_wall_s": wall,
                "batch_tokens": tokens,
                "batch_tok_per_s": tokens / wall,
            }
        )

    if not args.skip_lora:
        import copy

        with tempfile.TemporaryDirectory() as tmp:
            base = cast("PreTrainedModel", copy.deepcopy(chat.model))  # the cached base is a plain model
            adapter = new_lora(base, 8, 16, ["q_proj", "v_proj"], init_lora_weights=False)
            save_adapter(adapter, Path(tmp) / "adapter")
            del adapter, base
            t0 = time.perf_counter()
            adapted = load_chat_model(params, adapter=Path(tmp) / "adapter")
            figures["adapter_load_s"] = time.perf_counter() - t0
        figures.update(_rates("lora", adapted.generate(PROMPT, max_new_tokens=args.new_tokens)))

    if not args.skip_embedder:
        t0 = time.perf_counter()
        embedder = load_embedder()
        figures["embedder_load_s"] = time.perf_counter() - t0
        sentences = [f"{p} (variant {i})" for i in range(32) for p in BATCH_PROMPTS]
        t0 = time.perf_counter()
        embedder.encode(sentences)
        figures["embed_sentences_per_s"] = len(sentences) / (time.perf_counter() - t0)

    figures["loadavg_1m_end"] = os.getloadavg()[0]
    figures["peak_rss_mb"] = _peak_rss_mb()
    figures["total_s"] = time.perf_counter() - started
    return figures


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the figures."""
    args = _parse_args(argv)
    figures = run(args)
    if args.json:
        print(json.dumps(figures))
        return
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        shown = f"{value:.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")


if __name__ == "__main__":
    main()
