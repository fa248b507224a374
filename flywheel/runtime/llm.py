"""Chat generation on a local causal LM (SmolLM2 by default) with transformers.

`ChatModel` wraps a tokenizer and a model and runs one generation at a time
(a lock serialises callers, so the gateway may call it from worker threads).
`load_chat_model` loads the configured model once per process and caches it.

The runtime never injects a system prompt: the caller (gateway, prompt
registry) decides. Note that SmolLM2's chat template inserts its own default
system prompt ("You are a helpful AI assistant named SmolLM, ...") when the
messages do not start with one.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
    TextStreamer,
)

from flywheel.runtime.base import (
    AdapterNotFoundError,
    ContextLengthError,
    FinishReason,
    Generation,
    Messages,
    check_generation_args,
    normalise_messages,
    truncate_at_stop,
)
from flywheel.runtime.hardware import native_bf16
from flywheel.runtime.lora import ADAPTER_CONFIG, attach_adapter
from flywheel.runtime.paths import ensure_offline, model_files

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from flywheel.settings import ModelParams

__all__ = [
    "ChatModel",
    "Generation",
    "GenerationStream",
    "clear_model_cache",
    "load_chat_model",
    "unload_chat_model",
]

# Tokens that end a chat reply: ChatML's end of turn and the pretraining EOS.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")


class _FirstTokenClock(LogitsProcessor):
    """Records when the first token's logits are ready (after the prompt's forward pass)."""

    def __init__(self) -> None:
        self.first: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.first is None:
            self.first = time.perf_counter()
        return scores


class _StopStrings(StoppingCriteria):
    """Stops each row when its reply contains a stop string, or all rows on cancel.

    Remembers how many tokens each row had generated when it stopped, so the
    result can report an exact completion token count.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_length: int,
        batch_size: int,
        stop: tuple[str, ...],
        cancel: threading.Event | None,
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_length = prompt_length
        self.stop = stop
        self.cancel = cancel
        # A stop string of n characters spans at most 4n byte-level tokens;
        # decoding only that tail keeps each step O(1) in the reply length.
        self.window = 4 * max((len(s) for s in stop), default=0) + 8
        self.fired_at: list[int | None] = [None] * batch_size

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        cancelled = self.cancel is not None and self.cancel.is_set()
        for row, fired in enumerate(self.fired_at):
            if fired is not None:
                continue
            if cancelled:
                self.fired_at[row] = generated
                continue
            if not self.stop:
                continue
            tail = input_ids[row, self.prompt_length :][-self.window :]
            text = self.tokenizer.decode(tail, skip_special_tokens=True)
            if any(s in text for s in self.stop):
                self.fired_at[row] = generated
        done = torch.tensor([f is not None for f in self.fired_at], dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, done)


class ChatModel:
    """A tokenizer and a causal LM with a chat template, ready to answer chats.

    One generation runs at a time per instance (an internal lock serialises
    `generate`, `generate_batch` and `stream`); callers may use any thread.
    Tokenising (`count_tokens`, `chat_prompt`) does not take the lock.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        model: PreTrainedModel | PeftModel,
        *,
        name: str = "model",
    ) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the tokenizer has no chat_template")
        self.tokenizer = tokenizer
        self.model = model
        self.name = name
        self._lock = threading.Lock()
        vocab = tokenizer.get_vocab()
        ends = {vocab[t] for t in _END_TOKENS if t in vocab}
        if tokenizer.eos_token_id is not None:
            ends.add(tokenizer.eos_token_id)
        if not ends:
            raise ValueError("the tokenizer has no EOS or <|im_end|> token")
        self.end_token_ids: frozenset[int] = frozenset(ends)
        pad = tokenizer.pad_token_id
        self.pad_token_id: int = pad if pad is not None else min(ends)
        self.context_length: int = int(getattr(model.config, "max_position_embeddings", 2048))
        # Seconds per loading step, filled in by load_chat_model (for health pages and benchmarks).
        self.load_timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"ChatModel(name={self.name!r}, model={type(self.model).__name__})"

    @property
    def device(self) -> torch.device:
        """The device the model's weights are on."""
        return next(self.model.parameters()).device

    # -- tokens ---------------------------------------------------------------

    def chat_prompt(self, messages: Messages) -> str:
        """The prompt text for `messages`, ending with the assistant turn's opening."""
        rendered = self.tokenizer.apply_chat_template(
            normalise_messages(messages), tokenize=False, add_generation_prompt=True
        )
        return str(rendered)

    def _encode(self, text: str) -> list[int]:
        # The chat template already writes the special tokens: add none here.
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, text_or_messages: str | Messages) -> int:
        """Tokens in a text, or in the full chat prompt for messages (== `prompt_tokens`)."""
        if isinstance(text_or_messages, str):
            return len(self._encode(text_or_messages))
        return len(self._encode(self.chat_prompt(text_or_messages)))

    # -- generation -----------------------------------------------------------

    def generate(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Answer one chat. Greedy when `temperature == 0`; `seed` fixes sampling."""
        stops = check_generation_args(max_new_tokens, temperature, stop)
        prompt_ids = self._prompt_ids(messages, max_new_tokens)
        return self._run([prompt_ids], max_new_tokens, temperature, stops, seed)[0]

    def generate_batch(
        self,
        batch: Sequence[Messages],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Answer many chats, `batch_size` at a time (left-padded), in input order.

        Chats are grouped by prompt length to waste little on padding. The lock
        is taken per group, so other callers can interleave. Each result's times
        are those of its group.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        stops = check_generation_args(max_new_tokens, temperature, stop)
        prompts = [self._prompt_ids(messages, max_new_tokens) for messages in batch]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), batch_size):
            group = order[start : start + batch_size]
            for index, result in zip(
                group,
                self._run([prompts[i] for i in group], max_new_tokens, temperature, stops, seed),
                strict=True,
            ):
                results[index] = result
        return [r for r in results if r is not None]

    def stream(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> GenerationStream:
        """Answer one chat as text chunks; `.result` holds the `Generation` once iterated.

        Generation runs in a background thread (which waits for the model lock).
        The chunks concatenate to `result.text`; no stop string is ever emitted.
        """
        stops = check_generation_args(max_new_tokens, temperature, stop)
        prompt_ids = self._prompt_ids(messages, max_new_tokens)
        return GenerationStream(self, prompt_ids, max_new_tokens, temperature, stops, seed)

    def generate_streaming(
        self,
        messages: Messages,
        *,
        max_new_tokens: int,
        on_text: Callable[[str], None],
        cancel: threading.Event | None = None,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
    ) -> Generation:
        """Answer one chat on the calling thread, handing text chunks to `on_text` as they come.

        The chunks concatenate to the result's text (no stop string is ever
        handed out); setting `cancel` stops the generation at its next token.
        Unlike `stream`, no thread is started: a model-worker process runs this
        on its one torch thread.
        """
        stops = check_generation_args(max_new_tokens, temperature, stop)
        prompt_ids = self._prompt_ids(messages, max_new_tokens)
        held = HeldBackText(stops)

        def emit(piece: str) -> None:
            safe = held.feed(piece)
            if safe:
                on_text(safe)

        streamer = _CallbackStreamer(self.tokenizer, emit)
        result = self._run(
            [prompt_ids], max_new_tokens, temperature, stops, seed, streamer=streamer, cancel=cancel
        )[0]
        rest = held.finish(result.text)
        if rest:
            on_text(rest)
        return result

    def _prompt_ids(self, messages: Messages, max_new_tokens: int) -> list[int]:
        ids = self._encode(self.chat_prompt(messages))
        if len(ids) + max_new_tokens > self.context_length:
            raise ContextLengthError(len(ids), max_new_tokens, self.context_length)
        return ids

    def _generation_config(self, max_new_tokens: int, temperature: float) -> GenerationConfig:
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            # top_k=0 and top_p=1 turn off the library's default top-k of 50, so
            # temperature means what it means in the OpenAI API.
            sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0}
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            eos_token_id=sorted(self.end_token_ids),
            pad_token_id=self.pad_token_id,
            **sampling,
        )

    def _run(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float,
        stop: tuple[str, ...],
        seed: int | None,
        *,
        streamer: TextStreamer | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Generation]:
        """Generate for left-padded prompts under the lock and build one result per prompt."""
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor(
            [[self.pad_token_id] * (width - len(p)) + p for p in prompts], dtype=torch.long
        )
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
        clock = _FirstTokenClock()
        criteria = StoppingCriteriaList()
        stop_strings: _StopStrings | None = None
        if stop or cancel is not None:
            stop_strings = _StopStrings(self.tokenizer, width, len(prompts), stop, cancel)
            criteria.append(stop_strings)
        with self._lock, torch.inference_mode():
            started = time.perf_counter()
            if seed is not None and temperature > 0:
                # Sampling draws from torch's global RNG; the lock keeps this
                # instance's draws together, but other torch users share it.
                torch.manual_seed(seed)
            # Typed loosely by transformers (nn.Module attribute lookup); it returns token ids.
            generate = cast(Callable[..., torch.Tensor], self.model.generate)
            output = generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=self._generation_config(max_new_tokens, temperature),
                logits_processor=LogitsProcessorList([clock]),
                stopping_criteria=criteria,
                streamer=streamer,
            )
            finished = time.perf_counter()
        ttft = (clock.first or finished) - started
        results = []
        for row, prompt in enumerate(prompts):
            fired = stop_strings.fired_at[row] if stop_strings is not None else None
            tokens = output[row, width:].tolist()
            results.append(self._result(tokens, fired, len(prompt), stop, ttft, finished - started))
        return results

    def _result(
        self,
        tokens: list[int],
        fired_at: int | None,
        prompt_tokens: int,
        stop: tuple[str, ...],
        ttft: float,
        latency: float,
    ) -> Generation:
        """Work out where one row's reply ended, why, and its text."""
        end = next((i for i, token in enumerate(tokens) if token in self.end_token_ids), None)
        reason: FinishReason
        if end is not None and (fired_at is None or end < fired_at):
            # The first end token is the model's own (padding only comes after).
            used, content, reason = end + 1, tokens[:end], "stop"
        elif fired_at is not None:
            used, content, reason = fired_at, tokens[:fired_at], "stop"
        else:
            used, content, reason = len(tokens), tokens, "length"
        text, found = truncate_at_stop(str(self.tokenizer.decode(content, skip_special_tokens=True)), stop)
        return Generation(
            text=text,
            finish_reason="stop" if found else reason,
            prompt_tokens=prompt_tokens,
            completion_tokens=used,
            ttft_s=ttft,
            latency_s=latency,
        )


class HeldBackText:
    """Streamed text made safe to send: a stop string (or its start) never gets out.

    Holds back the last (longest stop - 1) characters, which may be the start
    of a stop string; after a stop, takes pieces and sends nothing more.
    """

    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.raw = ""
        self.sent = 0
        self.stopped = False

    def feed(self, piece: str) -> str:
        """The text that became safe to send with `piece` ("" when none)."""
        if self.stopped or not piece:
            return ""
        self.raw += piece
        cut, self.stopped = truncate_at_stop(self.raw, self.stop)
        safe = len(cut) if self.stopped else max(self.sent, len(self.raw) - self.hold)
        if safe <= self.sent:
            return ""
        text, self.sent = self.raw[self.sent : safe], safe
        return text

    def finish(self, final: str) -> str:
        """What is left to send of the final text (decoded from all tokens at once)."""
        if len(final) <= self.sent or not final.startswith(self.raw[: self.sent]):
            return ""
        rest, self.sent = final[self.sent :], len(final)
        return rest


class _CallbackStreamer(TextStreamer):
    """Hands each piece of decoded text to a callback, on the generating thread."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self._on_text(text)


class GenerationStream(Iterator[str]):
    """Text chunks of one generation running in a background thread.

    Iterate to get chunks; afterwards `result` is the final `Generation`.
    `close()` (or leaving a `with` block) cancels a generation still running,
    e.g. when a streaming client disconnects; `cancelled` then says so.
    """

    def __init__(
        self,
        chat: ChatModel,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        stop: tuple[str, ...],
        seed: int | None,
    ) -> None:
        self._stop = stop
        self._cancel = threading.Event()
        self._streamer = TextIteratorStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._result: Generation | None = None
        self._error: BaseException | None = None
        self._chunks = self._iterate()
        self._thread = threading.Thread(
            target=self._work,
            args=(chat, prompt_ids, max_new_tokens, temperature, seed),
            name=f"generate-{chat.name}",
            daemon=True,
        )
        self._thread.start()

    def _work(
        self,
        chat: ChatModel,
        prompt_ids: list[int],
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
    ) -> None:
        try:
            self._result = chat._run(
                [prompt_ids],
                max_new_tokens,
                temperature,
                self._stop,
                seed,
                streamer=self._streamer,
                cancel=self._cancel,
            )[0]
        except BaseException as error:  # handed to the consuming thread, which re-raises it
            self._error = error
            # Unblock the consumer: generate() ends the streamer only when it finishes normally.
            self._streamer.end()

    def __next__(self) -> str:
        return next(self._chunks)

    def _iterate(self) -> Iterator[str]:
        held = HeldBackText(self._stop)
        for piece in self._streamer:
            safe = held.feed(piece)  # keeps draining after a stop, so generation is never blocked
            if safe:
                yield safe
        self._thread.join()
        if self._error is not None:
            raise self._error
        rest = held.finish(self.result.text)
        if rest:
            yield rest

    @property
    def result(self) -> Generation:
        """The final generation; raises RuntimeError before the stream is finished."""
        if self._result is None:
            raise RuntimeError("the stream has not finished: iterate it to the end first")
        return self._result

    @property
    def cancelled(self) -> bool:
        """Whether `close()` was called before the generation finished by itself."""
        return self._cancel.is_set()

    def close(self) -> None:
        """Stop the generation (if still running) and wait for its thread."""
        if self._thread.is_alive():
            self._cancel.set()
        self._thread.join()

    def __enter__(self) -> GenerationStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- loading -------------------------------------------------------------------

_CacheKey = tuple[str, str | None, str, tuple[str, int, int] | None]
_CACHE: dict[_CacheKey, ChatModel] = {}
_CACHE_LOCK = threading.RLock()


def _adapter_key(adapter: Path) -> tuple[str, int, int]:
    """Identify an adapter by path and file times, so a retrained adapter is reloaded."""
    weights = next(iter(sorted(adapter.glob("adapter_model.*"))), adapter / ADAPTER_CONFIG)
    return (
        str(adapter.resolve()),
        (adapter / ADAPTER_CONFIG).stat().st_mtime_ns,
        weights.stat().st_mtime_ns,
    )


def _load_base(folder: Path, gguf_file: str | None, dtype: str, name: str) -> ChatModel:
    """Load tokenizer and model from a local folder (dequantising a GGUF if given)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source: dict[str, Any] = {"local_files_only": True}
    if gguf_file is not None:
        source["gguf_file"] = gguf_file
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(folder), **source)
    tokenizer_loaded = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype), **source)
    model.eval()
    chat = ChatModel(tokenizer, model, name=name)
    chat.load_timings = {
        "tokenizer_s": tokenizer_loaded - started,
        "model_s": time.perf_counter() - tokenizer_loaded,
    }
    return chat


def generation_dtype(requested: str) -> str:
    """The dtype `model.dtype` stands for on this machine: "auto" is bfloat16 where the CPU
    multiplies bf16 in hardware, else float32.

    SmolLM2 decodes memory- and overhead-bound on CPU; halving the bytes per weight
    took greedy decoding from 18.7 to 29.8 tokens/s on a 2-core AMD EPYC (Zen 4).
    Without hardware bf16, bfloat16 would be slower than float32.
    """
    if requested != "auto":
        return requested
    return "bfloat16" if native_bf16() else "float32"


def load_chat_model(params: ModelParams, adapter: Path | str | None = None) -> ChatModel:
    """The chat model for `params` (plus a LoRA adapter), loaded once per process.

    Cached by (source, gguf_file, dtype, adapter); an adapted model is a copy of
    the cached base with the adapter attached, so the base stays plain. Also
    sets torch's intra-op threads to `params.threads`.
    """
    ensure_offline()
    if torch.get_num_threads() != params.threads:
        torch.set_num_threads(params.threads)
    folder, gguf_file = model_files(params)
    adapter_dir = Path(adapter) if adapter is not None else None
    if adapter_dir is not None and not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise AdapterNotFoundError(f"{adapter_dir} is not a PEFT adapter folder (no {ADAPTER_CONFIG})")
    dtype = generation_dtype(params.dtype)
    key: _CacheKey = (
        str(folder),
        gguf_file,
        dtype,
        _adapter_key(adapter_dir) if adapter_dir is not None else None,
    )
    # One lock for all loads: loading twice in parallel would double a 15 s job.
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
        name = gguf_file or folder.name
        if adapter_dir is None:
            chat = _load_base(folder, gguf_file, dtype, name)
        else:
            base = load_chat_model(params)
            started = time.perf_counter()
            with base._lock:  # no generation reads the weights half-copied
                model = cast("PreTrainedModel", copy.deepcopy(base.model))  # cached bases are plain
            chat = ChatModel(
                base.tokenizer, attach_adapter(model, adapter_dir), name=f"{name}+{adapter_dir.name}"
            )
            chat.load_timings = {"adapter_s": time.perf_counter() - started}
        _CACHE[key] = chat
        return chat


def unload_chat_model(chat: ChatModel) -> bool:
    """Drop `chat` from the cache (e.g. a retired adapter); say whether it was cached."""
    with _CACHE_LOCK:
        keys = [key for key, cached in _CACHE.items() if cached is chat]
        for key in keys:
            del _CACHE[key]
        return bool(keys)


def clear_model_cache() -> None:
    """Forget every cached model (their memory is freed once no caller holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()
