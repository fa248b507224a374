"""ChatML records to training examples: token ids, labels masked to the answer, padded batches.

A record is `{"id", "messages": [system?, *history, user, assistant]}` (what
the curate stage writes). The prompt is rendered with the tokenizer's chat
template exactly as the runtime renders it at inference (all turns but the
last, plus the assistant opening), and tokenized on its own; the answer part
(the last assistant turn's text and the end-of-turn token) is tokenized after
it. Labels are -100 everywhere except the answer tokens and the end-of-turn
token, so the loss teaches what to say and when to stop, never the prompt.
Earlier assistant turns in the history are context, not targets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
END_OF_TURN = "<|im_end|>"


class RecordError(ValueError):
    """A training record is not a ChatML conversation ending with an assistant answer."""


@dataclass(frozen=True)
class Example:
    """One tokenized record: input ids and labels of the same length."""

    id: str
    input_ids: tuple[int, ...]
    labels: tuple[int, ...]
    truncated: bool = False

    @property
    def answer_tokens(self) -> int:
        """Tokens that carry loss."""
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or len(messages) < 2:
        raise RecordError(
            f"record {record.get('id')!r}: 'messages' must list at least a user and an assistant turn"
        )
    if messages[-1].get("role") != "assistant":
        raise RecordError(f"record {record.get('id')!r}: the last message must be the assistant's answer")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def _end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    # convert_tokens_to_ids, not get_vocab(): the latter rebuilds a 49k-entry dict per call.
    token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
        return token_id
    if tokenizer.eos_token_id is None:
        raise RecordError("the tokenizer has neither <|im_end|> nor an EOS token")
    return int(tokenizer.eos_token_id)


def tokenize_record(
    record: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> Example:
    """Token ids and answer-only labels of one ChatML record, at most `max_seq_length` long.

    Too long a record keeps its answer (cut at the right only when the answer
    alone fills more than half the window) and the end of its prompt (the
    question and the most recent turns).
    """
    messages = _messages(record)
    prompt_text = str(
        tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    )
    full_text = str(tokenizer.apply_chat_template(messages, tokenize=False))
    if not full_text.startswith(prompt_text):
        raise RecordError(
            f"record {record.get('id')!r}: the chat template renders the prompt differently with the answer"
        )
    end_id = _end_token_id(tokenizer)
    prompt = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    rest = list(tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"])
    # The answer runs to the first end-of-turn token (kept); what follows it (a newline) is not taught.
    answer = rest[: rest.index(end_id) + 1] if end_id in rest else [*rest, end_id]
    truncated = len(prompt) + len(answer) > max_seq_length
    if truncated:
        answer = answer[: max(max_seq_length - len(prompt), max_seq_length // 2)]
        prompt = prompt[len(prompt) - (max_seq_length - len(answer)) :]
    return Example(
        id=str(record.get("id", "")),
        input_ids=tuple(prompt + answer),
        labels=tuple([IGNORE_INDEX] * len(prompt) + answer),
        truncated=truncated,
    )


def as_served(records: Iterable[Mapping[str, Any]], system_prompt: str | None) -> list[dict[str, Any]]:
    """Records with the served system prompt put first where they have none, as the gateway does.

    The request log keeps the client's messages; the gateway adds the route's
    system prompt when the client sent none. Training on the bare messages would
    teach the model under the chat template's default system prompt and serve it
    under another one, and what it learnt transfers poorly across that gap.
    """
    served: list[dict[str, Any]] = []
    for record in records:
        messages = list(record.get("messages") or [])
        if system_prompt and not any(m.get("role") == "system" for m in messages):
            messages = [{"role": "system", "content": system_prompt}, *messages]
        served.append({**record, "messages": messages})
    return served


def tokenize_records(
    records: Iterable[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> list[Example]:
    """`tokenize_record` over many records, in order."""
    return [tokenize_record(record, tokenizer, max_seq_length) for record in records]


def collate(examples: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad examples to the longest one: `input_ids`, `attention_mask`, `labels` tensors."""
    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), width), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        input_ids[row, :size] = torch.tensor(example.input_ids, dtype=torch.long)
        attention[row, :size] = 1
        labels[row, :size] = torch.tensor(example.labels, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
