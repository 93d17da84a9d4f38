"""Turn a chat request into features for the difficulty classifier. Pure: no I/O.

Only the request's new work is read: the latest user message and the tool results that
followed it. A long fixed system prompt, tool definitions and earlier turns are context that
every call of a session repeats; they do not make "thanks!" harder. Text is read through bounded
windows, so cost does not grow with the prompt.

The text is normalised first, so wording that does not change difficulty does not change the
features: lower case, a leading polite prefix ("please", "hi!", "can you") dropped, every number
read as a token of its magnitude (up to four digits, or five and more), trailing
punctuation dropped, blanks ignored. Words and word pairs are hashed (CRC-32, stable across
processes) into `HASH_BUCKETS` buckets; the dense features (`DENSE_NAMES`: lengths, then named
cues such as math notation, "prove", olympiad phrasing, constraints, code, concurrency and
systems-design words) follow at `HASH_BUCKETS + j`.
They carry most of the signal that generalises across kinds of prompt, and they give the score's
reasons in words. No prompt text is kept: only bucket numbers and counts leave this module.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass
from itertools import repeat

from router.schemas import ChatRequest, Message

FEATURES_VERSION = "new-work-v2"
HASH_BITS = 18
HASH_BUCKETS = 1 << HASH_BITS
_MASK = HASH_BUCKETS - 1
# A pair's bucket is ((h1 * _PAIR_MIX) ^ h2) & _MASK for the buckets h1, h2 of its two words.
_PAIR_MIX = 0x9E3779B1 & _MASK

USER_HEAD_CHARS = 3000
USER_TAIL_CHARS = 1000
TOOL_RESULT_CHARS = 1000  # the tail of each tool result after the latest user message
TOOL_RESULTS = 4  # at most this many of them
CUE_CHARS = 4000  # window the cues are counted in

_ZERO_DIGITS = bytes.maketrans(b"123456789", b"000000000")
# Tokens of normalised UTF-8: words, numbers (runs of 0 once digits are zeroed), single marks,
# short runs of non-ASCII bytes (so CJK text still yields tokens). The match swallows the blanks
# before its token (the group), so each search starts on a token.
_TOKEN = re.compile(rb"\s*+([a-z]+|0+|[^\sa-z0\x80-\xff]|[\x80-\xff]{1,6})")
_ZERO_RUN = re.compile(rb"00+")
_POLITE = re.compile(
    r"(?:[\s,.!:;-]*(?:please|pls|plz|kindly|hi|hello|hey|hiya|greetings|dear \w+|"
    r"good (?:morning|afternoon|evening)|(?:can|could|would|will) you(?: please)?|"
    r"i need you to|i want you to|i(?: would|'d) like you to|help me(?: to)?|quick question|"
    r"thanks in advance)\b)+[\s,.!:;-]*"
)
_SEPARATOR = re.compile(rb"(?<=\d)[.,](?=\d)")  # 1,000.5 is one number
_TRAILING = re.compile(r"[\s?.!,;:]+$")

# Named cues: words and phrases looked up among the normalised words (one dict lookup per word,
# pair and triple), phrases that count only at the start (what the request opens with), and
# marks counted in the text. Order is the order of the dense features; labels are what reasons
# print. Phrases are written as normalised words ("don't" is "don t", "lock-free" "lock free").
_CUES: tuple[tuple[str, str], ...] = (
    ("math_notation", "math notation"),
    ("equations", "equations"),
    ("proof", "asks for a proof"),
    ("olympiad", "olympiad phrasing"),
    ("constraints", "constraints"),
    ("bullets", "list of requirements"),
    ("code_block", "code"),
    ("code_words", "code keywords"),
    ("concurrency", "concurrency"),
    ("algorithms", "hard algorithms"),
    ("design", "systems design"),
    ("debug", "debugging"),
    ("analysis", "asks for analysis"),
    ("simple_task", "simple task (translate, summarise, look up)"),
    ("chit_chat", "chit-chat"),
    ("creative", "creative writing"),
    ("choices", "multiple choice"),
)
_CUE_INDEX = {name: j for j, (name, _) in enumerate(_CUES)}
_ANYWHERE: dict[str, str] = {
    "proof": "prove proof proofs disprove derive|show that|demonstrate that",
    "olympiad": "prime primes divisible divides polynomial polynomials sequence sequences modulo "
    "remainder gcd lcm smallest largest maximum minimum greatest probability triangle circle "
    "inscribed perimeter radius digit digits distinct root roots coefficient coefficients "
    "inequality|find all|determine all|positive integer|positive integers|real number|"
    "real numbers|such that|for all|for every|how many|ordered pairs|function f|functions f",
    "constraints": "constraint constraints must should without only ensure exactly requirement "
    "requirements required each every cannot assume|at most|at least|do not|don t|edge case|"
    "edge cases|no more than",
    "code_words": "def class return import function const var let void int public private static "
    "lambda await struct impl fn select null none self python java javascript typescript rust "
    "golang sql html css regex api json",
    "concurrency": "concurrency concurrent concurrently race races deadlock deadlocks deadlocked "
    "thread threads threading multithreaded mutex mutexes lock locks locking atomic atomics "
    "atomically volatile asynchronous async goroutine goroutines consensus raft paxos segfault "
    "parallel parallelism parallelize parallelise synchronize synchronise synchronization "
    "synchronisation synchronized synchronous idempotent idempotency|race condition|"
    "race conditions|lock free|wait free|memory model|memory ordering|memory order|memory leak|"
    "memory leaks|undefined behavior|undefined behaviour",
    "algorithms": "optimize optimise optimized optimised optimization optimisation optimal "
    "complexity efficient efficiently efficiency scale scalable scaling scalability invariant "
    "invariants graph graphs recursion recursive heap trie subsequence subsequences substring "
    "substrings subarray subarrays interval intervals queries|dynamic programming|binary search",
    "design": "design architecture architect system systems microservice microservices database "
    "databases shard shards sharding sharded replicate replicated replication replica replicas "
    "throughput latency availability consistency tradeoff tradeoffs kubernetes distributed "
    "pipeline pipelines infrastructure protocol protocols|load balancer|load balancing|"
    "fault tolerant|fault tolerance|trade off|trade offs",
    "debug": "bug bugs debug debugging debugger error errors fix fails fail failing crash crashes "
    "crashed crashing intermittent intermittently traceback exception flaky hang hangs|"
    "stack trace|wrong output|not working|doesn t work",
    "analysis": "explain why analyze analyse analysis compare evaluate justify reason implication "
    "implications critique argue assess|step by step|pros and cons",
    "simple_task": "translate translation summarize summarise synonym synonyms antonym antonyms",
    "creative": "story poem essay letter email blog song lyrics haiku tweet slogan joke dialogue "
    "script speech imagine pretend roleplay|role play",
}
_AT_START: dict[str, str] = {
    "simple_task": "rewrite rephrase paraphrase shorten list name define spell convert format "
    "capitalize capitalise sort alphabetize alphabetise correct|sum up|fix the grammar|"
    "what is the capital|what is the meaning|what is the opposite|what does|who is|who was|"
    "who wrote|who painted|when did|when was|when is|where is|how do you say|how many|"
    "tell me a joke",
    "chit_chat": "hi hello hey thanks thx ok okay cool great nice good bye goodbye lol yes no sure "
    "perfect awesome|thank you|how are you|what s up|got it",
}


def _vocabulary(table: dict[str, str]) -> dict[bytes, int]:
    """Phrase -> cue index, from "word word ...|phrase|phrase" strings."""
    out: dict[bytes, int] = {}
    for name, spec in table.items():
        words, *phrases = spec.split("|")
        for phrase in [*words.split(), *phrases]:
            out[phrase.encode()] = _CUE_INDEX[name]
    return out


_PHRASES = _vocabulary(_ANYWHERE)
_PHRASE_STARTS = frozenset(phrase.split(b" ")[0] for phrase in _PHRASES if b" " in phrase)
_OPENINGS = _vocabulary(_AT_START)
_LONGEST = 4  # words in the longest phrase
_FUNCTION = re.compile(r"\b[a-z]\([a-z0-9]")  # f(x), g(n+1)
_BULLET = re.compile(r"\n[ \t]*(?:[-*•]|\d+[.)])[ \t]")
_INDENTED = re.compile(r"\n(?: {4}|\t)\S")
_CHOICE = re.compile(r"\n[ \t]*\(?[a-h][.)][ \t]")
_MATH_SYMBOLS = "≤≥∑∫√π∞"

DENSE_NAMES: tuple[str, ...] = (
    "length",
    "words",
    "lines",
    "numbers",
    "questions",
    *(name for name, _ in _CUES),
    "very_short",
    "non_latin",
)
# What each dense feature means, in words, for the reasons of a score: (said when it raises the
# difficulty, said when it lowers it). Counts (cues) are named only when the request has them.
DENSE_LABELS: dict[str, tuple[str, str]] = {
    "length": ("long request", "short request"),
    "words": ("many words", "few words"),
    "lines": ("many lines", "few lines"),
    "numbers": ("numbers", "numbers"),
    "questions": ("several questions", "several questions"),
    **{name: (label, label) for name, label in _CUES},
    "very_short": ("very short", "very short"),
    "non_latin": ("non-Latin script", "non-Latin script"),
}
ALWAYS_PRESENT = frozenset({"length", "words", "lines"})
N_DENSE = len(DENSE_NAMES)
N_FEATURES = HASH_BUCKETS + N_DENSE
_DENSE_INDICES = tuple(range(HASH_BUCKETS, N_FEATURES))
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NON_LATIN = re.compile("[^\\x00-\u024f]")


@dataclass(frozen=True, slots=True)
class Features:
    """Sparse features of a request's new work plus the counts the classifier reads directly.

    The hashed part is `buckets`, distinct, each worth `bucket_value` (1/sqrt of their number,
    so that it has unit norm whatever the text's length); `dense` follows at HASH_BUCKETS + j.
    """

    buckets: list[int]
    bucket_value: float
    dense: tuple[float, ...]
    cues: tuple[int, ...]  # raw count of each named cue, in `_CUES` order
    prompt_chars: int  # the whole request, for the token estimate

    @property
    def indices(self) -> list[int]:
        """Every feature index: the buckets, then the dense features."""
        return [*self.buckets, *_DENSE_INDICES]

    @property
    def values(self) -> list[float]:
        """The value at each of `indices`."""
        return [self.bucket_value] * len(self.buckets) + list(self.dense)

    def cue(self, name: str) -> int:
        """How often the named cue occurs in the new work."""
        return self.cues[_CUE_INDEX[name]]


def bounded_text(message: Message, head: int, tail: int) -> str:
    """At most `head` leading and `tail` trailing characters of a message, never the whole of it."""
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        if len(content) <= head + tail:
            return content
        return content[:head] + "\n" + content[len(content) - tail :] if tail else content[:head]
    texts = [part.text for part in content if part.text]
    if not texts:
        return ""
    first, last = texts[0], texts[-1]
    if len(texts) == 1:
        return bounded_text(Message(role=message.role, content=first), head, tail)
    return first[:head] + "\n" + (last[len(last) - tail :] if tail else "")


def message_chars(message: Message) -> int:
    content = message.content
    if content is None:
        return 0
    if isinstance(content, str):
        return len(content)
    return sum(len(part.text) for part in content if part.text)


def new_work(messages: list[Message]) -> str:
    """The latest user message and the tool results after it: what is asked now."""
    last = len(messages) - 1
    for i in range(last, -1, -1):
        if messages[i].role == "user":
            last = i
            break
    parts = [bounded_text(messages[last], USER_HEAD_CHARS, USER_TAIL_CHARS)] if messages else []
    results = [m for m in messages[last + 1 :] if m.role in ("tool", "function")]
    parts += [bounded_text(m, 0, TOOL_RESULT_CHARS) for m in results[-TOOL_RESULTS:]]
    return "\n".join(parts)


def normalise(text: str) -> str:
    """Lower case, no leading polite prefix, no trailing punctuation, digits read as 0."""
    lowered = text.lower()
    polite = _POLITE.match(lowered)
    if polite is not None and polite.end() < len(lowered):
        lowered = lowered[polite.end() :]
    return _TRAILING.sub("", lowered) or lowered


def tokens(normalised: str) -> list[bytes]:
    """Words and marks of normalised text; a number is its magnitude: `0` (up to four digits)
    or `00` (five or more)."""
    raw = _SEPARATOR.sub(b"", normalised.encode("utf-8", "ignore")).translate(_ZERO_DIGITS)
    return _TOKEN.findall(_ZERO_RUN.sub(_magnitude, raw))


def _magnitude(run: re.Match[bytes]) -> bytes:
    return b"0" if len(run.group()) <= 4 else b"00"


def _buckets(words: list[bytes]) -> set[int]:
    """The buckets of the words and of each pair of adjacent words.

    The first word pairs with 0, which lands on its own bucket and so adds nothing.
    """
    buckets: set[int] = set()
    add = buckets.add
    mask = _MASK
    mixed = 0
    for h in map(zlib.crc32, words, repeat(0)):
        bucket = h & mask
        add(bucket)
        add(mixed ^ bucket)
        mixed = bucket * _PAIR_MIX & mask
    return buckets


def count_cues(window: str, words: list[bytes] | None = None) -> tuple[int, ...]:
    """How often each named cue occurs in a normalised window (`words`: its tokens, if known)."""
    counts = [0] * len(_CUES)
    plain = [w for w in (tokens(window) if words is None else words) if w.isalpha()]
    lookup = _PHRASES.get
    for i, word in enumerate(plain):
        cue = lookup(word)
        if cue is not None:
            counts[cue] += 1
        if word in _PHRASE_STARTS:
            phrase = word
            for following in plain[i + 1 : i + _LONGEST]:
                phrase = phrase + b" " + following
                cue = lookup(phrase)
                if cue is not None:
                    counts[cue] += 1
    opening = b" ".join(plain[:_LONGEST])
    for length in range(len(opening), 0, -1):
        if length == len(opening) or opening[length] == 32:  # whole words only
            cue = _OPENINGS.get(opening[:length])
            if cue is not None:
                counts[cue] += 1
                break
    lined = "\n" + window
    marks = (
        ("math_notation", window.count("\\") + window.count("$") + window.count("^")),
        ("math_notation", window.count("_{") + len(_FUNCTION.findall(window))),
        ("math_notation", sum(map(window.count, _MATH_SYMBOLS))),
        ("equations", window.count("=") + window.count("<") + window.count(">")),
        ("constraints", window.count("<=") + window.count(">=") + window.count("≤")),
        ("constraints", window.count("≥")),
        ("bullets", len(_BULLET.findall(lined))),
        ("code_block", window.count("```") + len(_INDENTED.findall(lined))),
        ("code_words", window.count("{") + window.count("}") + window.count(";")),
        ("algorithms", window.count("o(n")),
        ("choices", len(_CHOICE.findall(lined))),
    )
    for name, count in marks:
        counts[_CUE_INDEX[name]] += count
    return tuple(counts)


def text_features(text: str, prompt_chars: int | None = None) -> Features:
    """Features of one piece of new work (a prompt as a user would send it)."""
    normalised = normalise(text)
    words = tokens(normalised)
    buckets = _buckets(words)
    window = normalised[:CUE_CHARS]
    cues = count_cues(window, words if len(normalised) <= CUE_CHARS else None)
    head = text[:2000]
    dense = (
        math.log1p(sum(map(len, words)) + len(words)) / 8.0,  # of the tokens: numbers count as one
        math.log1p(len(words)) / 7.0,
        math.log1p(text.count("\n")) / 4.0,
        math.log1p(len(_NUMBER.findall(window))) / 4.0,
        math.log1p(window.count("?")) / 2.0,
        *(math.log1p(c) / 3.0 for c in cues),
        1.0 if len(words) <= 6 else 0.0,
        len(_NON_LATIN.findall(head)) / max(1, len(head)),
    )
    value = 1.0 / math.sqrt(max(len(buckets), 1))
    chars = len(text) if prompt_chars is None else prompt_chars
    return Features(list(buckets), value, dense, cues, chars)


def extract(request: ChatRequest) -> Features:
    """Features of a request's new work; cost is bounded by the windows, not the prompt."""
    total = sum(map(message_chars, request.messages))
    return text_features(new_work(request.messages), total)
