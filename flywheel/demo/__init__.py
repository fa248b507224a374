"""The demo workload: Quillbox support knowledge, request-log history and a simulated user.

The shared fixture for tests, the demo and the benchmarks. Everything is
seeded; nothing runs at import time.
"""

from flywheel.demo.history import INVALID_KINDS, KINDS, VALID_KINDS, HistoryGenerator, Planted
from flywheel.demo.knowledge import (
    EVAL_SUITE,
    FACTS,
    KNOWLEDGE_VERSION,
    Fact,
    Question,
    knowledge_problems,
    load_knowledge,
    normalize_question,
    split_questions,
)
from flywheel.demo.simulated_user import Embedder, HashingEmbedder, SimulatedUser, minilm_embedder
from flywheel.demo.workload import (
    DemoManifest,
    EvalCase,
    FileDigest,
    eval_suite,
    generate_history,
    read_manifest,
    write_demo,
    write_history,
)

__all__ = [
    "EVAL_SUITE",
    "FACTS",
    "INVALID_KINDS",
    "KINDS",
    "KNOWLEDGE_VERSION",
    "VALID_KINDS",
    "DemoManifest",
    "Embedder",
    "EvalCase",
    "Fact",
    "FileDigest",
    "HashingEmbedder",
    "HistoryGenerator",
    "Planted",
    "Question",
    "SimulatedUser",
    "eval_suite",
    "generate_history",
    "knowledge_problems",
    "load_knowledge",
    "minilm_embedder",
    "normalize_question",
    "read_manifest",
    "split_questions",
    "write_demo",
    "write_history",
]
