"""PII redaction: typed placeholders (`<EMAIL_ADDRESS>`, `<PERSON>`, ...) instead of personal data.

Two passes, because Presidio's analyzer alone manages about 600 records/s and
the funnel needs tens of thousands:

1. **Prefilter** (vectorised): one RE2 regex per entity, OR-ed together, run by
   `pyarrow.compute.match_substring_regex` over every text. It is deliberately
   loose (an `@` between non-spaces, a run of seven digits, a capital after
   "this is", ...); it only decides which rows are worth a closer look, and on
   support traffic picks about as many rows as hold PII (1.8% on the demo).
   Columns that repeat one text on most rows (system prompt, empty history)
   are checked once per distinct value.
2. **Recognizers** (per candidate row, per entity its prefilter flagged):
   Presidio's `EmailRecognizer` (with an offline public-suffix check instead of
   tldextract's network fetch), `CreditCardRecognizer` and `IpRecognizer`,
   plus our own `PatternRecognizer`s for card-shaped digit runs, phone numbers
   and person names. Every card candidate must have 13-19 digits and pass the
   Luhn checksum here, whichever recognizer found it.

Presidio runs regex-only: no NLP engine, no spaCy model. So **PERSON is found
by context and a gazetteer, not by NER**: a capitalised name right after a
self-introduction or sign-off ("this is", "I'm", "Thanks,", "Regards,", an
em dash at the end) or right before "here", whose first word is one of about
700 common first names (`FIRST_NAMES`, many cultures); after "my name is"
any capitalised name counts. A name mentioned without such context, or a first
name outside the list, is missed, and lower-case names are not looked for.

Phones are found by shape: `+<country> ...`, North American `(212) 555-0100`,
`212-555-0100`, `212.555.0100`, national trunk prefixes (`030 9018...`), and a
bare 7-15 digit run only after "call me at", "phone:" and the like. Plain digit
runs, versions, prices, dates and plan sizes are not phones.

Redacted values are never logged or returned, only counted. The `history`
column is a JSON list of turns: its candidate rows are parsed, each turn's
content is redacted as text, and the list is serialised again, so redaction
cannot break the JSON.

Importing Presidio pulls in spaCy, and through it probes for torch and
transformers, which it needs only for NLP engines we do not run: 5 s on a
2-core box, 2 s with those probes failing fast (`_presidio_without_ml`). It
happens on the first candidate row, once per process, not at import time.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flywheel.checksums import luhn_ok
from tasks.curate.frame import TEXT_COLUMNS

if TYPE_CHECKING:
    from presidio_analyzer import PatternRecognizer

ENTITIES: tuple[str, ...] = ("EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS", "PERSON")
# When two findings overlap, the longer one wins; on a tie, the earlier entity here.
_PRIORITY = {
    entity: rank
    for rank, entity in enumerate(("CREDIT_CARD", "PHONE_NUMBER", "IP_ADDRESS", "EMAIL_ADDRESS", "PERSON"))
}
HISTORY_COLUMN = "history"
# Columns this long whose sample of _REPEAT_SAMPLE values is at most this share
# distinct are redacted once per distinct value (see `_repeats`).
_REPEAT_MIN_ROWS = 10_000
_REPEAT_SAMPLE = 1_000
_REPEAT_MAX_SHARE = 0.8

# Common first names across cultures, in their usual Latin spelling. Names that
# are also everyday English words (Will, May, Mark, Hope, Grace, Bill, ...) are
# left out on purpose: after "Thanks," they would flag ordinary sentences.
# Name tables read better packed than one name per line.
# fmt: off
FIRST_NAMES: frozenset[str] = frozenset((
    # English-speaking countries
    "Olivia", "Liam", "Emma", "Noah", "Amelia", "Oliver", "Sophia", "Elijah", "Mia", "Lucas",
    "Isabella", "Ava", "Charlotte", "Harper", "Evelyn", "Abigail", "Emily", "Ella", "Elizabeth",
    "Sofia", "Avery", "Scarlett", "Madison", "Chloe", "Victoria", "Aria", "Lily", "Hannah", "Zoe",
    "Natalie", "Samantha", "Leah", "Audrey", "Claire", "Lucy", "Anna", "Sarah", "Jessica", "Jennifer",
    "Ashley", "Amanda", "Stephanie", "Nicole", "Rachel", "Rebecca", "Laura", "Katherine", "Megan",
    "Lauren", "Heather", "Amy", "Melissa", "Michelle", "Kimberly", "Lisa", "Karen", "Susan", "Linda",
    "Barbara", "Patricia", "Nancy", "Margaret", "Sandra", "Donna", "Carol", "Deborah", "Sharon",
    "Cynthia", "Kathleen", "Helen", "Diane", "Julie", "Alice", "Emilia", "Ruby", "Poppy", "Isla",
    "Freya", "Evie", "Imogen", "Harriet", "Eleanor", "James", "John", "Robert", "Michael", "William",
    "David", "Richard", "Joseph", "Thomas", "Charles", "Christopher", "Daniel", "Matthew", "Anthony",
    "Steven", "Paul", "Andrew", "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald",
    "Edward", "Jason", "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen",
    "Larry", "Justin", "Scott", "Brandon", "Benjamin", "Samuel", "Gregory", "Alexander", "Patrick",
    "Dennis", "Tyler", "Aaron", "Adam", "Nathan", "Henry", "Zachary", "Peter", "Kyle", "Ethan",
    "Jeremy", "Christian", "Keith", "Austin", "Sean", "Harry", "Jack", "Charlie", "Oscar", "Alfie",
    "Archie", "Logan", "Mason", "Jackson", "Aiden", "Carter", "Wyatt", "Owen", "Caleb", "Isaac",
    "Connor", "Dylan", "Hunter", "Evan", "Gavin", "Ian", "Luke", "Jordan", "Cameron", "Anne",
    "Annie", "Mary", "Jane", "Kate", "Katie", "Sophie", "Julia", "Eva", "Nina", "Ellie", "Molly",
    "Jenny", "Beth", "Liz", "Jess", "Sam", "Alex", "Chris", "Jamie", "Tom", "Ben", "Dan", "Nick",
    "Mike", "Dave", "Steve", "Tony", "Joe", "Jim", "Bob", "Rob", "Tim", "Jon", "Matt", "Andy", "Pete",
    # Irish, Scottish, Welsh
    "Aoife", "Siobhan", "Niamh", "Saoirse", "Ciara", "Orla", "Roisin", "Sinead", "Ciaran", "Cian",
    "Conor", "Declan", "Eoin", "Padraig", "Seamus", "Fiona", "Ailsa", "Eilidh", "Callum", "Angus",
    "Rhys", "Gareth", "Dafydd", "Cerys", "Bethan",
    # French, Belgian, Swiss
    "Camille", "Manon", "Chloé", "Léa", "Juliette", "Amélie", "Margaux", "Océane", "Mathilde",
    "Élodie", "Elodie", "Pierre", "Jean", "Louis", "Hugo", "Antoine", "Julien", "Mathieu", "Nicolas",
    "François", "Francois", "Thierry", "Olivier", "Sébastien", "Sebastien", "Guillaume", "Étienne",
    "Etienne", "Céline", "Celine", "Sylvie", "Nathalie", "Isabelle", "Brigitte", "René", "Rene",
    # Spanish and Portuguese speaking
    "Mateo", "Diego", "Lucia", "Lucía", "Santiago", "Alejandro", "Javier", "Carlos", "Miguel", "José",
    "Jose", "Juan", "Luis", "Jorge", "Pablo", "Alvaro", "Álvaro", "Sergio", "Raúl", "Raul", "Fernando",
    "Andrés", "Andres", "Rafael", "Gabriel", "Joaquín", "Joaquin", "Camila", "Valentina", "Daniela",
    "Gabriela", "Mariana", "Fernanda", "Paula", "Carmen", "Lola", "Ximena", "Isabel", "Alba",
    "Begoña", "Begona", "Pilar", "Rocío", "Rocio", "Beatriz", "Inês", "Ines", "João", "Joao", "Tiago",
    "Rodrigo", "Gonçalo", "Goncalo", "Thiago", "Felipe", "Leonardo", "Bruno", "Renata", "Larissa",
    "Juliana", "Letícia", "Leticia",
    # German, Dutch, Scandinavian, Finnish
    "Lukas", "Leon", "Felix", "Jonas", "Maximilian", "Paul", "Tobias", "Florian", "Stefan", "Jürgen",
    "Jurgen", "Klaus", "Dieter", "Wolfgang", "Matthias", "Andreas", "Markus", "Sabine", "Ursula",
    "Katrin", "Anja", "Jana", "Lena", "Leonie", "Marie", "Johanna", "Greta", "Heike", "Sanne", "Daan",
    "Sem", "Bram", "Thijs", "Joost", "Femke", "Anouk", "Lotte", "Maarten", "Lars", "Ingrid", "Astrid",
    "Sigrid", "Freja", "Maja", "Elin", "Ebba", "Linnea", "Saga", "Nils", "Erik", "Anders", "Magnus",
    "Henrik", "Jens", "Mikkel", "Rasmus", "Søren", "Soren", "Bjørn", "Bjorn", "Sven", "Gustav",
    "Emil", "Axel", "Oskar", "Aino", "Eino", "Juha", "Mikko", "Aleksi", "Sanna",
    # Italian, Greek
    "Giulia", "Francesca", "Chiara", "Alessia", "Martina", "Federica", "Giorgia", "Sara", "Marco",
    "Luca", "Matteo", "Alessandro", "Lorenzo", "Giovanni", "Andrea", "Davide", "Francesco",
    "Riccardo", "Simone", "Stefano", "Giuseppe", "Antonio", "Dimitris", "Giorgos", "Nikos",
    "Konstantinos", "Yannis", "Eleni", "Maria", "Katerina", "Sofia", "Despina",
    # Polish, Czech, Slovak, Slavic, Baltic, Hungarian, Romanian
    "Tomasz", "Piotr", "Krzysztof", "Paweł", "Pawel", "Michał", "Michal", "Jakub", "Kamil",
    "Łukasz", "Lukasz", "Wojciech", "Agnieszka", "Katarzyna", "Małgorzata", "Malgorzata", "Magdalena",
    "Joanna", "Zofia", "Marta", "Petr", "Jiří", "Jiri", "Ondřej", "Ondrej", "Tereza", "Lucie",
    "Dmitri", "Dmitry", "Sergei", "Sergey", "Ivan", "Alexei", "Alexey", "Mikhail", "Nikolai", "Vladimir",
    "Olga", "Natalia", "Natalya", "Svetlana", "Tatiana", "Irina", "Ekaterina", "Anastasia", "Yulia",
    "Oksana", "Taras", "Bogdan", "Milan", "Luka", "Nikola", "Marko", "Ana", "Jelena", "Mateja",
    "Andrius", "Laura", "Līga", "Liga", "Zoltán", "Zoltan", "László", "Laszlo", "Bence", "Eszter",
    "Réka", "Reka", "Andrei", "Mihai", "Ioana", "Elena",
    # Turkish, Arabic, Persian, Hebrew
    "Mehmet", "Mustafa", "Emre", "Burak", "Elif", "Zeynep", "Ayşe", "Ayse", "Fatma", "Merve", "Omar",
    "Fatima", "Ahmed", "Ahmad", "Mohammed", "Muhammad", "Mohamed", "Ali", "Hassan", "Hussein",
    "Khalid", "Yusuf", "Youssef", "Ibrahim", "Karim", "Tariq", "Samir", "Rami", "Layla", "Leila",
    "Aisha", "Amina", "Mariam", "Maryam", "Noor", "Nour", "Huda", "Yasmin", "Yasmine", "Rania", "Salma",
    "Dalia", "Reza", "Dariush", "Arash", "Kian", "Parisa", "Shirin", "Niloufar", "Yosef", "Yael",
    "Noa", "Tamar", "Avi", "Eitan", "Itai", "Shira", "Moshe", "Ori",
    # South Asian
    "Priya", "Arjun", "Aarav", "Vivaan", "Aditya", "Rohan", "Rahul", "Vikram", "Sanjay", "Amit",
    "Anil", "Rajesh", "Suresh", "Ravi", "Karthik", "Siddharth", "Ananya", "Diya", "Aanya", "Isha",
    "Kavya", "Meera", "Neha", "Pooja", "Shreya", "Sneha", "Lakshmi", "Deepika", "Anjali", "Sunita",
    "Harpreet", "Gurpreet", "Manpreet", "Simran", "Imran", "Ayesha", "Zainab", "Bilal", "Usman",
    "Farhan", "Nusrat", "Tanvir", "Nimal", "Kumari",
    # East and South-East Asian
    "Wei", "Mei", "Jing", "Xin", "Yan", "Hui", "Ling", "Xiaoming", "Jian", "Hao", "Jun", "Yi",
    "Zhang", "Lei", "Tao", "Yuki", "Hiroshi", "Haruto", "Sota", "Takumi", "Kenji", "Takeshi", "Akira",
    "Yuto", "Ren", "Sakura", "Hina", "Yui", "Aoi", "Haruka", "Aiko", "Keiko", "Naoko", "Minji",
    "Jiwoo", "Seoyeon", "Jisoo", "Minho", "Jihoon", "Hyun", "Sungmin", "Eunji", "Yuna", "Minh", "Anh",
    "Linh", "Huong", "Thanh", "Tuan", "Duc", "Quang", "Trang", "Nam", "Somchai", "Siriporn", "Niran",
    "Putri", "Dewi", "Agus", "Budi", "Siti", "Nurul", "Rizal", "Jose", "Mayumi", "Ramon",
    # African
    "Kwame", "Kofi", "Kwabena", "Yaw", "Ama", "Akosua", "Abena", "Efua", "Amara", "Chidi", "Chinedu",
    "Chiamaka", "Ngozi", "Adaeze", "Emeka", "Obinna", "Tunde", "Babatunde", "Ade", "Adebayo",
    "Folake", "Funmilayo", "Yetunde", "Oluwaseun", "Seun", "Ayodele", "Femi", "Bongani", "Thabo",
    "Sipho", "Lindiwe", "Nomvula", "Zanele", "Themba", "Wanjiru", "Wanjiku", "Njeri", "Kamau",
    "Otieno", "Achieng", "Baraka", "Juma", "Neema", "Zawadi", "Tendai", "Tatenda", "Abebe", "Almaz",
    "Selam", "Dawit", "Moussa", "Mamadou", "Aminata", "Fatou", "Ousmane", "Ibrahima", "Awa",
))
# fmt: on

# The RE2 prefilter per entity: loose on purpose (a superset of what the
# recognizers accept on the same text), and cheap for RE2's DFA.
_PREFILTERS: dict[str, str] = {
    "EMAIL_ADDRESS": r"[^\s@]@[^\s@]+\.[^\s@]",
    "PHONE_NUMBER": r"(?:^|[^\w+])\+\s?\d|\(\d{1,4}\)\s?\d|\d[ .\-/]?\d{2,4}[ .\-/]\d{3,4}|\d{7,}",
    "CREDIT_CARD": r"\d{4}[ \-]?\d{3,6}[ \-]?\d{3,5}|\d{13,}",
    "IP_ADDRESS": r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}",
    "PERSON": (
        r"(?i:this\s+is|i'm|i’m|i\s+am|thanks|thank\s+you|thx|regards|best,|cheers|sincerely"
        r"|my\s+name\s+is|my\s+name's|name:)[,:!]?\s+\p{Lu}"
        r"|\p{Lu}\p{Ll}+(?:\s+\S+)?\s+(?i:here)\b"
        r"|(?:(?:^|\s)-|[—–])\s*\p{Lu}\S*(?:\s+\S+){0,4}\s*(?m:$)"
    ),
}

# Names (regex-module syntax, as Presidio compiles with `regex`): a first name
# from the gazetteer (maybe hyphenated: Anne-Marie), an optional initial, then
# optionally a surname with its particles (van, de, al, ...), an apostrophe
# (O'Brien) or an inner capital (McDonald).
_SURNAME = r"\p{Lu}(?:\p{Ll}+(?:\p{Lu}\p{Ll}+)?|['’]\p{Lu}\p{Ll}+)(?:-\p{Lu}\p{Ll}+)?(?!\.\w)"
_PARTICLES = r"(?:(?:van|von|de|del|della|der|den|da|das|di|dos|du|la|le|bin|ibn|al|el|ter|ten)\s+)*"
_REST = rf"(?:-\p{{Lu}}\p{{Ll}}+)?(?:\s+\p{{Lu}}\.)?(?:\s+{_PARTICLES}{_SURNAME})?"
_KNOWN_FIRST = "(?:" + "|".join(sorted(FIRST_NAMES, key=lambda name: (-len(name), name))) + r")(?!\w)"
# Every name pattern starts here: the lookbehinds and the gazetteer are only
# tried where a capitalised word starts, which makes them several times faster.
_AT_CAPITAL = r"(?<!\w)(?=\p{Lu})"
_KNOWN_NAME = rf"{_KNOWN_FIRST}{_REST}"
_ANY_NAME = rf"\p{{Lu}}\p{{Ll}}+{_REST}"
# Contexts in which a person introduces themselves or signs off.
_WEAK_BEFORE = (
    r"(?<=\b(?i:this\s+is|i'm|i’m|i\s+am|thanks|thank\s+you|thx|regards|best(?=,)|cheers|sincerely)"
    r"[,:!]?\s+)"
)
_STRONG_BEFORE = r"(?<=\b(?i:my\s+name\s+is|my\s+name's|name:)\s+)"

# Phones (regex-module syntax); `PhoneRecognizer` then wants 7-15 digits in all.
_PHONE_PATTERNS: tuple[tuple[str, str], ...] = (
    (
        "international",
        r"(?<![\w+])\+\d{1,3}[ .\-]?(?:\(\d{1,4}\)[ .\-]?)?\d{1,4}(?:[ .\-]?\d{1,4}){1,4}(?!\d)",
    ),
    (
        "north_american",
        r"(?<![\w.\-])(?:1[ .\-])?(?:\(\d{3}\)\s?|\d{3}[.\- ])\d{3}[.\- ]\d{4}(?![\w]|[.\-]\d)",
    ),
    ("national_trunk", r"(?<![\w.\-/])0\d{1,4}[ \-]\d{3,4}[ \-]?\d{3,5}(?![\w]|[.\-]\d)"),
    (
        "after_context",
        r"(?<=\b(?i:call\s+me|call\s+us|text\s+me|reach\s+me|phone|tel|mobile|cell|whatsapp|my\s+number)"
        r"(?:\s+(?:at|on|is|number(?:\s+is)?))?[:.]?\s+)\d{7,15}(?!\d)",
    ),
)
# Cards written as digit groups or one run; 13-19 digits and Luhn are checked after.
_CARD_PATTERN = (
    r"(?<![\d\-])(?:\d{4}[ \-]\d{4}[ \-]\d{4}[ \-]\d{1,7}|\d{4}[ \-]\d{6}[ \-]\d{4,5}|\d{13,19})(?![\d])"
)


@dataclass(frozen=True)
class RedactionResult:
    """Redacted texts (None stays None), redactions per entity, and which texts changed."""

    texts: list[str | None]
    counts: Counter[str]
    changed: np.ndarray  # bool, one per text


def luhn_valid(number: str) -> bool:
    """Whether the digits of `number` (spaces and dashes allowed) are 13-19 long and pass Luhn."""
    digits = "".join(char for char in number if char.isdigit())
    if not 13 <= len(digits) <= 19 or len(digits) != len(number.replace(" ", "").replace("-", "")):
        return False
    return luhn_ok(digits)


# Optional packages Presidio's import probes for (each guarded by `except ImportError`):
# thinc and Presidio's device detector import torch, its Hugging Face NER engine imports
# `transformers.pipeline`. 3 s of Python under the GIL for engines a regex-only run never uses.
_PROBED_BY_PRESIDIO = ("torch", "transformers")


@contextlib.contextmanager
def _presidio_without_ml() -> Iterator[None]:
    """Hide torch and transformers from imports, where this process has not loaded them yet.

    A `None` entry in `sys.modules` makes `import torch` raise ImportError, so the probes
    take their "not installed" branch. Loaded modules are left alone (probing them costs
    nothing, and other threads may be using them); the entries are removed afterwards, so a
    later `import torch` works as usual. Only the spaCy/Presidio NLP engines, which this
    module never builds, remember the packages as missing.
    """
    hidden = [name for name in _PROBED_BY_PRESIDIO if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


@functools.cache
def _recognizers() -> dict[str, tuple[PatternRecognizer, ...]]:
    """Presidio recognizers per entity, built once (importing Presidio takes seconds)."""
    import regex
    import tldextract

    with _presidio_without_ml():
        from presidio_analyzer import Pattern, PatternRecognizer
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IpRecognizer,
        )

    # tldextract's default extractor fetches the public suffix list over the
    # network first; the snapshot it ships is enough to tell a real domain.
    suffixes = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)
    case_sensitive = regex.DOTALL | regex.MULTILINE

    class OfflineEmailRecognizer(EmailRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return suffixes(pattern_text).fqdn != ""

    class LuhnCardRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return luhn_valid(pattern_text)

    class PhoneRecognizer(PatternRecognizer):
        def validate_result(self, pattern_text: str) -> bool:
            return 7 <= sum(char.isdigit() for char in pattern_text) <= 15

    return {
        "EMAIL_ADDRESS": (OfflineEmailRecognizer(),),
        "CREDIT_CARD": (
            CreditCardRecognizer(),
            LuhnCardRecognizer("CREDIT_CARD", patterns=[Pattern("card_digits", _CARD_PATTERN, 0.5)]),
        ),
        "IP_ADDRESS": (IpRecognizer(),),
        "PHONE_NUMBER": (
            PhoneRecognizer(
                "PHONE_NUMBER",
                patterns=[Pattern(name, pattern, 0.5) for name, pattern in _PHONE_PATTERNS],
                global_regex_flags=case_sensitive,
            ),
        ),
        "PERSON": (
            PatternRecognizer(
                "PERSON",
                patterns=[
                    Pattern("known_after_introduction", _AT_CAPITAL + _WEAK_BEFORE + _KNOWN_NAME, 0.6),
                    Pattern(
                        "known_before_here",
                        # the cheap look for "here" a few words on spares the gazetteer at most capitals
                        _AT_CAPITAL + r"(?=(?:\S+\s+){1,5}(?i:here)\b)" + _KNOWN_NAME + r"(?=\s+(?i:here)\b)",
                        0.6,
                    ),
                    Pattern(
                        "known_dash_signature",
                        _AT_CAPITAL + r"(?<=(?:^|\s)[-—–]+\s*|[—–]\s*)" + _KNOWN_NAME + r"(?=\s*$)",
                        0.6,
                    ),
                    Pattern("any_after_my_name_is", _AT_CAPITAL + _STRONG_BEFORE + _ANY_NAME, 0.8),
                ],
                global_regex_flags=case_sensitive,
            ),
        ),
    }


def _spans(text: str, entities: Sequence[str]) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, entity) findings in `text`, in order; the longer wins an overlap."""
    recognizers = _recognizers()
    found: list[tuple[int, int, str]] = []
    for entity in entities:
        for recognizer in recognizers[entity]:
            for result in recognizer.analyze(text, [entity]):
                if entity == "CREDIT_CARD" and not luhn_valid(text[result.start : result.end]):
                    continue  # Presidio's own pattern allows shapes our explicit check rejects
                found.append((result.start, result.end, entity))
    found.sort(key=lambda span: (span[0] - span[1], _PRIORITY[span[2]], span[0]))
    kept: list[tuple[int, int, str]] = []
    for start, end, entity in found:  # longest first, so a card is never half a phone
        if all(end <= other_start or start >= other_end for other_start, other_end, _ in kept):
            kept.append((start, end, entity))
    return sorted(kept)


def _redact_text(text: str, entities: Sequence[str], counts: Counter[str]) -> str:
    spans = _spans(text, entities)
    if not spans:
        return text
    parts: list[str] = []
    at = 0
    for start, end, entity in spans:
        parts.append(text[at:start])
        parts.append(f"<{entity}>")
        counts[entity] += 1
        at = end
    parts.append(text[at:])
    return "".join(parts)


def _redact_turns(history: str, entities: Sequence[str], counts: Counter[str]) -> str:
    """Redact each turn's content of a JSON list of turns; the result is JSON again."""
    try:
        turns = orjson.loads(history)
    except orjson.JSONDecodeError:
        return _redact_text(history, entities, counts)  # not JSON: nothing to keep valid
    if not isinstance(turns, list):
        return _redact_text(history, entities, counts)
    local: Counter[str] = Counter()
    redacted: list[Any] = []
    for turn in turns:
        if isinstance(turn, dict) and isinstance(turn.get("content"), str):
            turn = {**turn, "content": _redact_text(turn["content"], entities, local)}
        redacted.append(turn)
    if not local:
        return history  # unchanged rows keep their exact bytes
    counts.update(local)
    return orjson.dumps(redacted).decode()


def _check_entities(entities: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(entities) - set(ENTITIES))
    if unknown:
        raise ValueError(f"unknown PII entities {unknown}; known: {list(ENTITIES)}")
    return tuple(dict.fromkeys(entities))


def _repeats(values: list[Any]) -> tuple[np.ndarray, list[Any]] | None:
    """(codes, distinct values) when a sample says `values` repeat a lot, else None.

    A system prompt or an empty history is the same text on most rows; encoding
    a million copies for RE2 costs more than hashing them once. Mostly distinct
    columns (prompts, answers) skip the hashing.
    """
    if len(values) < _REPEAT_MIN_ROWS:
        return None
    sample = values[:: len(values) // _REPEAT_SAMPLE]
    if len(set(sample)) > _REPEAT_MAX_SHARE * len(sample):
        return None
    codes, distinct = pd.factorize(np.asarray(values, dtype=object))  # None/NaN -> code -1
    return codes, list(distinct)


def _redact(texts: Sequence[str | None], entities: Sequence[str], json_turns: bool) -> RedactionResult:
    wanted = _check_entities(entities)
    out: list[str | None] = list(texts)
    counts: Counter[str] = Counter()
    changed = np.zeros(len(out), dtype=bool)
    if not wanted or not out:
        return RedactionResult(out, counts, changed)
    repeats = _repeats(out)
    work: list[Any] = out if repeats is None else repeats[1]
    weights = None if repeats is None else np.bincount(repeats[0][repeats[0] >= 0], minlength=len(work))
    array = pa.array(work, type=pa.large_string(), from_pandas=True)
    combined = "|".join(f"(?:{_PREFILTERS[entity]})" for entity in wanted)
    hits = pc.match_substring_regex(array, pattern=combined).fill_null(False)
    rows = np.flatnonzero(hits.to_numpy(zero_copy_only=False))
    if rows.size == 0:
        return RedactionResult(out, counts, changed)
    # Which entities each candidate may hold: the same prefilters, on the few candidates only.
    candidates = array.take(pa.array(rows))
    flags = np.column_stack(
        [
            pc.match_substring_regex(candidates, pattern=_PREFILTERS[entity]).to_numpy(zero_copy_only=False)
            for entity in wanted
        ]
    )
    redacted: dict[int, str] = {}
    for row, row_flags in zip(rows.tolist(), flags.tolist(), strict=True):
        text: str = work[row]  # a prefilter hit is never null
        present = [entity for entity, flag in zip(wanted, row_flags, strict=True) if flag]
        local: Counter[str] = Counter()
        new = _redact_turns(text, present, local) if json_turns else _redact_text(text, present, local)
        if new != text:
            redacted[row] = new
            weight = 1 if weights is None else int(weights[row])
            for entity, n in local.items():
                counts[entity] += n * weight
    if repeats is None:
        for row, new in redacted.items():
            out[row] = new
            changed[row] = True
        return RedactionResult(out, counts, changed)
    codes = repeats[0]
    changed = np.isin(codes, np.fromiter(redacted, dtype=np.int64, count=len(redacted)))
    for row in np.flatnonzero(changed).tolist():
        out[row] = redacted[int(codes[row])]
    return RedactionResult(out, counts, changed)


def redact_texts(texts: Sequence[str | None], entities: Sequence[str]) -> RedactionResult:
    """Replace each PII finding of `entities` in `texts` with `<ENTITY>`; None stays None.

    Raises:
        ValueError: an entity name outside `ENTITIES`.
    """
    return _redact(texts, entities, json_turns=False)


def redact_frame(
    frame: pd.DataFrame, entities: Sequence[str], columns: Sequence[str] = TEXT_COLUMNS
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The frame with PII redacted in its text `columns`, and redactions per entity (every entity listed).

    The `history` column is read as the JSON list of turns the curation frame
    holds; only the turns' contents are redacted, so it stays valid JSON.
    """
    out = frame.copy(deep=False)  # a column with PII is replaced whole, never written into
    totals: Counter[str] = Counter()
    for column in columns:
        if column not in out.columns:
            continue
        result = _redact(out[column].to_numpy(dtype=object), entities, json_turns=column == HISTORY_COLUMN)
        if result.changed.any():
            out[column] = pd.Series(result.texts, index=out.index, dtype=object)
        totals.update(result.counts)
    return out, {entity: totals[entity] for entity in _check_entities(entities)}
