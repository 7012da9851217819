"""Readers and writers of the real on-disk formats (see REFERENCE.md for the real files).

Readers validate as they read. Each problem raises one :class:`promu_lib.errors.DataError`
naming the file, the 1-based line (for the JSON boxes file: the line of the image key) and what
was expected. With ``on_bad="skip"`` a bad record is dropped instead, and counted: pass a
:class:`ReadReport` as ``report=`` to get the count and the first messages; a warning is logged
whenever something was skipped. A file with no record at all is always an error.

What is tolerated on purpose, because the real files hold it (counted in ``ReadReport.notes``):
- Twitter: ``I-X`` without a preceding ``B-X`` (186 times in Twitter-2015 train; seqeval's
  default mode reads it as the start of an entity), whitespace-only tokens (one ``\xa0``
  token in Twitter-2015 valid), a missing blank line at the end (the last post is kept),
  ``\r\n`` line ends, a UTF-8 byte-order mark.
- MNRE: unknown extra keys (later copies add ``caption`` and ``entity``), overlapping head and
  tail spans (59 train lines).
"""

from __future__ import annotations

import ast
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from promu_lib.data.images import name_problem
from promu_lib.data.records import (
    ENTITY_TYPES,
    MNRE_REL2ID,
    MNRE_RELATIONS,
    NER_LABEL_ALIASES,
    NER_TAGS,
    Box,
    CaptionPair,
    NerPost,
    RePost,
    Span,
)
from promu_lib.errors import DataError, shorten
from promu_lib.io import atomic_open, atomic_write_json

log = logging.getLogger(__name__)

# -- writers ---------------------------------------------------------------------------------


def write_twitter(path: str | Path, posts: Iterable[NerPost], other_as: str = "MISC") -> Path:
    """Write posts in the Twitter-2015/2017 layout: ``IMGID:<id>``, ``token\\tlabel``, blank.

    ``other_as="OTHER"`` writes MISC as OTHER, like the original Twitter-2015 files.
    """
    with atomic_open(path) as fh:
        for post in posts:
            fh.write(f"IMGID:{post.img_id}\n")
            for tok, lab in zip(post.tokens, post.labels):
                if other_as != "MISC" and lab.endswith("-MISC"):
                    lab = lab[:-4] + other_as
                fh.write(f"{tok}\t{lab}\n")
            fh.write("\n")
    return Path(path)


def re_post_to_dict(post: RePost) -> dict:
    return {
        "token": list(post.tokens),
        "h": {"name": post.head.name, "pos": [post.head.start, post.head.end]},
        "t": {"name": post.tail.name, "pos": [post.tail.start, post.tail.end]},
        "img_id": post.img_id,
        "relation": post.relation,
    }


def write_mnre(path: str | Path, posts: Iterable[RePost], style: str = "python") -> Path:
    """One record per line; ``style="python"`` writes dict literals like the real files."""
    if style not in ("python", "json"):
        raise ValueError(f"style must be 'python' or 'json', got {style!r}")
    with atomic_open(path) as fh:
        for post in posts:
            d = re_post_to_dict(post)
            fh.write((repr(d) if style == "python" else json.dumps(d)) + "\n")
    return Path(path)


def write_rel2id(path: str | Path, relations: Sequence[str] = MNRE_RELATIONS) -> Path:
    """The one-line ``ours_rel2id.json`` (``None`` must be id 0)."""
    with atomic_open(path) as fh:
        fh.write(json.dumps({r: i for i, r in enumerate(relations)}))
    return Path(path)


def write_captions(path: str | Path, pairs: Iterable[CaptionPair]) -> Path:
    """Pre-training pairs as JSON lines: ``{"id", "caption", "image", "matched"}``."""
    with atomic_open(path) as fh:
        for p in pairs:
            row = {"id": p.id, "caption": p.caption, "image": p.image, "matched": p.matched}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def write_boxes(path: str | Path, boxes: Mapping[str, Sequence[Box]]) -> Path:
    """Per-image object boxes: ``{image id: [[x1, y1, x2, y2, score, class], ...]}``."""
    return atomic_write_json(path, {k: [b.as_list() for b in v] for k, v in boxes.items()}, None)


# -- readers: shared machinery ---------------------------------------------------------------

ON_BAD = ("error", "skip")
MAX_REPORTED = 20  # skipped-record messages kept in a ReadReport


@dataclass
class ReadReport:
    """What a reader saw besides its records: skipped bad records and tolerated oddities."""

    path: Path | None = None
    records: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)  # first MAX_REPORTED skip messages
    notes: Counter = field(default_factory=Counter)  # tolerated oddities, by kind


class FileReader:
    """One reader call: the file, the ``on_bad`` policy and the report (shared by the readers
    here and in :mod:`promu_lib.data.crops`)."""

    def __init__(self, path: str | Path, on_bad: str, report: ReadReport | None) -> None:
        if on_bad not in ON_BAD:
            raise ValueError(f"on_bad must be one of {ON_BAD}, got {on_bad!r}")
        self.path = Path(path)
        self.on_bad = on_bad
        self.report = report if report is not None else ReadReport()
        self.report.path = self.path

    def error(
        self, problem: str, expected: str | None = None, line: int | None = None
    ) -> DataError:
        return DataError(self.path, problem, expected, line)

    def bad(self, err: DataError) -> None:
        if self.on_bad == "error":
            raise err
        self.report.skipped += 1
        if len(self.report.problems) < MAX_REPORTED:
            self.report.problems.append(str(err))

    def finish(self, records: list, what: str, expected: str) -> list:
        self.report.records = len(records)
        if not records and not self.report.skipped:
            raise self.error(f"no {what} in the file", expected)
        if self.report.skipped:
            log.warning(
                "%s: skipped %d bad %s (on_bad='skip'); first: %s",
                self.path,
                self.report.skipped,
                what,
                self.report.problems[0],
            )
        return records

    def read_bytes(self) -> bytes:
        if not self.path.is_file():
            raise self.error("file not found", "an existing file")
        return self.path.read_bytes()

    def read_text(self, expected: str) -> str:
        """The whole file as text; empty or non-UTF-8 content raises DataError."""
        raw = self.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise self.error(
                f"bytes at byte offset {e.start} are not UTF-8", "UTF-8 text", line
            ) from e
        if not text.strip():
            raise self.error("file is empty", expected)
        return text

    def lines(self) -> Iterator[tuple[int, str | DataError]]:
        """``(line number, text)`` without the line end; undecodable lines come as DataError."""
        offset = 0
        for i, chunk in enumerate(self.read_bytes().split(b"\n"), 1):
            try:
                text = chunk.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    i,
                    self.error(
                        f"bytes {chunk[e.start : e.start + 4]!r} at byte offset {offset + e.start} "
                        f"(column {e.start + 1}) are not UTF-8",
                        "UTF-8 text",
                        i,
                    ),
                )
            else:
                if text.endswith("\r"):
                    text = text[:-1]
                    self.report.notes["crlf line end"] += 1
                if i == 1 and text.startswith("\ufeff"):
                    text = text[1:]
                yield i, text
            offset += len(chunk) + 1

    def strict_json(self, text: str, line: int | None) -> object:
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise self.error(
                f"not valid JSON ({e.msg} at column {e.colno})",
                "a JSON value",
                e.lineno if line is None else line,
            ) from e
        except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; deep nesting
            raise self.error(
                f"not readable as JSON ({type(e).__name__}: {str(e)[:60]})",
                "a JSON value (integers of at most 4300 digits, nesting a few hundred deep)",
                line if line is not None else _number_line(text, e),
            ) from e


def _number_line(text: str, e: Exception) -> int | None:
    """The line of the first integer of more than 4300 digits (what ``e`` complains of)."""
    if not isinstance(e, ValueError):
        return None
    m = re.search(r"\d{4301}", text)
    return text.count("\n", 0, m.start()) + 1 if m else None


def is_text(x: object) -> bool:
    """A string of valid Unicode: JSON and Python escapes can make a lone surrogate
    (``"\\udce9"``), which no tokenizer takes."""
    if not isinstance(x, str):
        return False
    try:
        x.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- Twitter-2015/2017 -------------------------------------------------------------------------

_TWITTER_LABELS = set(NER_TAGS) | set(NER_LABEL_ALIASES)
_TWITTER_EXPECTED_LABEL = f"one of {', '.join(NER_TAGS)} (B-OTHER/I-OTHER are read as MISC)"


@dataclass
class _OpenPost:
    line: int
    img_id: str | None
    tokens: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    error: DataError | None = None


def read_twitter(
    path: str | Path, *, on_bad: str = "error", report: ReadReport | None = None
) -> list[NerPost]:
    """Read a Twitter-2015/2017 file: ``IMGID:<id>``, ``token<TAB>label`` lines, blank line.

    Labels are normalised (OTHER -> MISC). The last post is kept even without a trailing blank
    line. A bad line spoils its whole post (``on_bad="skip"`` drops that post).
    """
    r = FileReader(path, on_bad, report)
    posts: list[NerPost] = []
    cur: _OpenPost | None = None

    def close() -> None:
        if cur is None:
            return
        if cur.error is not None:
            r.bad(cur.error)
        elif not cur.tokens:
            r.bad(
                r.error(
                    f"post IMGID:{cur.img_id} has no token lines",
                    "at least one 'token<TAB>label' line after an IMGID line",
                    cur.line,
                )
            )
        else:
            posts.append(NerPost(cur.img_id, tuple(cur.tokens), tuple(cur.labels), cur.line))

    for i, text in r.lines():
        if isinstance(text, DataError):
            if cur is None:
                cur = _OpenPost(i, None)
            cur.error = cur.error or text
            continue
        if text.startswith("IMGID:") and "\t" not in text:
            close()
            img_id = text[len("IMGID:") :].strip()
            cur = _OpenPost(i, img_id)
            problem = name_problem(img_id)
            if problem is not None:
                cur.error = r.error(problem, "'IMGID:<id>' with a plain image id", i)
            continue
        if not text.strip():
            close()
            cur = None
            continue
        if cur is None:  # a token line outside a post: report it once for the whole block
            cur = _OpenPost(i, None)
            cur.error = r.error(
                "token line outside a post",
                "an 'IMGID:<id>' line before the first token line of each post",
                i,
            )
        if cur.error is not None:
            continue
        cur.error = _twitter_token(r, cur, text, i)
    close()
    return r.finish(
        posts, "posts", "posts of the form 'IMGID:<id>', 'token<TAB>label' lines, a blank line"
    )


def _twitter_token(r: FileReader, cur: _OpenPost, text: str, i: int) -> DataError | None:
    """Add one ``token<TAB>label`` line to ``cur``; return the error instead if it is bad."""
    cols = text.split("\t")
    if len(cols) != 2:
        hint = (
            " (separated by spaces? the format uses one TAB)"
            if len(cols) == 1 and " " in text
            else ""
        )
        return r.error(
            f"{len(cols)} tab-separated column(s) in {text!r}{hint}", "'token<TAB>label'", i
        )
    token, label = cols[0], cols[1].strip()
    if token == "":
        return r.error(f"empty token in {text!r}", "'token<TAB>label' with a non-empty token", i)
    if label not in _TWITTER_LABELS:
        return r.error(f"unknown label {label!r}", _TWITTER_EXPECTED_LABEL, i)
    label = NER_LABEL_ALIASES.get(label, label)
    if not token.strip():
        r.report.notes["whitespace-only token"] += 1
    if label.startswith("I-"):
        prev = cur.labels[-1] if cur.labels else "O"
        if prev[2:] != label[2:]:
            r.report.notes["I- without B-"] += 1
    cur.tokens.append(token)
    cur.labels.append(label)
    return None


def count_entities(posts: Iterable[NerPost]) -> Counter:
    """Entities per type, as seqeval's default mode reads BIO (an I-X after O or another type
    starts a new entity)."""
    counts: Counter = Counter({t: 0 for t in ENTITY_TYPES})
    for post in posts:
        prev = "O"
        for lab in post.labels:
            if lab.startswith("B-") or (lab.startswith("I-") and prev[2:] != lab[2:]):
                counts[lab[2:]] += 1
            prev = lab
    return counts


# -- MNRE ----------------------------------------------------------------------------------------

_MNRE_KEYS = ("token", "h", "t", "img_id", "relation")
_MNRE_EXPECTED = (
    "one record per line, a dict literal or JSON object with keys token (list of strings), "
    "h and t ({'name': str, 'pos': [start, end)}), img_id (file name) and relation"
)


def read_mnre(
    path: str | Path,
    rel2id: Mapping[str, int] | None = None,
    *,
    on_bad: str = "error",
    report: ReadReport | None = None,
) -> list[RePost]:
    """Read an MNRE file (``ours_*.txt`` or ``mnre_*.txt``): one dict literal or JSON per line.

    Relations are checked against ``rel2id`` (default: the 23 MNRE-v2 relations). Lines are
    parsed with ``json.loads`` or ``ast.literal_eval`` (never ``eval``).
    """
    r = FileReader(path, on_bad, report)
    relations = MNRE_REL2ID if rel2id is None else rel2id
    posts: list[RePost] = []
    for i, text in r.lines():
        if isinstance(text, DataError):
            r.bad(text)
            continue
        if not text.strip():
            continue
        try:
            posts.append(_mnre_record(r, text.strip(), i, relations, rel2id is not None))
        except DataError as e:
            r.bad(e)
    return r.finish(posts, "records", _MNRE_EXPECTED)


def _mnre_record(
    r: FileReader, text: str, i: int, relations: Mapping[str, int], custom: bool
) -> RePost:
    try:
        if text.startswith("{'"):  # the real files: a Python literal, JSON would fail anyway
            raise json.JSONDecodeError("single quotes", text, 1)
        obj = json.loads(text)
    except (ValueError, RecursionError):  # JSONDecodeError, or a number beyond int's limit
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
            raise r.error(
                f"not a dict literal or JSON object ({type(e).__name__}: {str(e)[:60]})",
                _MNRE_EXPECTED,
                i,
            ) from e
    if not isinstance(obj, dict):
        raise r.error(f"a {type(obj).__name__}, not a dict", _MNRE_EXPECTED, i)
    missing = [k for k in _MNRE_KEYS if k not in obj]
    if missing:
        raise r.error(f"missing key(s) {', '.join(map(repr, missing))}", _MNRE_EXPECTED, i)
    tokens = obj["token"]
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(map(is_text, tokens)):
        raise r.error(
            f"'token' is {shorten(tokens, 80)}", "'token': a non-empty list of strings", i
        )
    head = _mnre_span(r, obj["h"], "h", len(tokens), i)
    tail = _mnre_span(r, obj["t"], "t", len(tokens), i)
    if head.start < tail.end and tail.start < head.end:
        r.report.notes["overlapping head and tail"] += 1
    img_id = obj["img_id"]
    problem = name_problem(img_id)
    if problem is not None:
        raise r.error(problem, "'img_id': a plain image file name", i)
    relation = obj["relation"]
    if relation not in relations:
        source = "the given rel2id" if custom else "MNRE v2 (records.MNRE_RELATIONS)"
        raise r.error(
            f"unknown relation {relation!r}",
            f"one of the {len(relations)} relations of {source}",
            i,
        )
    return RePost(tuple(tokens), head, tail, img_id, relation, i)


def _mnre_span(r: FileReader, value: object, key: str, n: int, i: int) -> Span:
    expected = f"'{key}': {{'name': str, 'pos': [start, end]}} with 0 <= start < end <= {n} (the token count)"
    if not isinstance(value, dict) or "name" not in value or "pos" not in value:
        raise r.error(f"'{key}' is {value!r:.80}", expected, i)
    name, pos = value["name"], value["pos"]
    if not isinstance(name, str):
        raise r.error(f"'{key}' name is {name!r:.40}, not a string", expected, i)
    if not isinstance(pos, (list, tuple)) or len(pos) != 2 or not all(map(_is_int, pos)):
        raise r.error(f"'{key}' pos is {pos!r:.40}", expected, i)
    start, end = pos
    if not 0 <= start < end <= n:
        raise r.error(f"'{key}' pos [{start}, {end}] is out of range for {n} tokens", expected, i)
    return Span(name, start, end)


def read_rel2id(
    path: str | Path,
    expected: Mapping[str, int] | None = MNRE_REL2ID,
    *,
    on_bad: str = "error",
    report: ReadReport | None = None,
) -> dict[str, int]:
    """Read ``ours_rel2id.json``: a JSON object relation -> id, ``None`` = 0, ids 0..n-1.

    With ``expected`` (default: the 23 MNRE-v2 relations in the order of
    ``records.MNRE_RELATIONS``, which the datasets use as label ids) any disagreement is an
    error. The file is one record, so ``on_bad`` cannot skip anything here.
    """
    r = FileReader(path, on_bad, report)
    what = "a JSON object mapping each relation to its id, with 'None' = 0 and ids 0..n-1"
    text = r.read_text(what)
    obj = r.strict_json(text, None)
    if not isinstance(obj, dict) or not all(
        isinstance(k, str) and _is_int(v) for k, v in obj.items()
    ):
        raise r.error(f"{type(obj).__name__} with non-integer ids or non-string names", what, 1)
    if obj.get("None") != 0:
        raise r.error(f"'None' has id {obj.get('None')!r}", what, 1)
    if sorted(obj.values()) != list(range(len(obj))):
        raise r.error("ids are not 0..n-1 without gaps or repeats", what, 1)
    if expected is not None and obj != dict(expected):
        missing = [k for k in expected if k not in obj]
        extra = [k for k in obj if k not in expected]
        moved = [k for k in obj if k in expected and obj[k] != expected[k]]
        parts = [
            f"{name} {vals[:5]}"
            for name, vals in (
                ("missing", missing),
                ("unexpected", extra),
                ("different ids for", moved),
            )
            if vals
        ]
        v1 = " (31 labels: this looks like MNRE v1)" if len(obj) == 31 else ""
        raise r.error(
            f"disagrees with the expected relation set: {'; '.join(parts)}{v1}",
            f"the {len(expected)} MNRE-v2 relations with the ids of records.MNRE_RELATIONS",
            1,
        )
    r.report.records = len(obj)
    return dict(obj)


# -- captions (pre-training pairs) ---------------------------------------------------------------

_CAPTION_EXPECTED = (
    'one JSON object per line: {"id": str, "caption": non-empty str, "image": relative path, '
    '"matched": true|false}'
)


def read_captions(
    path: str | Path, *, on_bad: str = "error", report: ReadReport | None = None
) -> list[CaptionPair]:
    """Read pre-training pairs (JSON lines). Ids must be unique; extra keys are ignored."""
    r = FileReader(path, on_bad, report)
    pairs: list[CaptionPair] = []
    first_line: dict[str, int] = {}
    for i, text in r.lines():
        if isinstance(text, DataError):
            r.bad(text)
            continue
        if not text.strip():
            continue
        try:
            pair = _caption_record(r, text, i)
            if pair.id in first_line:
                raise r.error(
                    f"duplicate id {pair.id!r} (first on line {first_line[pair.id]})",
                    "unique ids",
                    i,
                )
        except DataError as e:
            r.bad(e)
            continue
        first_line[pair.id] = i
        pairs.append(pair)
    return r.finish(pairs, "caption pairs", _CAPTION_EXPECTED)


def _caption_record(r: FileReader, text: str, i: int) -> CaptionPair:
    obj = r.strict_json(text, i)
    if not isinstance(obj, dict):
        raise r.error(f"a JSON {type(obj).__name__}, not an object", _CAPTION_EXPECTED, i)
    missing = [k for k in ("id", "caption", "image", "matched") if k not in obj]
    if missing:
        raise r.error(f"missing key(s) {', '.join(map(repr, missing))}", _CAPTION_EXPECTED, i)
    cid, caption, image, matched = obj["id"], obj["caption"], obj["image"], obj["matched"]
    if not (isinstance(cid, str) and cid) and not _is_int(cid):
        raise r.error(f"'id' is {cid!r:.40}", "a non-empty string id", i)
    if not is_text(caption) or not caption.strip():
        raise r.error(f"'caption' is {caption!r:.40}", "a non-empty caption string", i)
    problem = name_problem(image)
    if problem is not None:
        raise r.error(problem, "'image': a path relative to the caption image directory", i)
    if not isinstance(matched, bool):
        raise r.error(f"'matched' is {matched!r:.20}", "'matched': true or false", i)
    return CaptionPair(str(cid), caption, image, matched)


# -- object boxes -------------------------------------------------------------------------------

BOX_EXPECTED = (
    "[x1, y1, x2, y2, score, class] with x1 < x2, y1 < y2, 0 <= score <= 1, class int or str"
)


def read_boxes(
    path: str | Path, *, on_bad: str = "error", report: ReadReport | None = None
) -> dict[str, list[Box]]:
    """Read ``{image id: [[x1, y1, x2, y2, score, class], ...]}``. An empty object is valid.

    JSON has no record lines, so errors name the image key, the box index and the line where
    the key first appears. ``on_bad="skip"`` drops single bad boxes (or a bad image entry).
    """
    r = FileReader(path, on_bad, report)
    text = r.read_text("a JSON object {image id: [box, ...]}")
    obj = r.strict_json(text, None)
    if not isinstance(obj, dict):
        raise r.error(f"a JSON {type(obj).__name__}", "a JSON object {image id: [box, ...]}", 1)
    line_of = _key_lines(text)
    out: dict[str, list[Box]] = {}
    for key, boxes in obj.items():
        if not isinstance(boxes, list):
            problem = f"image {key!r}: value is a {type(boxes).__name__}"
            r.bad(r.error(problem, "a list of boxes", line_of(key)))
            continue
        kept = []
        for j, b in enumerate(boxes):
            try:
                kept.append(_box(r, b, f"image {key!r} box {j}"))
            except DataError as e:  # find the line only when needed: it scans the text
                r.bad(r.error(e.problem, e.expected, line_of(key)))
        out[key] = kept
    r.report.records = sum(map(len, out.values()))
    return out


def box_problem(b: object) -> str | None:
    """What is wrong with ``b`` as a box ``[x1, y1, x2, y2, score, class]`` ("is inverted or
    empty [...]", "has score 1.7", ...), or None: the one rule of the reader and of
    ``promu predict --boxes``."""
    if not isinstance(b, list) or len(b) != 6:
        return f"is {shorten(b, 60)}"
    x1, y1, x2, y2, score, cls = b
    if not all(map(_is_num, (x1, y1, x2, y2, score))):
        return f"has non-numeric or non-finite values {shorten(b, 60)}"
    if not (x1 < x2 and y1 < y2):
        return f"is inverted or empty {b[:4]}"
    if not 0.0 <= score <= 1.0:
        return f"has score {score}"
    if not (isinstance(cls, str) or _is_int(cls)):
        return f"has class {shorten(cls, 30)}"
    return None


def to_box(b: list) -> Box:
    """A list that passed :func:`box_problem` as a :class:`Box`."""
    x1, y1, x2, y2, score, cls = b
    return Box(float(x1), float(y1), float(x2), float(y2), float(score), str(cls))


def _box(r: FileReader, b: object, where: str) -> Box:
    problem = box_problem(b)
    if problem is not None:
        raise r.error(f"{where} {problem}", BOX_EXPECTED)
    return to_box(b)


def _key_lines(text: str) -> Callable[[str], int]:
    """Line (1-based) of the first occurrence of each JSON key (the top-level keys come first)."""

    def line_of(key: str) -> int:
        pos = text.find(json.dumps(key, ensure_ascii=False) + ":")
        if pos < 0:
            pos = text.find(json.dumps(key))
        return text.count("\n", 0, max(pos, 0)) + 1

    return line_of
