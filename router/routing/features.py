"""Turn a chat request into features for the difficulty classifier. Pure: no I/O.

Only the request's new work is read: the latest user message and the tool results that
followed it. A long fixed system prompt, tool definitions and earlier turns are context that
every call of a session repeats; they do not make "thanks!" harder. Text is read through bounded
windows, so cost does not grow with the prompt.

The text is normalised first, so wording that does not change difficulty does not change the
features: lower case, a leading polite prefix ("please", "hi!", "can you") dropped, every number
read as one token (a second one for numbers of five digits or more), trailing punctuation
dropped, blanks ignored. Words and word pairs are hashed (CRC-32, stable across processes) into
`HASH_BUCKETS` buckets; named cues (`CUE_NAMES`: math notation, "prove", olympiad phrasing,
constraints, code, concurrency and systems-design words, ...) follow at `HASH_BUCKETS + j`.
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

_DIGITS = str.maketrans("123456789", "000000000")
# Tokens of normalised text: words, numbers (runs of 0 once digits are zeroed), single marks,
# single non-ASCII characters (so CJK text still yields tokens). Blanks are skipped.
_TOKEN = re.compile(r"[a-z]+|0+|[^\sa-z0\x80-\U0010ffff]|[^\x00-\x7f]")
_POLITE = re.compile(
    r"(?:[\s,.!:;-]*(?:please|pls|plz|kindly|hi|hello|hey|hiya|greetings|dear \w+|"
    r"good (?:morning|afternoon|evening)|(?:can|could|would|will) you(?: please)?|"
    r"i need you to|i want you to|i(?: would|'d) like you to|help me(?: to)?|quick question|"
    r"thanks in advance)\b)+[\s,.!:;-]*"
)
_SEPARATOR = re.compile(r"(?<=\d)[.,](?=\d)")  # 1,000.5 is one number
_TRAILING = re.compile(r"[\s?.!,;:]+$")

# Named cues, counted in one pass of one regex over the lower-cased window. Order is the order
# of the dense features; names are what reasons print.
_CUES: tuple[tuple[str, str, str], ...] = (
    ("math_notation", "math notation", r"\\[a-z]+|\$|\^|_\{|[≤≥∑∫√π∞]|\b[a-z]\([a-z0-9]"),
    ("equations", "equations", r"[=<>]"),
    (
        "proof",
        "asks for a proof",
        r"\b(?:prove|proof|show that|demonstrate that|derive|disprove)\b",
    ),
    (
        "olympiad",
        "olympiad phrasing",
        r"\b(?:find all|determine all|positive integers?|real numbers?|such that|for all|"
        r"for every|primes?|divisible|divides|polynomials?|sequences?|modulo|remainder|gcd|lcm|"
        r"how many|smallest|largest|maximum|minimum|greatest|probability|triangle|circle|"
        r"inscribed|perimeter|radius|digits?|ordered pairs|distinct|roots?|coefficients?|"
        r"inequality|functions? f)\b",
    ),
    (
        "constraints",
        "constraints",
        r"\b(?:constraints?|must|should|at most|at least|without|only|do not|don't|ensure|"
        r"exactly|no more than|requirements?|required|each|every|cannot|edge cases?|assume)\b"
        r"|<=|>=|≤|≥",
    ),
    ("bullets", "list of requirements", r"^[ \t]*(?:[-*•]|\d+[.)])[ \t]+"),
    ("code_block", "code", r"```|^(?: {4}|\t)\S"),
    (
        "code_words",
        "code keywords",
        r"\b(?:def|class|return|import|function|const|var|let|void|int|public|private|static|"
        r"lambda|async|await|struct|impl|fn|select|null|none|self|python|java|javascript|"
        r"typescript|rust|golang|sql|html|css|regex|api|json)\b|[{};]",
    ),
    (
        "concurrency",
        "concurrency",
        r"\b(?:concurren\w*|race conditions?|races?|deadlocks?|threads?|threading|mutex\w*|"
        r"lock\w*|lock-free|wait-free|atomic\w*|volatile|memory (?:model|order\w*)|barriers?|"
        r"asynchronous|async|goroutines?|distributed|consensus|raft|paxos|memory leaks?|"
        r"segfault|undefined behaviou?r|parallel\w*|synchroni[sz]\w*|idempoten\w*)\b",
    ),
    (
        "algorithms",
        "hard algorithms",
        r"\b(?:optimi[sz]\w*|complexity|efficient\w*|scal\w+|invariants?|dynamic programming|"
        r"graphs?|recursion|recursive|binary search|heap|trie|subsequences?|substrings?|"
        r"subarrays?|intervals?|queries)\b|o\(n",
    ),
    (
        "design",
        "systems design",
        r"\b(?:design|architecture|architect|systems?|microservices?|databases?|shard\w*|"
        r"replicat\w*|load balanc\w*|throughput|latency|fault[- ]toleran\w*|availability|"
        r"consistency|trade-?offs?|kubernetes|queues?|pipelines?|infrastructure|protocols?)\b",
    ),
    (
        "debug",
        "debugging",
        r"\b(?:bugs?|debug\w*|errors?|fix|fails?|failing|crash\w*|intermittent\w*|traceback|"
        r"exception|stack trace|flaky|hangs?|wrong output|doesn't work|not working)\b",
    ),
    (
        "analysis",
        "asks for analysis",
        r"\b(?:explain|why|analy[sz]e|compare|evaluate|justify|step by step|reason|"
        r"implications?|critique|argue|assess|pros and cons)\b",
    ),
    (
        "simple_task",
        "simple task (translate, summarise, look up)",
        r"\b(?:translate|translation|summari[sz]e|summary|rewrite|rephrase|paraphrase|list|name|"
        r"define|definition|spell|convert|format|capital of|synonyms?|antonyms?|what is the|"
        r"who is|who was|when did|when was|where is|tell me a joke|meaning of|uppercase|"
        r"lowercase|alphabeti[sz]e|grammar|typo|spelling)\b",
    ),
    (
        "chit_chat",
        "chit-chat",
        r"\A(?:hi|hello|hey|thanks|thank you|thx|ok|okay|cool|great|nice|good|bye|goodbye|"
        r"how are you|what's up|lol|yes|no|sure|perfect|awesome|got it)\b",
    ),
    (
        "creative",
        "creative writing",
        r"\b(?:story|poem|essay|letter|email|blog|song|lyrics|haiku|tweet|slogan|joke|dialogue|"
        r"script|speech|imagine|pretend|role-?play)\b",
    ),
    ("choices", "multiple choice", r"^[ \t]*\(?[a-h][.)][ \t]"),
)
_CUE = re.compile("|".join(f"(?P<{name}>{pattern})" for name, _, pattern in _CUES), re.MULTILINE)
_CUE_INDEX = {name: j for j, (name, _, _) in enumerate(_CUES)}

DENSE_NAMES: tuple[str, ...] = (
    "length",
    "words",
    "lines",
    "numbers",
    "questions",
    *(name for name, _, _ in _CUES),
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
    **{name: (label, label) for name, label, _ in _CUES},
    "very_short": ("very short", "very short"),
    "non_latin": ("non-Latin script", "non-Latin script"),
}
ALWAYS_PRESENT = frozenset({"length", "words", "lines"})
N_DENSE = len(DENSE_NAMES)
N_FEATURES = HASH_BUCKETS + N_DENSE
_DENSE_INDICES = tuple(range(HASH_BUCKETS, N_FEATURES))
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


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
    """Words and marks of normalised text; every number is `0`, or `00` from five digits on."""
    out = []
    for token in _TOKEN.findall(_SEPARATOR.sub("", normalised).translate(_DIGITS)):
        if token[0] == "0":
            token = "0" if len(token) <= 4 else "00"
        out.append(token.encode())
    return out


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


def count_cues(window: str) -> tuple[int, ...]:
    """How often each named cue occurs in a lower-cased window."""
    counts = [0] * len(_CUES)
    for match in _CUE.finditer(window):
        if match.lastgroup is not None:
            counts[_CUE_INDEX[match.lastgroup]] += 1
    return tuple(counts)


def text_features(text: str, prompt_chars: int | None = None) -> Features:
    """Features of one piece of new work (a prompt as a user would send it)."""
    normalised = normalise(text)
    words = tokens(normalised)
    buckets = _buckets(words)
    window = normalised[:CUE_CHARS]
    cues = count_cues(window)
    head = text[:2000]
    dense = (
        math.log1p(len(text)) / 8.0,
        math.log1p(len(words)) / 7.0,
        math.log1p(text.count("\n")) / 4.0,
        math.log1p(len(_NUMBER.findall(window))) / 4.0,
        math.log1p(window.count("?")) / 2.0,
        *(math.log1p(c) / 3.0 for c in cues),
        1.0 if len(words) <= 6 else 0.0,
        sum(1 for c in head if ord(c) > 0x24F) / max(1, len(head)),
    )
    value = 1.0 / math.sqrt(max(len(buckets), 1))
    chars = len(text) if prompt_chars is None else prompt_chars
    return Features(list(buckets), value, dense, cues, chars)


def extract(request: ChatRequest) -> Features:
    """Features of a request's new work; cost is bounded by the windows, not the prompt."""
    total = sum(map(message_chars, request.messages))
    return text_features(new_work(request.messages), total)
