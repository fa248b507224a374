"""Benchmark: the real SmolLM2 through the running gateway: tokens/s and time to first token.

    flywheel up            # or make up: the embedded stack with its gateway
    python bench/bench_gateway_model.py [--requests 10] [--max-tokens 128] [--url http://127.0.0.1:8000]

Sends sequential streaming requests with the official openai client (one at a time:
the local model is single-flight; temperature 0.7, which the cache never serves),
and prints client-side TTFT, decode tokens/s
(tokens after the first, over the time after the first) and end-to-end tokens/s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from openai import OpenAI

from flywheel.settings import Environment

PROMPTS = [
    "Write a short paragraph about why regular backups matter for a small business.",
    "Explain in a few sentences how a note-taking app can help a student study.",
    "Describe three tips for writing clear meeting notes.",
    "Give a brief overview of what makes a good password.",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--url", default=None, help="gateway base URL (default: the embedded gateway)")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    base = args.url or Environment().gateway_url
    client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, max_retries=0)
    ttfts, decode_rates, e2e_rates, tokens = [], [], [], []
    for i in range(args.requests):
        started = time.perf_counter()
        first = None
        usage = None
        stream = client.chat.completions.create(
            model="support-assistant",
            messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            # sampling (temperature > 0) is never served from the cache: a real generation every time
            temperature=0.7,
            seed=i,
            max_tokens=args.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            user=f"bench-{i}",
        )
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
            if chunk.usage is not None:
                usage = chunk.usage
        ended = time.perf_counter()
        if first is None or usage is None:
            print(f"request {i}: no tokens or no usage", flush=True)
            continue
        n = usage.completion_tokens
        ttfts.append(first - started)
        decode_rates.append((n - 1) / (ended - first) if n > 1 and ended > first else 0.0)
        e2e_rates.append(n / (ended - started))
        tokens.append(n)
        print(
            f"request {i}: {n} tokens, ttft {ttfts[-1] * 1000:.0f} ms, decode {decode_rates[-1]:.1f} tok/s, "
            f"end to end {e2e_rates[-1]:.1f} tok/s",
            flush=True,
        )
    if not tokens:
        sys.exit("no successful requests")
    print(
        f"SmolLM2 through the gateway ({len(tokens)} requests, mean {statistics.fmean(tokens):.0f} tokens): "
        f"p50 TTFT {statistics.median(ttfts) * 1000:.0f} ms, "
        f"decode {statistics.median(decode_rates):.1f} tok/s (median), "
        f"end to end {statistics.median(e2e_rates):.1f} tok/s (median)"
    )


if __name__ == "__main__":
    main()
