"""The secrets no log line may show, and finding them fast in every spelling a line can give them.

A secret reaches text as it is (printed), or escaped: by JSON (``\\"``, ``\\\\``, ``\\t``; ``\\u00e9`` with
``ensure_ascii``), by ``repr`` of a str or of its UTF-8 bytes (``\\'``, ``\\xc3\\xa9``), its non-ASCII
as Python's ``backslashreplace`` writes it (``\\xe9``, ``\\U0001f511``: ``ascii()`` and ``%a`` are that over
a repr), or by two of these in turn: a job's SLS line that the parent cannot parse is logged as text and
escaped again, an exception message holds the repr of a JSON body. A secret is also spelled
percent-encoded, as ``urllib.parse`` puts it in a URL or a form body (``%2B``, ``%C3%A9``), though not
escaped any further, since that spelling is plain ASCII. Every such spelling of a secret is one of its
*forms*, and ``redact`` replaces each stretch of text covered by forms with ``<redacted>``.

Not forms, so not redacted: a secret transformed rather than escaped (base64 or hex of it, a hash, its
case changed, another escaping's variants such as lower-case ``%2b``). Where base64 of a secret falls
inside a longer encoded text (``Basic`` credentials), its characters depend on the bytes before it,
and the transforms code may apply have no end; code that encodes a secret has to keep it out of its
own prints (docs/deploying.md says so).

Which secrets, and for how long:

* lasting ones (the module token, ``CLIENT_SECRET``, the sources' credentials) for the life of the process;
* a job's credentials, also after its answer: a module global, a thread or a later job may print them
  whenever it likes. The newest ``JOB_SECRETS`` (10,000) are kept, and at most ``MAX_FORMS`` forms of them
  (50,000: a secret full of quotes, backslashes and non-ASCII has up to ~100 forms, a Foundry token one);
  past either bound the oldest job secret is forgotten first. A user's token that comes back with each of
  their jobs is the newest again each time.
* none shorter than ``MIN_LENGTH`` (4) characters: redacting "1" or "abc" everywhere would destroy the
  logs. A secret of several lines also counts line by line, because output is logged a line at a time.

Finding any of some 10,000 forms in every log line must cost little, and a compiled regex alternation
does not (measured: ~8 ns per alternative per character). Each form of 7 bytes or more is indexed by
four 4-byte words of its UTF-8, at offsets k to k+3 (``_anchor`` picks k): wherever the form occurs in a
text, one of them is a word of the text at a 4-aligned offset. So a text is checked by reading it as
4-byte integers and asking the index whether any is known: one C-level set operation, no Python loop
per character, and its cost does not grow with the number of secrets. Only on a hit are the forms
behind the word looked for in earnest. Forms of 4-6 bytes are few and simply searched for.

Readers take no lock: the index maps each word to a tuple of forms, and a writer replaces tuples and
entries whole under its own lock, so a reader sees each entry before or after a change, never half of it
(each read is one C-level operation, which the GIL does not interrupt).
"""

from __future__ import annotations

import collections
import itertools
import re
import sys
import threading
from collections.abc import Callable, Iterable
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import AnyStr
from urllib.parse import quote, quote_plus

REDACTED = "<redacted>"
MIN_LENGTH = 4
JOB_SECRETS = 10_000
MAX_FORMS = 50_000
_WORD = 4  # bytes per indexed word; a form must span one aligned word wherever it occurs
_INDEXED = 2 * _WORD - 1  # forms at least this long (bytes) are indexed, shorter ones searched for
_CROWDED = 8  # forms behind an anchor's words past which a less crowded anchor is looked for
_UNICODE_ESCAPE = re.compile(r"\\\\|\\u[0-9a-f]{4}")
_PLAIN = re.compile(r"[ !#-&(-\[\]-~]*")  # printable ASCII but quotes and backslash: no escape changes it
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]*")  # what percent-encoding leaves as it is (RFC 3986 section 2.3)


def _json(text: str) -> str:
    return str(encode_basestring(text))[1:-1]


def _json_ascii(text: str) -> str:
    return str(encode_basestring_ascii(text))[1:-1]


def _json_ascii_upper(text: str) -> str:
    """``\\u00E9``: how encoders outside Python spell non-ASCII."""
    return _UNICODE_ESCAPE.sub(lambda m: m[0][:2] + m[0][2:].upper(), _json_ascii(text))


def _repr(text: str) -> str:
    """As inside the repr of a longer str quoted with ``'`` (a lone ``'`` is then escaped)."""
    return repr('"' + text)[2:-1]


def _repr_double_quoted(text: str) -> str:
    """As inside the repr of a str that holds ``'`` and no ``"``: Python quotes it with ``"``."""
    return _repr(text).replace("\\'", "'")


def _bytes_repr(text: str) -> str:
    return repr(b'"' + _utf8(text))[3:-1]


def _bytes_repr_double_quoted(text: str) -> str:
    return _bytes_repr(text).replace("\\'", "'")


def _backslashreplace(text: str) -> str:
    """Non-ASCII as ``\\xe9``, ``\\u20ac``, ``\\U0001f511``: a stream with an ASCII encoding writes it so,
    and over a repr's form this is ``ascii()`` (``%a``, ``!a``), which JSON and repr spell otherwise."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


_ESCAPES: tuple[Callable[[str], str], ...] = (
    _json, _json_ascii, _json_ascii_upper, _repr, _repr_double_quoted, _bytes_repr, _bytes_repr_double_quoted,
    _backslashreplace)


def _percent_encoded(text: str) -> set[str]:
    """As a URL's query or path (``quote``, ``/`` kept or not) or a form body (``quote_plus``) has it. Plain
    ASCII, which no escaping changes: these are not escaped further. A Foundry token (a JWT) is unreserved
    throughout, and looked at once only: ``quote`` took 10 us of a 1 KB token, on the poll thread, per job."""
    if _UNRESERVED.fullmatch(text):
        return set()
    try:
        return {quote(text, safe=""), quote(text), quote_plus(text)}
    except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800"): no UTF-8, so no percent-encoding either
        return set()


def forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` that redaction looks for: as it is, escaped once or twice over
    (``_ESCAPES``), each of those as the parent's SLS encoder writes it (``ensure_ascii``), and
    percent-encoded."""
    if _PLAIN.fullmatch(secret):
        return {secret} | _percent_encoded(secret)
    once = {escape(secret) for escape in _ESCAPES}
    twice = {escape(form) for form in once for escape in _ESCAPES}
    spelled = {secret} | once | twice
    return spelled | {_json_ascii(form) for form in spelled} | _percent_encoded(secret)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _words(data: bytes) -> memoryview:
    """``data`` read as 4-byte words at the offsets 0, 4, 8, ... (zero-padded at the end)."""
    pad = -len(data) % _WORD
    return memoryview(data + b"\0" * pad if pad else data).cast("I")


def _words_at(data: bytes, k: int) -> tuple[int, ...]:
    """The words at offsets k..k+3 of ``data``: one of them is aligned wherever ``data`` occurs."""
    return tuple({int.from_bytes(data[d:d + _WORD], sys.byteorder) for d in range(k, k + _WORD)})


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _occurrences(text: AnyStr, found: Iterable[AnyStr]) -> Iterable[tuple[int, int]]:
    for form in found:
        at = text.find(form)
        while at != -1:
            yield at, at + len(form)
            at = text.find(form, at + 1)


class Secrets:
    """The secrets of one process and the index of their forms."""

    def __init__(self, job_secrets: int = JOB_SECRETS, max_forms: int = MAX_FORMS) -> None:
        self.job_secrets = job_secrets
        self.max_forms = max_forms
        self._lasting: dict[str, tuple[str, ...]] = {}  # secret -> its forms
        self._jobs: collections.OrderedDict[str, tuple[str, ...]] = collections.OrderedDict()  # oldest first
        self._holders: dict[str, int] = {}  # form -> how many secrets have it
        self._index: dict[int, tuple[str, ...]] = {}  # word -> the forms it indexes
        self._words: dict[str, tuple[int, ...]] = {}  # form -> its words in the index
        self._short: tuple[str, ...] = ()  # forms too short to be indexed
        self._lock = threading.Lock()  # writers only
        self.longest = 0  # bytes of the longest form ever held: how much of a cut line may be a secret

    # -- writers -----------------------------------------------------------------------------------

    def add(self, secret: str | None, *, job: bool = False) -> None:
        """Redact ``secret`` from now on: for good, or (``job``) among the newest job secrets."""
        if not secret:
            return
        pieces = [secret, *(line.strip() for line in secret.splitlines())]
        with self._lock:
            for piece in dict.fromkeys(p for p in pieces if len(p) >= MIN_LENGTH):
                self._add(piece, job)
            while len(self._jobs) > self.job_secrets or (len(self._holders) > self.max_forms and self._jobs):
                self._drop(*self._jobs.popitem(last=False))

    def remove(self, secret: str) -> None:
        """Forget ``secret`` (a test's, or one given by mistake); it is printed again."""
        with self._lock:
            for kept in (self._lasting, self._jobs):
                if secret in kept:
                    self._drop(secret, kept.pop(secret))

    def _add(self, secret: str, job: bool) -> None:
        if secret in self._lasting:
            return
        if secret in self._jobs:
            if job:
                self._jobs.move_to_end(secret)
            else:
                self._lasting[secret] = self._jobs.pop(secret)
            return
        spelled = tuple(forms(secret))
        (self._jobs if job else self._lasting)[secret] = spelled
        for form in spelled:
            self._holders[form] = self._holders.get(form, 0) + 1
            if self._holders[form] == 1:
                self._index_form(form)

    def _drop(self, secret: str, spelled: tuple[str, ...]) -> None:
        for form in spelled:
            self._holders[form] -= 1
            if not self._holders[form]:
                del self._holders[form]
                self._unindex_form(form)

    def _index_form(self, form: str) -> None:
        data = _utf8(form)
        self.longest = max(self.longest, len(data))
        if len(data) < _INDEXED:
            self._short = (*self._short, form)
            return
        words = self._anchor(data)
        self._words[form] = words
        for word in words:
            self._index[word] = (*self._index.get(word, ()), form)

    def _anchor(self, data: bytes) -> tuple[int, ...]:
        """The four words that index a form: those at offsets k..k+3 of its UTF-8, any 7 bytes of it
        will do: its start, middle or end, else any other, whichever first has words that index few forms
        yet (or the least crowded of all). Tokens often share a start (every JWT's header) or an end, and
        a word shared by thousands of forms would make each of them a candidate wherever it is seen."""
        last = len(data) - _INDEXED
        best: tuple[int, ...] = ()
        best_load = -1
        for k in itertools.chain((0, last // 2, last), range(1, last, 2)):
            words = _words_at(data, k)
            load = sum(len(self._index.get(word, ())) for word in words)
            if best_load < 0 or load < best_load:
                best, best_load = words, load
            if best_load <= _CROWDED:
                break
        return best

    def _unindex_form(self, form: str) -> None:
        words = self._words.pop(form, None)
        if words is None:
            self._short = tuple(f for f in self._short if f != form)
            return
        for word in words:
            left = tuple(f for f in self._index.get(word, ()) if f != form)
            if left:
                self._index[word] = left
            else:
                self._index.pop(word, None)

    # -- readers -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._lasting) + len(self._jobs)

    def _candidates(self, data: bytes) -> set[str]:
        """Forms that may occur in ``data``: every short one, and those sharing an aligned word with it."""
        found = set(self._short)
        index = self._index
        if len(data) >= _WORD and index:
            keys = index.keys()
            words = _words(data)
            if not keys.isdisjoint(words):
                for word in keys & set(words):
                    found.update(index.get(word, ()))
        return found

    def found(self, text: str) -> list[str]:
        """The forms that occur in ``text``."""
        if not self._index and not self._short:
            return []
        return [form for form in self._candidates(_utf8(text)) if form in text]

    def redact(self, text: str) -> str:
        """``text`` with each stretch covered by a secret's forms replaced by ``<redacted>``."""
        present = self.found(text)
        if not present:
            return text
        pieces, at = [], 0
        for start, end in _merged(_occurrences(text, present)):
            pieces += [text[at:start], REDACTED]
            at = end
        pieces.append(text[at:])
        return "".join(pieces)

    def spans(self, data: bytes) -> list[tuple[int, int]]:
        """Where forms occur in ``data`` (UTF-8): sorted stretches, overlapping ones merged."""
        if not self._index and not self._short:
            return []
        present = [form for form in map(_utf8, self._candidates(data)) if form in data]
        return _merged(_occurrences(data, present))


SECRETS = Secrets()  # this process's
