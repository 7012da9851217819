"""The chat model of PROMU Fig 6's comparison: prompts, an OpenAI-compatible client, answer
parsers (the study that scores it is ``promu_lib.studies.llm``).

- :func:`build_messages`: a system instruction (task, label set, JSON answer format), two
  demonstrations from the train split (user turn: text + image; assistant turn: the gold
  answer), then the test post; images travel as base64 ``data:`` URLs in the OpenAI format
  (``{"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,..."}}``).
- :class:`ChatClient`: HTTP with the standard library, retries with exponential backoff on
  HTTP 429, 5xx and timeouts (``Retry-After`` honoured), and an on-disk cache keyed by the
  request's hash (written atomically), so a rerun makes no request.
- :func:`parse_ner` / :func:`parse_re`: answers -> BIO tags / a relation label. JSON, JSON in a
  code fence, JSON inside prose, ``Name (TYPE)`` lines and bare relation names are read; entity
  strings must occur in the post and labels must be in the label set, so an answer can never
  inject anything else. Each answer is counted as ``parsed`` (the asked-for format, every
  item usable), ``partial`` (something recovered: free text, items dropped, a cut answer) or
  ``unparseable`` (scored as no entity / ``None``).

No endpoint is configured by default (``llm.url`` unset): :func:`skip_reason` says so and
:meth:`ChatClient.from_config` returns None.
"""

from __future__ import annotations

import base64
import hashlib
import json
import mimetypes
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promu_lib.config import Config
from promu_lib.data.records import (
    MNRE_RELATIONS,
    RELATION_PHRASES,
    NerPost,
    RePost,
)
from promu_lib.errors import DataError, PromuError
from promu_lib.io import atomic_write_json

OUTCOMES: tuple[str, ...] = ("parsed", "partial", "unparseable")
MAX_ANSWER_CHARS = 20_000  # longer answers are cut before parsing (and count as partial)
MAX_RESPONSE_BYTES = 10 << 20
MAX_RETRY_AFTER = 60.0  # seconds: a server cannot make us wait longer per retry
N_DEMONSTRATIONS = 2  # PROMU Fig 6: two cases in the prompt

TYPE_NAMES = {
    "PER": "PER", "PERSON": "PER", "LOC": "LOC", "LOCATION": "LOC", "ORG": "ORG",
    "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "MISC": "MISC", "MISCELLANEOUS": "MISC",
    "OTHER": "MISC",
}  # fmt: skip


class LLMError(PromuError):
    """The endpoint failed for good (after retries), or answered outside the chat format."""


# =============================================================================================
# Prompts
# =============================================================================================

NER_INSTRUCTION = (
    "You find the named entities in a tweet, using the tweet and its image. Entity types: PER "
    "(person), LOC (location), ORG (organisation), MISC (any other name: events, products, "
    "works, nationalities). Copy each entity exactly as it is written in the tweet. Answer "
    'with JSON only: {"entities": [{"text": "<words from the tweet>", "type": '
    '"PER|LOC|ORG|MISC"}]}, with an empty list when there is none.'
)


def re_instruction() -> str:
    labels = ", ".join(MNRE_RELATIONS)
    return (
        "You classify the relation between the head and the tail entity of a tweet, using "
        f"the tweet and its image. Relations: {labels}. Use None when none of them holds. "
        'Answer with JSON only: {"relation": "<one relation from the list>"}.'
    )


def image_data_url(path: str | Path) -> str:
    """The image file as a ``data:<mime>;base64,...`` URL."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, "image not found", "the post's image file")
    mime = mimetypes.guess_type(p.name)[0] or "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _user(text: str, image_url: str) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [
            {"type": "text", "text": text},
            {"type": "image_url", "image_url": {"url": image_url}},
        ],
    }


def query_text(post: NerPost | RePost) -> str:
    """What the user turn says about one post."""
    tweet = " ".join(post.tokens)
    if isinstance(post, NerPost):
        return f"Tweet: {tweet}"
    head = " ".join(post.tokens[post.head.start : post.head.end])
    tail = " ".join(post.tokens[post.tail.start : post.tail.end])
    return f"Tweet: {tweet}\nHead entity: {head}\nTail entity: {tail}"


def gold_answer(post: NerPost | RePost) -> str:
    """The answer a demonstration shows, in the asked-for JSON format."""
    if isinstance(post, RePost):
        return json.dumps({"relation": post.relation})
    entities = []
    for start, end, etype in bio_spans(post.labels):
        entities.append({"text": " ".join(post.tokens[start:end]), "type": etype})
    return json.dumps({"entities": entities})


def build_messages(
    post: NerPost | RePost,
    image: str | Path,
    demonstrations: Sequence[tuple[NerPost | RePost, str | Path]],
) -> list[dict[str, Any]]:
    """OpenAI chat messages: instruction, ``(post, image)`` demonstrations with their gold
    answers, then the query post with its image."""
    instruction = NER_INSTRUCTION if isinstance(post, NerPost) else re_instruction()
    messages: list[dict[str, Any]] = [{"role": "system", "content": instruction}]
    for demo, demo_image in demonstrations:
        messages.append(_user(query_text(demo), image_data_url(demo_image)))
        messages.append({"role": "assistant", "content": gold_answer(demo)})
    messages.append(_user(query_text(post), image_data_url(image)))
    return messages


def pick_demonstrations(posts: Sequence[NerPost | RePost], k: int = N_DEMONSTRATIONS) -> list[int]:
    """Indices of ``k`` train posts to show: MNER, posts with entities covering as many types
    as possible; MRE, a related pair first, then a ``None`` pair (the first such in file order,
    so the prompt is fixed by the data)."""
    chosen: list[int] = []
    if posts and isinstance(posts[0], RePost):
        for want_none in (False, True) * k:
            i = next(
                (i for i, p in enumerate(posts)
                 if i not in chosen and (p.relation == "None") == want_none),
                None,
            )  # fmt: skip
            if i is not None and len(chosen) < k:
                chosen.append(i)
        return chosen
    covered: set[str] = set()
    for _ in range(k):
        best, gain = None, -1
        for i, p in enumerate(posts):
            types = {t for _, _, t in bio_spans(p.labels)}
            if i in chosen or not types:
                continue
            if len(types - covered) > gain:
                best, gain = i, len(types - covered)
        if best is None:
            break
        chosen.append(best)
        covered |= {t for _, _, t in bio_spans(posts[best].labels)}
    return chosen


# =============================================================================================
# Parsing answers
# =============================================================================================


@dataclass
class Parsed:
    """A parsed answer: BIO tags (MNER) or a relation (MRE), how it was read, what was off."""

    value: list[str] | str
    outcome: str  # one of OUTCOMES
    problems: list[str] = field(default_factory=list)


def bio_spans(labels: Sequence[str]) -> list[tuple[int, int, str]]:
    """``(start, end, type)`` of each entity of a BIO sequence (end exclusive)."""
    spans, start, etype = [], None, None
    for i, tag in enumerate([*labels, "O"]):
        inside = tag.startswith("I-") and tag[2:] == etype
        if start is not None and not inside:
            spans.append((start, i, etype))
            start, etype = None, None
        if tag != "O" and not inside:
            start, etype = i, tag[2:]
    return spans


def _fenced(text: str) -> list[str]:
    return re.findall(r"```(?:json|JSON)?\s*\n?(.*?)```", text, flags=re.S)


def json_values(text: str) -> list[Any]:
    """Every JSON value found in ``text``: the whole text, code-fenced blocks, then each object
    or array embedded in prose (at most 50 tried), in that order."""
    found: list[Any] = []
    decoder = json.JSONDecoder()
    for chunk in [text.strip(), *_fenced(text)]:
        try:
            found.append(json.loads(chunk))
        except (json.JSONDecodeError, RecursionError):
            pass
    starts = [m.start() for m in re.finditer(r"[\[{]", text)][:50]
    for i in starts:
        try:
            found.append(decoder.raw_decode(text, i)[0])
        except (json.JSONDecodeError, RecursionError):
            continue
    return found


def _norm(word: str) -> str:
    return word.strip(".,;:!?\"'()[]").lstrip("#@").lower()


def _place(tags: list[str], tokens: Sequence[str], text: str, etype: str) -> bool:
    """Tag the first untagged occurrence of ``text`` in ``tokens``; False if there is none."""
    words = [_norm(w) for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return False
    norm = [_norm(t) for t in tokens]
    for i in range(len(tokens) - len(words) + 1):
        if norm[i : i + len(words)] == words and all(t == "O" for t in tags[i : i + len(words)]):
            tags[i] = f"B-{etype}"
            for j in range(i + 1, i + len(words)):
                tags[j] = f"I-{etype}"
            return True
    return False


def _entity_items(value: Any) -> list[Any] | None:
    """The list of entity items of a JSON answer, or None when it has another shape."""
    if isinstance(value, dict):
        for key in ("entities", "entity", "named_entities", "result"):
            if isinstance(value.get(key), list):
                return value[key]
        if value and all(isinstance(v, str) and v.upper() in TYPE_NAMES for v in value.values()):
            return [[k, v] for k, v in value.items()]  # {"Paris": "LOC"}
        return None
    return value if isinstance(value, list) else None


def _item(item: Any) -> tuple[Any, Any]:
    if isinstance(item, dict):
        text = next((item[k] for k in ("text", "entity", "name", "span") if k in item), None)
        etype = next((item[k] for k in ("type", "label", "category") if k in item), None)
        return text, etype
    if isinstance(item, (list, tuple)) and len(item) == 2:
        return item[0], item[1]
    return None, None


FREE_NER = re.compile(
    r"(?P<text>[^\n:()\[\]{}*\-–]{1,80}?)\s*(?:\(|:|-|–)\s*(?P<type>"
    + "|".join(sorted(TYPE_NAMES, key=len, reverse=True))
    + r")\b",
    flags=re.I,
)


def _truncate(answer: Any, problems: list[str]) -> str | None:
    if not isinstance(answer, str):
        problems.append(f"answer is {type(answer).__name__}, not text")
        return None
    if len(answer) > MAX_ANSWER_CHARS:
        problems.append(f"answer of {len(answer)} characters cut at {MAX_ANSWER_CHARS}")
        return answer[:MAX_ANSWER_CHARS]
    return answer


def parse_ner(answer: Any, tokens: Sequence[str]) -> Parsed:
    """BIO tags for ``tokens`` from a model's answer (see the module docstring)."""
    problems: list[str] = []
    tags = ["O"] * len(tokens)
    text = _truncate(answer, problems)
    if text is None:
        return Parsed(tags, "unparseable", problems)
    for value in json_values(text):
        items = _entity_items(value)
        if items is None:
            continue
        clean = True
        for item in items:
            etext, etype = _item(item)
            if not isinstance(etext, str) or not isinstance(etype, str):
                problems.append(f"item {str(item)[:60]!r}: not a text and a type")
                clean = False
            elif etype.strip().upper() not in TYPE_NAMES:
                problems.append(f"item {etext[:40]!r}: unknown type {etype[:20]!r}")
                clean = False
            elif not _place(tags, tokens, etext, TYPE_NAMES[etype.strip().upper()]):
                problems.append(f"entity {etext[:40]!r} is not in the post (or repeated)")
        outcome = "parsed" if clean and not problems else "partial"
        return Parsed(tags, outcome, problems)
    matches = list(FREE_NER.finditer(text))
    for m in matches:
        if not _place(tags, tokens, m.group("text"), TYPE_NAMES[m.group("type").upper()]):
            problems.append(f"entity {m.group('text').strip()[:40]!r} is not in the post")
    if any(t != "O" for t in tags):
        return Parsed(tags, "partial", ["free text, not JSON", *problems])
    if re.search(r"\bno (named )?entit", text, flags=re.I) and len(text) < 300:
        return Parsed(tags, "partial", ["free text: no entity", *problems])
    return Parsed(tags, "unparseable", ["no entity list found", *problems])


_LABEL = re.compile(r"/?(?:per|org|loc|misc)/(?:per|org|loc|misc)/[a-z_]+", flags=re.I)
_BY_NAME = {r.lower(): r for r in MNRE_RELATIONS} | {
    r.lower().lstrip("/"): r for r in MNRE_RELATIONS
}
_BY_PHRASE = {p.lower(): r for r, p in RELATION_PHRASES.items()} | {
    r.rsplit("/", 1)[-1].replace("_", " "): r for r in MNRE_RELATIONS[1:]
}
_NONE_WORDS = ("none", "no relation", "no_relation", "null", "n/a")


def relation_label(name: str) -> str | None:
    """A relation from a full name (any case, leading slash optional), a readable phrase
    (``member of``) or a no-relation word; ``None`` when it is none of these."""
    key = name.strip().strip(".\"'").lower()
    if key in _NONE_WORDS:
        return "None"
    if key in _BY_NAME:
        return _BY_NAME[key]
    if "/" not in key and key.replace("_", " ") in _BY_PHRASE:
        return _BY_PHRASE[key.replace("_", " ")]
    return None


def parse_re(answer: Any) -> Parsed:
    """A relation label from a model's answer (``"None"`` when unparseable)."""
    problems: list[str] = []
    text = _truncate(answer, problems)
    if text is None:
        return Parsed("None", "unparseable", problems)
    for value in json_values(text):
        if isinstance(value, dict):
            value = next((value[k] for k in ("relation", "label", "answer") if k in value), None)
        if not isinstance(value, str):
            continue
        label = relation_label(value)
        if label is not None:
            return Parsed(label, "parsed" if not problems else "partial", problems)
        problems.append(f"relation {value[:40]!r} is not in the label set")
    named = {_BY_NAME.get(m.lower().lstrip("/")) for m in _LABEL.findall(text)} - {None}
    if len(named) == 1:
        return Parsed(named.pop(), "partial", ["free text, not JSON", *problems])
    if len(named) > 1:
        return Parsed("None", "unparseable", [f"{len(named)} relations named", *problems])
    if len(text) <= 200:
        label = relation_label(text.split(":")[-1])
        if label is not None:
            return Parsed(label, "partial", ["free text, not JSON", *problems])
    return Parsed("None", "unparseable", ["no relation found", *problems])


# =============================================================================================
# The client
# =============================================================================================


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER) if value is not None else None
    except ValueError:
        return None


def _content(response: Any, url: str) -> str:
    """The text of the first choice of an OpenAI chat completion."""
    try:
        content = response["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LLMError(
            f"{url}: the answer is not an OpenAI chat completion: {str(response)[:200]}"
        ) from None
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return json.dumps(content)  # a wrong type: left to the parser to reject


class ChatClient:
    """A minimal OpenAI-compatible chat-completions client with retries and a response cache.

    ``requests`` counts HTTP requests sent, ``cache_hits`` answers read from ``cache_dir``.
    ``sleep`` is the wait between retries (tests pass a recorder).
    """

    def __init__(
        self,
        url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        cache_dir: str | Path | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url, self.model, self.api_key = url, model, api_key
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature, self.max_tokens, self.sleep = temperature, max_tokens, sleep
        self.requests = 0
        self.cache_hits = 0

    @classmethod
    def from_config(cls, cfg: Config) -> ChatClient | None:
        """The configured client, or ``None`` when no endpoint is configured (see
        :func:`skip_reason`)."""
        from promu_lib.paths import resolve

        c = cfg.llm
        if skip_reason(cfg) is not None:
            return None
        return cls(
            c.url, c.model, os.environ.get(c.api_key_env),
            timeout=c.timeout, max_retries=c.max_retries, backoff=c.backoff,
            cache_dir=resolve(c.cache_dir.format(profile=cfg.profile)),
            temperature=c.temperature, max_tokens=c.max_tokens,
        )  # fmt: skip

    def body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }

    def cache_key(self, body: dict[str, Any]) -> str:
        """sha256 of the endpoint and the request body (never the API key)."""
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _cache_file(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, messages: list[dict[str, Any]]) -> str:
        """The answer text for ``messages``, from the cache or the endpoint."""
        body = self.body(messages)
        key = self.cache_key(body)
        cached = self._cache_file(key)
        if cached is not None and cached.is_file():
            try:
                content = json.loads(cached.read_text(encoding="utf-8"))["content"]
                self.cache_hits += 1
                return content
            except (json.JSONDecodeError, KeyError):
                pass  # a damaged entry is refetched and overwritten
        response = self._post(body)
        content = _content(response, self.url)
        if cached is not None:
            atomic_write_json(
                cached, {"key": key, "url": self.url, "model": self.model, "content": content,
                         "response": response},
            )  # fmt: skip
        return content

    def _post(self, body: dict[str, Any]) -> Any:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            delay = self.backoff * 2**attempt
            self.requests += 1
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    raw = resp.read(MAX_RESPONSE_BYTES + 1)
            except urllib.error.HTTPError as e:
                detail = e.read(500).decode(errors="replace")
                if not (e.code == 429 or 500 <= e.code < 600):
                    hint = " (check the API key, llm.api_key_env)" if e.code in (401, 403) else ""
                    raise LLMError(f"{self.url}: HTTP {e.code}{hint}: {detail[:200]}") from e
                last = f"HTTP {e.code}"
                after = _retry_after(e)
                delay = delay if after is None else after
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            else:
                if len(raw) > MAX_RESPONSE_BYTES:
                    raise LLMError(f"{self.url}: answer larger than {MAX_RESPONSE_BYTES} bytes")
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise LLMError(f"{self.url}: the answer is not JSON: {raw[:200]!r}") from e
            if attempt < self.max_retries:
                self.sleep(delay)
        raise LLMError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({last})")


# =============================================================================================
# Evaluation
# =============================================================================================


def skip_reason(cfg: Config) -> str | None:
    """Why no request can be made with ``cfg`` (``None`` when the endpoint is configured)."""
    c = cfg.llm
    if not c.url:
        return "no endpoint configured (llm.url is unset), so no request was made"
    if not c.model:
        return "llm.model is unset, so no request was made"
    return None
