"""CLIP's byte-level BPE tokenizer, id for id the same as OpenAI's ``clip.tokenize``, but faster.

The text goes through the same steps as OpenAI's ``SimpleTokenizer``: ``ftfy.fix_text``, two rounds of
``html.unescape``, whitespace collapsed to single spaces and stripped, lower-casing, CLIP's regex split
into words, then byte-level BPE over the 49,408-token vocabulary built from the merges file shipped
beside this module (``bpe_simple_vocab_16e6.txt.gz``, MIT licence in ``LICENSES/``).

Where the speed comes from, each step keeping the reference's output exactly:

* ``ftfy.fix_text``, the largest cost of the reference, is skipped when none of its fixes can change
  the text (``_ftfy_is_identity`` spells out why); that is most captions.
* Ids are cached per space-separated piece of cleaned text, so a warm text costs a split and a few
  dict look-ups; a miss runs CLIP's regex and looks each word up in a word cache, and only a new word
  goes through the compiled BPE of the ``tokenizers`` library. Text that needed the slow cleaning
  (ftfy) is cached cleaned.
* With ``truncate=True`` only a text's first ``context_length - 1`` pieces are encoded.
* Rows are padded into the id tensor in one vectorised step.

Usage::

    from cliplab.tokenizer import tokenize
    ids = tokenize(["a photo of a cat", "a diagram"])  # LongTensor [2, 77]
"""

from __future__ import annotations

import gzip
import html
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ftfy
import numpy as np
import regex

from .errors import CliplabError

if TYPE_CHECKING:  # torch is imported only where a tensor is returned: the ONNX encoder runs without it
    import torch

SOT_TOKEN = 49406
EOT_TOKEN = 49407
VOCAB_SIZE = 49408
DEFAULT_CONTEXT_LENGTH = 77

MERGES_PATH = Path(__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
# CLIP uses the merges on lines 1..48894 of the file (line 0 is a version header): 256 byte tokens,
# 256 end-of-word byte tokens, 48,894 merges and 2 special tokens make 49,408.
_NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2
_SPECIAL_WORDS = {"<|startoftext|>": (SOT_TOKEN,), "<|endoftext|>": (EOT_TOKEN,)}
# A bound on the piece cache so that a stream of unique junk cannot grow memory forever.
_CACHE_LIMIT = 1 << 20
_CLEANED_CACHE_LIMIT = 1 << 16

# OpenAI's split pattern, the same in behaviour: special tokens, English contractions, letter runs,
# single digits, and runs of anything else that is not whitespace. No alternative matches whitespace.
_CLIP_SPLIT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
_WHITESPACE_RUN = regex.compile(r"\s+")
# Printable ASCII but "&", with tab, LF and FF: ftfy and html.unescape return such text unchanged
# (see _ftfy_is_identity), and str.split() splits it at exactly the characters regex's \s matches.
_PLAIN_ASCII = re.compile(r"[\t\n\x0c\x20-\x25\x27-\x7e]*")


class TextTooLongError(CliplabError, RuntimeError, ValueError):
    """A text needs more tokens than the context length and truncation was not asked for.

    It is a ``RuntimeError`` like OpenAI's and a ``ValueError`` because the input is at fault.
    """


# ---------------------------------------------------------------------------------------------------
# Cleaning: OpenAI's normalisation, with ftfy skipped where it provably changes nothing.


@lru_cache(maxsize=1)
def _ftfy_checked() -> bool:
    """Whether the installed ftfy is the 6.x whose ``fix_and_explain`` the shortcuts were checked on.

    Another version makes ``clean_text`` call ``ftfy.fix_text`` on every text: slower, still exact.
    """
    expected = {
        "unescape_html", "remove_terminal_escapes", "fix_encoding", "restore_byte_a0",
        "replace_lossy_sequences", "decode_inconsistent_utf8", "fix_c1_controls", "fix_latin_ligatures",
        "fix_character_width", "uncurl_quotes", "fix_line_breaks", "fix_surrogates",
        "remove_control_chars", "normalization", "max_decode_length", "explain",
    }  # fmt: skip
    fields = getattr(getattr(ftfy, "TextFixerConfig", None), "_fields", ())
    return ftfy.__version__.startswith("6.") and set(fields) == expected


@lru_cache(maxsize=1)
def _ftfy_shortcut() -> tuple[re.Pattern[str], re.Pattern[str], Callable[[str], bool]] | None:
    """What ``_ftfy_is_identity`` needs from ftfy, or None where the ftfy version was not checked.

    Returns (characters some fixer rewrites, ftfy's HTML entity pattern, ftfy's mojibake test).
    """
    if not _ftfy_checked():
        return None
    from ftfy import chardata

    # Each remaining fixer is a per-character translate table or a single-character regex class, so
    # "the text holds none of these characters" means "the fixer returns it unchanged".
    # \r, U+2028/9 and U+0085: fix_line_breaks. Surrogates: fix_surrogates. ESC is a control char.
    rewritten = set(chardata.LIGATURES) | set(chardata.WIDTH_MAP) | set(chardata.CONTROL_CHARS)
    rewritten |= {ord(c) for c in "\r\u2028\u2029\u0085"}
    chars = "".join(re.escape(chr(c)) for c in sorted(rewritten))
    classes = [f"[{chars}\ud800-\udfff]", chardata.C1_CONTROL_RE.pattern]
    classes += [chardata.SINGLE_QUOTE_RE.pattern, chardata.DOUBLE_QUOTE_RE.pattern]
    return re.compile("|".join(classes)), chardata.HTML_ENTITY_RE, _mojibake_test()


def _ftfy_is_identity(text: str) -> bool:
    """True only where ``ftfy.fix_text(text) == text`` is certain, so the call can be skipped.

    ``fix_text`` cuts the text at newlines and runs ``fix_and_explain`` on each piece, which applies
    its fixers until nothing changes; if the first round changes nothing, the text comes back as is.
    In that round: ``unescape_html`` needs an entity match, ``fix_encoding`` returns ASCII or text
    that ``is_bad`` finds no mojibake in untouched, NFC normalisation leaves normalised text alone,
    and every other fixer needs one of the rewritten characters. Non-ASCII text must also be one
    piece (no newline) so that ``is_bad`` and NFC see exactly what ftfy would show them.
    """
    shortcut = _ftfy_shortcut()
    if shortcut is None or len(text) >= 1_000_000:  # ftfy's default max_decode_length
        return False
    rewritten, html_entity, is_bad = shortcut
    if rewritten.search(text) or html_entity.search(text):
        return False
    if text.isascii():
        return True
    return "\n" not in text and unicodedata.is_normalized("NFC", text) and not is_bad(text)


def _mojibake_test() -> Callable[[str], bool]:
    """ftfy's ``is_bad``, answered by searching only near the characters every match needs.

    ``BADNESS_RE`` (ftfy's mojibake detector) is an alternation of short sequences, each of which
    needs one of about 300 Latin-1, box-drawing and symbol characters ("triggers"), and no match is
    longer than ``width`` characters. So a match exists only within ``width`` characters of a
    trigger: text without triggers (CJK, emoji, most accents outside Latin-1) skips the search
    entirely, other text searches a few short windows. All three facts are read off the parsed
    pattern; where one cannot be established this returns ``is_bad`` itself.
    """
    from ftfy.badness import BADNESS_RE, is_bad

    try:
        from re import _constants as sre  # type: ignore[attr-defined]
        from re import _parser  # type: ignore[attr-defined]
    except ImportError:  # Python 3.10
        import sre_constants as sre
        import sre_parse as _parser
    if BADNESS_RE.flags & (re.IGNORECASE | re.MULTILINE):
        return is_bad
    tree = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    width = tree.getwidth()[1]
    needed = _needed_chars(tree, sre)
    if needed is None or width > 64 or not _window_safe(tree, sre):
        return is_bad
    triggers = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(needed)) + "]")
    search = BADNESS_RE.search

    def windowed_is_bad(text: str) -> bool:
        start = end = 0
        for match in triggers.finditer(text):
            lo, hi = max(match.start() - width + 1, 0), match.start() + width
            if lo > end:  # a new window; search the finished one
                if end > start and search(text, start, end):
                    return True
                start = lo
            end = hi
        return end > start and search(text, start, end) is not None

    return windowed_is_bad


def _needed_chars(node: Any, sre: Any) -> set[int] | None:
    """Code points one of which every match of a parsed pattern node must contain, or None."""
    if not isinstance(node, tuple):  # a sequence: any one element's set will do; take the best
        sets = [s for s in (_needed_chars(item, sre) for item in node) if s is not None]
        return min(sets, key=lambda s: (min(s, default=0) < 128, len(s)), default=None)
    op, arg = node
    if op is sre.LITERAL:
        return {arg}
    if op is sre.IN:
        chars: set[int] = set()
        for item_op, item in arg:
            if item_op is sre.LITERAL:
                chars.add(item)
            elif item_op is sre.RANGE:
                chars.update(range(item[0], item[1] + 1))
            else:  # a negation or a category such as \s: not a closed set
                return None
        return chars
    if op is sre.BRANCH:
        alternatives = [_needed_chars(alt, sre) for alt in arg[1]]
        return None if None in alternatives else set().union(*alternatives)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and arg[0] >= 1:
        return _needed_chars(arg[2], sre)
    if op is sre.SUBPATTERN:
        return _needed_chars(arg[-1], sre)
    return None


def _window_safe(node: Any, sre: Any) -> bool:
    """Whether a match depends only on the characters it spans, so searching a window finds it.

    ``^`` is allowed: ``search(text, pos)`` matches it only at the real start of the text.
    Lookarounds, word boundaries and other anchors look outside the match, so they are refused.
    """
    for op, arg in node:
        if op is sre.AT:
            if arg not in (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING):
                return False
        elif op is sre.BRANCH:
            if not all(_window_safe(alt, sre) for alt in arg[1]):
                return False
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
            if not _window_safe(arg[2], sre):
                return False
        elif op is sre.SUBPATTERN:
            if not _window_safe(arg[-1], sre):
                return False
        elif op not in (sre.LITERAL, sre.NOT_LITERAL, sre.IN, sre.ANY):
            return False
    return True


@lru_cache(maxsize=1)
def _split_only_spaces() -> re.Pattern[str]:
    """Characters that ``str.split()`` and ``regex``'s \\s disagree on (\\x1c-\\x1f for Unicode 15).

    Where a text holds none, ``" ".join(text.split())`` equals OpenAI's ``whitespace_clean``. The
    stdlib ``re``'s \\s is ``str.isspace``; both are run over every code point (~50 ms, once).
    """
    code_points = np.arange(0x110000, dtype="<u4")
    code_points = code_points[(code_points < 0xD800) | (code_points > 0xDFFF)]  # no surrogates
    every = code_points.tobytes().decode("utf-32-le")
    differ = set(re.findall(r"\s", every)) ^ set(regex.findall(r"\s", every))
    return re.compile("[" + "".join(re.escape(c) for c in sorted(differ)) + "]")


def _never(text: str) -> None:
    return None


# Most captions: plain ASCII, where cleaning is only whitespace collapsing and lower-casing.
_plain_ascii = _PLAIN_ASCII.fullmatch if _ftfy_checked() else _never


def clean_text(text: str) -> str:
    """Normalise text exactly as OpenAI's tokenizer does before splitting it into words.

    ftfy's fixes, two rounds of HTML unescaping, whitespace runs collapsed to one space, stripped,
    lower-cased. The result has no whitespace but single spaces between non-space runs.
    """
    if _plain_ascii(text):
        return " ".join(text.split()).lower()
    if not _ftfy_is_identity(text):
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    if _split_only_spaces().search(text):
        text = _WHITESPACE_RUN.sub(" ", text).strip()
    else:
        text = " ".join(text.split())
    return text.lower()


# ---------------------------------------------------------------------------------------------------
# Splitting and the vocabulary.


def _ascii_split_pattern() -> re.Pattern[str]:
    """CLIP's split pattern for ASCII-only text in the stdlib ``re``, about 3x faster than ``regex``.

    The classes are ``regex``'s own answers on the 128 ASCII characters, so on ASCII input the two
    patterns are the same automaton; alternation order and greediness are unchanged.
    """

    def members(pattern: str) -> str:
        compiled = regex.compile(pattern, regex.IGNORECASE)
        return "".join(re.escape(chr(c)) for c in range(128) if compiled.fullmatch(chr(c)))

    letters, digits, spaces = members(r"[\p{L}]"), members(r"[\p{N}]"), members(r"\s")
    return re.compile(
        r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
        rf"|[{letters}]+|[{digits}]|[^{spaces}{letters}{digits}]+",
        re.IGNORECASE,
    )


_ASCII_SPLIT = _ascii_split_pattern()


def split_words(cleaned: str) -> list[str]:
    """Split cleaned text into the words that BPE encodes one at a time (CLIP's regex)."""
    if cleaned.isascii():
        return _ASCII_SPLIT.findall(cleaned)
    return _CLIP_SPLIT.findall(cleaned)


def _byte_table() -> tuple[list[int], dict[int, str]]:
    """CLIP's byte order and the printable character that stands for each byte in BPE symbols.

    Bytes that are visible, non-space Latin-1 characters stand for themselves and come first in the
    vocabulary; the other 68 (controls, space, NBSP, soft hyphen) follow, moved to U+0100 onwards so
    that every BPE symbol is printable.
    """
    visible = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    moved = [b for b in range(256) if b not in set(visible)]
    to_char = {b: chr(b) for b in visible}
    to_char.update({b: chr(0x100 + i) for i, b in enumerate(moved)})
    return visible + moved, to_char


_BYTE_ORDER, _BYTE_TO_CHAR = _byte_table()
# str.translate tables between BPE chars and "bytes as code points 0..255" (Latin-1 decoded bytes).
_BPE_TO_BYTES = {ord(c): b for b, c in _BYTE_TO_CHAR.items()}


def read_merges(path: str | Path = MERGES_PATH) -> list[tuple[str, str]]:
    """The BPE merges CLIP uses from a gzipped merges file, best (earliest learned) first."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    for number, merge in enumerate(merges, start=2):
        if len(merge) != 2:
            raise ValueError(
                f"{path}: line {number} is {merge!r}, expected two symbols; is this CLIP's merges file?"
            )
    if len(merges) != _NUM_MERGES:
        raise ValueError(
            f"{path}: has {len(merges)} merges, CLIP needs {_NUM_MERGES}; is the file truncated?"
        )
    return merges  # type: ignore[return-value]


def vocabulary(merges: Sequence[tuple[str, str]]) -> list[str]:
    """Token strings by id: bytes, bytes ending a word, one token per merge, then the two specials."""
    byte_chars = [_BYTE_TO_CHAR[b] for b in _BYTE_ORDER]
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + [a + b for a, b in merges]
    return tokens + list(_SPECIAL_WORDS)


class _State:
    """What a Tokenizer builds from the merges file (~0.2 s); rebuilt lazily, never pickled.

    Three caches, each bounded by clearing it when full:

    * ``pieces`` maps a space-free piece of cleaned text to its ids. No word of CLIP's split pattern
      contains whitespace, and cleaned text has only single spaces, so splitting at spaces first and
      then running the pattern on each piece finds the same words as running it on the whole text.
    * ``words`` maps a word of the pattern to its BPE ids. Pieces repeat less than the words in them
      ("1964-08-19", "sunset," and "sunset." share words), and BPE is most of a piece's cost.
    * ``cleaned`` maps a text that is not plain ASCII to its cleaned form: cleaning such text
      (ftfy above all) costs more than the rest of its tokenization.
    """

    def __init__(self, merges_path: Path) -> None:
        from tokenizers import models

        merges = read_merges(merges_path)
        self.tokens = vocabulary(merges)
        ids = {token: i for i, token in enumerate(self.tokens)}
        if len(ids) != VOCAB_SIZE:
            raise ValueError(f"{merges_path}: gives {len(ids)} distinct tokens, CLIP has {VOCAB_SIZE}")
        self.bpe = models.BPE(ids, list(merges), end_of_word_suffix="</w>")
        self.pieces: dict[str, tuple[int, ...]] = {}
        self.words: dict[str, tuple[int, ...]] = dict(_SPECIAL_WORDS)
        self.cleaned: dict[str, str] = {}

    def word_ids(self, word: str) -> tuple[int, ...]:
        """BPE ids of one word of CLIP's pattern (not a special token), through the compiled BPE."""
        return tuple(token.id for token in self.bpe.tokenize(_bpe_symbols(word)))

    def piece_ids(self, piece: str) -> tuple[int, ...]:
        """Ids of one space-free piece of cleaned text (a cache miss)."""
        words = self.words
        if len(words) >= _CACHE_LIMIT:
            words.clear()
            words.update(_SPECIAL_WORDS)
        ids: list[int] = []
        for word in split_words(piece):
            word_ids = words.get(word)
            if word_ids is None:
                words[word] = word_ids = self.word_ids(word)
            ids += word_ids
        if len(self.pieces) >= _CACHE_LIMIT:
            self.pieces.clear()
        self.pieces[piece] = result = tuple(ids)
        return result

    def clean(self, text: str) -> str:
        """``clean_text`` of a text that is not plain ASCII, cached."""
        cleaned = self.cleaned.get(text)
        if cleaned is None:
            cleaned = clean_text(text)
            if len(self.cleaned) >= _CLEANED_CACHE_LIMIT:
                self.cleaned.clear()
            self.cleaned[text] = cleaned
        return cleaned

    def row(self, text: str, max_pieces: int | None = None) -> list[int]:
        """The start token, the BPE ids of text, the end token.

        With ``max_pieces``, only the text's first ``max_pieces`` pieces are encoded. Every piece
        but the one of an empty text gives at least one id (CLIP's pattern matches every non-space
        character), so a row cut to ``max_pieces + 1`` tokens is the same either way.
        """
        # clean_text's first branch: most captions. text.lower().split() is the same list of pieces
        # as " ".join(text.split()).lower().split(" ") but for an empty text ([] for [""]: no ids).
        pieces = text.lower().split() if _plain_ascii(text) else self.clean(text).split(" ")
        if max_pieces is not None and len(pieces) > max_pieces:
            del pieces[max_pieces:]
        parts = list(map(self.pieces.get, pieces))
        if None in parts:
            parts = [
                self.piece_ids(piece) if part is None else part
                for piece, part in zip(pieces, parts, strict=True)
            ]
        row = [SOT_TOKEN]
        row.extend(chain.from_iterable(parts))  # type: ignore[arg-type]
        row.append(EOT_TOKEN)
        return row


def _bpe_symbols(word: str) -> str:
    """The word's UTF-8 bytes, each written as its printable BPE character."""
    return word.encode("utf-8").decode("latin-1").translate(_BYTE_TO_CHAR)


class Tokenizer:
    """CLIP's tokenizer: ``encode``/``decode`` one text, or call it on texts for a padded id tensor.

    Cheap to create and to pickle (DataLoader workers): the vocabulary, BPE model and word cache are
    built on first use and not carried by pickling.
    """

    def __init__(self, merges_path: str | Path | None = None) -> None:
        # None means the merges file packaged with cliplab, wherever the unpickling process has it.
        self.merges_path = None if merges_path is None else Path(merges_path)
        self._state: _State | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"merges_path": self.merges_path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["merges_path"])

    def _built(self) -> _State:
        state = self._state
        if state is None:
            with self._lock:
                if self._state is None:
                    self._state = _State(self.merges_path or MERGES_PATH)
                state = self._state
        return state

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, without the start and end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"text is a {type(text).__name__}, expected str")
        return self._built().row(text)[1:-1]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of ids, rendered like OpenAI's decode: ``</w>`` becomes a space, specials appear as
        ``<|startoftext|>``/``<|endoftext|>``, bad UTF-8 as U+FFFD. Trailing zeros (the padding of
        ``tokenize`` rows) are dropped; id 0 ("!") is never the last id of an encoded text.
        """
        if hasattr(ids, "tolist"):  # a torch tensor or numpy array
            ids = ids.tolist()
        ids = list(ids)
        while ids and ids[-1] == 0:
            ids.pop()
        bad = [i for i in ids if not isinstance(i, (int, np.integer)) or not 0 <= i < VOCAB_SIZE]
        if bad:
            raise ValueError(f"cannot decode id {bad[0]!r}: ids must be ints in [0, {VOCAB_SIZE})")
        tokens = self._built().tokens
        symbols = "".join(tokens[i] for i in ids)
        raw = symbols.translate(_BPE_TO_BYTES).encode("latin-1")
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> torch.Tensor:
        """Token ids of each text as a LongTensor [N, context_length]: start token, BPE ids, end token,
        zero padding. A text that needs more than ``context_length`` tokens raises
        ``TextTooLongError``, or with ``truncate=True`` keeps its first ``context_length`` tokens with
        the last one replaced by the end token.
        """
        import torch

        return torch.from_numpy(self.to_numpy(texts, context_length, truncate))

    def to_numpy(
        self,
        texts: str | Sequence[str],
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        truncate: bool = False,
    ) -> np.ndarray:
        """The ids of :meth:`__call__` as an int64 numpy array, without importing torch."""
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            texts = list(texts)
        if context_length < 1:
            raise ValueError(f"context_length must be at least 1, got {context_length}")
        text_row = self._built().row
        # Truncating, the first context_length - 1 pieces give at least the ids that are kept.
        max_pieces = context_length - 1 if truncate else None
        rows = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
            ids = text_row(text, max_pieces)
            if len(ids) > context_length:
                if not truncate:
                    raise _too_long(i, text, len(ids), context_length)
                del ids[context_length:]
                ids[-1] = EOT_TOKEN
            rows.append(ids)
        return _pad(rows, context_length)


def _pad(rows: list[list[int]], context_length: int) -> np.ndarray:
    """Rows of at most context_length ids, zero-padded into an int64 array [len(rows), context_length]."""
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    out = np.zeros((len(rows), context_length), dtype=np.int64)
    # Row-major boolean mask assignment fills each row's first len(row) slots in order.
    out[np.arange(context_length) < lengths[:, None]] = np.fromiter(chain.from_iterable(rows), dtype=np.int64)
    return out


def _too_long(index: int, text: str, n_tokens: int, context_length: int) -> TextTooLongError:
    prefix = text if len(text) <= 60 else text[:60] + "..."
    return TextTooLongError(
        f"text {index} ({prefix!r}) needs {n_tokens} tokens with start and end tokens, more than "
        f"context_length={context_length}; pass truncate=True to keep its first {context_length} tokens"
    )


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def get_tokenizer() -> Tokenizer:
    """The process-wide Tokenizer, so all callers share one word cache."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Tokenizer()
    return _default


def tokenize(
    texts: str | Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH, truncate: bool = False
) -> torch.Tensor:
    """Token ids of text(s) as a LongTensor [N, context_length], the same ids as OpenAI's
    ``clip.tokenize``; see ``Tokenizer.__call__``.
    """
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)  # type: ignore[arg-type]
