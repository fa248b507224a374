"""Benchmark: the real SmolLM2 through the running gateway: tokens/s and time to first token.

    flywheel up            # or make up: the embedded stack with its gateway
    python bench/bench_gateway_model.py [--requests 10] [--max-tokens 128] [--url http://127.0.0.1:8000]

Sends sequential streaming requests with the official openai client (one at a time:
the local model is single-flight; temperature 0.7, which the cache never serves),
and prints client-side TTFT, decode tokens/s
(tokens after the first, over the time after the first) and end-to-end tokens/s.

`--greedy` sends temperature 0 instead, each request a different question: the
default path of an application, where the gateway also embeds every question
for its semantic cache (answers served from the cache are counted, not timed).
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


# Different topics, so no question is a near-duplicate of another (the semantic cache's threshold).
GREEDY_PROMPTS = [
    "Explain how a refrigerator keeps food cold.",
    "What should I pack for a three-day hiking trip?",
    "Describe the rules of chess for a beginner.",
    "How do vaccines train the immune system?",
    "Give me a recipe for a simple tomato soup.",
    "Why is the sky blue during the day?",
    "What are good habits for learning a new language?",
    "How does a bicycle stay upright when moving?",
    "Summarise the causes of the French Revolution.",
    "What is the difference between a virus and a bacterium?",
    "How do I repot a houseplant without hurting it?",
    "Explain compound interest with an example.",
    "What makes a good cover letter for a job application?",
    "How do bees make honey?",
    "Describe how a rainbow forms.",
    "What are the benefits of stretching after exercise?",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--url", default=None, help="gateway base URL (default: the embedded gateway)")
    parser.add_argument("--api-key", default="unused")
    parser.add_argument(
        "--greedy", action="store_true", help="temperature 0 and a different question per request"
    )
    args = parser.parse_args()
    cached = 0
    base = args.url or Environment().gateway_url
    client = OpenAI(base_url=f"{base}/v1", api_key=args.api_key, max_retries=0)
    ttfts, decode_rates, e2e_rates, tokens = [], [], [], []
    for i in range(args.requests):
        started = time.perf_counter()
        first = None
        usage = None
        prompts = GREEDY_PROMPTS if args.greedy else PROMPTS
        raw = client.chat.completions.with_raw_response.create(
            model="support-assistant",
            messages=[{"role": "user", "content": prompts[i % len(prompts)]}],
            # sampling (temperature > 0) is never served from the cache: a real generation every time
            temperature=0.0 if args.greedy else 0.7,
            seed=i,
            max_tokens=args.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            user=f"bench-{i}",
        )
        if raw.headers.get("x-flywheel-cache"):
            cached += 1
            print(f"request {i}: served from the {raw.headers['x-flywheel-cache']} cache (not timed)")
            raw.parse().close()
            continue
        stream = raw.parse()
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
        + (f"; {cached} served from the cache" if cached else "")
    )


if __name__ == "__main__":
    main()
