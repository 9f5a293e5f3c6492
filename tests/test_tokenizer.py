"""cliplab's tokenizer against OpenAI's reference ``SimpleTokenizer`` (loaded by path from clip-anytorch)."""

from __future__ import annotations

import pickle
import random
import sys

import ftfy
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import load_reference

from cliplab import tokenizer as tk

CONTEXT = tk.DEFAULT_CONTEXT_LENGTH


@pytest.fixture(scope="module")
def reference_module():
    """OpenAI's simple_tokenizer.py, loaded by path (importing the clip package needs torchvision)."""
    return load_reference("simple_tokenizer")


@pytest.fixture(scope="module")
def reference(reference_module):
    return reference_module.SimpleTokenizer()


def reference_tokenize(ref, texts: list[str], context_length: int, truncate: bool) -> torch.Tensor:
    """OpenAI's clip.tokenize logic around the reference encoder."""
    sot, eot = ref.encoder["<|startoftext|>"], ref.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = [sot, *ref.encode(text), eot]
        if len(tokens) > context_length:
            if not truncate:
                raise RuntimeError(f"Input {text} is too long for context length {context_length}")
            tokens = tokens[:context_length]
            tokens[-1] = eot
        result[i, : len(tokens)] = torch.tensor(tokens)
    return result


# Fragments covering every path of the cleaner: plain ASCII, accents (composed and decomposed),
# CJK, emoji, HTML entities (single, double, triple escaped, no semicolon, numeric, C1 numeric),
# mojibake, digits and punctuation runs, whitespace and control oddities, curly quotes, ligatures,
# full width forms, special-token look-alikes and case-mapping surprises.
WORDS = (
    "a photo of the dog cat red blue car tree sitting on grass near with in at by two three small large "
    "man woman child playing ball beach sunset mountain river city street night view close-up portrait "
    "painting drawing diagram black white colourful old new happy people group table food plate"
).split()
FRAGMENTS = [
    "café", "naïve", "crème brûlée", "São Paulo", "Ångström", "Zürich", "façade", "jalapeño",
    "cafe\u0301", "A\u030a", "東京の夜景", "猫が好き", "한국어 문장", "ひらがなカタカナ", "中文，标点。",
    "🍰", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "❤️", "😀😀😀", "&amp;", "&lt;b&gt;bold&lt;/b&gt;", "&amp;lt;",
    "&amp;amp;lt;", "&quot;hi&quot;", "&#39;", "&#x27;", "&nbsp;", "&eacute;", "&EACUTE;", "&hellip;",
    "&copy", "&#128512;", "&#150;", "&#x1c;", "&#133;", "salt & pepper", "AT&T", "<b>tag</b> &amp;",
    "Ã©", "cafÃ©", "â€œquotedâ€\x9d", "itâ€™s", "Ã  la mode", "Ã¼ber", "Ã‰cole", "Ã\xa0 la", "Ã",
    "1234567890123456789", "3.14159", "$1,000.00", "(555) 123-4567", "!!!???", "...", "---", "''\"\"",
    "\t", "\n", "\r\n", "\r", "   ", "\u00a0", "\u3000", "\u2028", "\x0b", "\x0c", "\x1c", "\x85",
    "“hi”", "‘s", "it’s", "don't", "I'M", "WE'LL", "they've", "'d", "ﬁsh", "ＬＯＵＤ", "ｶﾀｶﾅ",
    "\x00", "\x07", "\x1b[31mred\x1b[0m", "\x7f", "\ufeff", "\u200b", "\u202e", "\ud800", "\udc00x",
    "<|startoftext|>", "<|endoftext|>", "<|ENDOFTEXT|>", "!!<|endoftext|>", "</w>", "İstanbul", "ǅ",
    "ß", "ΣΑΣ ΟΔΟΣ", "\u212a", "ﬀ", "Ω", "Ⅻ", "①②", "٣٤", "½", "x²", "🄰", "\U0001d4d0",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", "", ", ", "\n", "  ", "\t", "-"]


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """n deterministic strings: 40% plain captions, 60% mixing in the odd fragments above."""
    rng = random.Random(seed)
    texts = []
    for i in range(n):
        pieces = [rng.choice(WORDS) for _ in range(rng.randint(1, 12))]
        if i % 5 >= 2:
            for _ in range(rng.randint(1, 4)):
                pieces.insert(rng.randint(0, len(pieces)), rng.choice(FRAGMENTS))
        if i % 7 == 0:
            pieces[0] = pieces[0].upper()
        text = "".join(p + rng.choice(SEPARATORS) for p in pieces)
        texts.append(text if i % 3 else text.strip())
    return texts


def make_long(n: int, seed: int = 1) -> list[str]:
    """Strings of 60-200 words, most beyond 77 tokens."""
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS + FRAGMENTS[:40]) for _ in range(rng.randint(60, 200))) for _ in range(n)
    ]


def test_corpus_ids_match_reference(reference):
    corpus = make_corpus(10_000)
    # Every cleaning path must be well represented: plain ASCII, ftfy skipped, ftfy run.
    plain = sum(bool(tk._plain_ascii(t)) for t in corpus)
    skipped = sum(not tk._plain_ascii(t) and tk._ftfy_is_identity(t) for t in corpus)
    assert min(plain, skipped, len(corpus) - plain - skipped) > 300
    ours = tk.Tokenizer()
    mismatches = [(i, t) for i, t in enumerate(corpus) if ours.encode(t) != reference.encode(t)]
    assert not mismatches, f"{len(mismatches)} mismatches, first: {mismatches[:3]!r}"


def test_exact_without_shortcuts(reference, monkeypatch):
    """The plain path (ftfy on every text) is what the shortcuts must reproduce; check it too."""
    monkeypatch.setattr(tk, "_plain_ascii", tk._never)
    monkeypatch.setattr(tk, "_ftfy_shortcut", lambda: None)
    corpus = make_corpus(1_000, seed=21)
    ours = tk.Tokenizer()
    assert [ours.encode(t) for t in corpus] == [reference.encode(t) for t in corpus]


def test_clean_text_matches_reference_cleaning(reference_module):
    ref = reference_module
    for text in make_corpus(2_000, seed=9):
        assert tk.clean_text(text) == ref.whitespace_clean(ref.basic_clean(text)).lower(), repr(text)


def test_tokenize_tensor_matches_reference(reference):
    texts = make_corpus(1_500, seed=7) + make_long(150)
    expected = reference_tokenize(reference, texts, CONTEXT, truncate=True)
    got = tk.Tokenizer()(texts, truncate=True)
    assert got.dtype == torch.long and got.shape == (len(texts), CONTEXT)
    assert torch.equal(got, expected)
    assert torch.equal(tk.tokenize(texts, truncate=True), expected)


@pytest.mark.parametrize("context_length", [1, 2, 5, 16, 32])
def test_short_context_matches_reference(reference, context_length):
    texts = make_corpus(300, seed=context_length) + make_long(20)
    expected = reference_tokenize(reference, texts, context_length, truncate=True)
    assert torch.equal(tk.tokenize(texts, context_length=context_length, truncate=True), expected)


def test_truncate_false_raises_where_reference_raises(reference):
    texts = make_long(60, seed=3) + make_corpus(200, seed=4)
    for text in texts:
        try:
            reference_tokenize(reference, [text], CONTEXT, truncate=False)
            reference_raised = False
        except RuntimeError:
            reference_raised = True
        if reference_raised:
            with pytest.raises(tk.TextTooLongError):
                tk.tokenize(text)
        else:
            assert torch.equal(tk.tokenize(text), reference_tokenize(reference, [text], CONTEXT, False))
    assert any(len(reference.encode(t)) + 2 > CONTEXT for t in texts)


def test_too_long_error_names_text_and_remedy():
    long_text = "a photo of a dog " * 40
    with pytest.raises(tk.TextTooLongError) as info:
        tk.tokenize(["short caption", long_text])
    message = str(info.value)
    assert "text 1" in message and "truncate=True" in message and "a photo of a dog" in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)
    exact = "a " * (CONTEXT - 2)  # exactly fills the context with start and end tokens
    assert tk.tokenize(exact)[0, -1].item() == tk.EOT_TOKEN


def test_specials_padding_and_constants():
    ids = tk.tokenize(["a photo of a cat", ""])
    assert ids[0, 0] == tk.SOT_TOKEN and ids[1, :2].tolist() == [tk.SOT_TOKEN, tk.EOT_TOKEN]
    assert ids[1, 2:].eq(0).all()
    assert tk.VOCAB_SIZE == len(tk.vocabulary(tk.read_merges())) == 49408
    assert tk.get_tokenizer() is tk.get_tokenizer()


def test_bad_inputs_are_reported():
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tk.tokenize(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="context_length"):
        tk.tokenize("ok", context_length=0)
    with pytest.raises(ValueError, match="49408"):
        tk.get_tokenizer().decode([5, 49408])


def test_decode_round_trip_and_reference_rendering(reference):
    tok = tk.Tokenizer()
    for text in ["a photo of a dog", "two cats on a red sofa", "hello world"]:
        assert tok.decode(tok.encode(text)).strip() == text
        row = tok(text)[0]
        assert tok.decode(row) == reference.decode([i for i in row.tolist() if i])
    rng = random.Random(5)
    for _ in range(200):
        ids = [rng.randrange(tk.VOCAB_SIZE) for _ in range(rng.randint(1, 20))]
        ids = ids if ids[-1] else [*ids, 1]  # trailing zeros are padding by contract
        assert tok.decode(ids) == reference.decode(ids)


def test_pickle_ships_no_state():
    tok = tk.Tokenizer()
    before = tok(["a photo of a dog", "café"])
    blob = pickle.dumps(tok)
    assert len(blob) < 1_000
    assert torch.equal(pickle.loads(blob)(["a photo of a dog", "café"]), before)


def test_caches_are_bounded(monkeypatch):
    monkeypatch.setattr(tk, "_CACHE_LIMIT", 10)
    monkeypatch.setattr(tk, "_CLEANED_CACHE_LIMIT", 3)
    tok = tk.Tokenizer()
    texts = [" ".join(WORDS), *FRAGMENTS[:20]]
    first = [tok.encode(t) for t in texts]
    state = tok._built()
    assert len(state.pieces) <= 10 and len(state.words) <= 10 and len(state.cleaned) <= 3
    assert [tok.encode(t) for t in texts] == first


def plain_ids(state, text: str, max_pieces: int | None = None) -> list[int]:
    """The row without any shortcut: clean_text, every word of the whole text through BPE, no cache."""
    words = tk._CLIP_SPLIT.findall(tk.clean_text(text))
    ids = [i for w in words for i in tk._SPECIAL_WORDS.get(w) or state.word_ids(w)]
    return [tk.SOT_TOKEN, *ids, tk.EOT_TOKEN]


def truncated(row: list[int], context_length: int) -> list[int]:
    return row if len(row) <= context_length else [*row[: context_length - 1], tk.EOT_TOKEN]


def test_cached_paths_equal_the_plain_path():
    """Cold (empty caches), warm (every cache filled) and cut rows all equal the uncached path."""
    corpus = make_corpus(600, seed=31) + make_long(40, seed=32) + ["", " ", "\n\t", "!", "a"]
    tok = tk.Tokenizer()
    state = tok._built()
    expected = [plain_ids(state, t) for t in corpus]
    for _ in ("cold", "warm"):
        assert [state.row(t) for t in corpus] == expected
    assert state.cleaned and all(tk.clean_text(t) == c for t, c in state.cleaned.items())
    assert not any(tk._plain_ascii(t) for t in state.cleaned)  # only texts that needed the slow clean
    for context_length in (1, 2, 3, 10, 77):
        fresh = tk.Tokenizer()._built()
        cut = [truncated(fresh.row(t, context_length - 1), context_length) for t in corpus]
        assert cut == [truncated(row, context_length) for row in expected]


def test_word_cache_equals_bpe_per_piece():
    state = tk.Tokenizer()._built()
    pieces = {p for t in make_corpus(1_000, seed=33) for p in tk.clean_text(t).split(" ")}
    for piece in sorted(pieces):  # sorted: words are met first in many different pieces
        words = tk.split_words(piece)
        expected = [i for w in words for i in tk._SPECIAL_WORDS.get(w) or state.word_ids(w)]
        assert list(state.piece_ids(piece)) == expected, repr(piece)


@settings(max_examples=300, deadline=None)
@given(
    text=st.lists(st.sampled_from([*"aZ9 -.!'\t\n\x0c\x0b<|>&;", "endoftext", "dog"]), max_size=80).map(
        "".join
    )
)
def test_plain_ascii_pieces_and_cut(text):
    """text.lower().split() are clean_text's pieces; cutting to max_pieces keeps every kept id."""
    if tk._plain_ascii(text):
        cleaned = tk.clean_text(text)
        assert text.lower().split() == ([] if cleaned == "" else cleaned.split(" "))
    state = tk.get_tokenizer()._built()
    full = state.row(text)
    for context_length in (1, 2, 4, 8):
        assert truncated(state.row(text, context_length - 1), context_length) == truncated(
            full, context_length
        )


def test_ftfy_shortcut_is_exact_on_single_characters():
    if tk._ftfy_shortcut() is None:
        pytest.skip(f"shortcut disabled for ftfy {ftfy.__version__}")
    # Every BMP character and a stride through the astral planes, alone and inside words.
    points = [*range(0x10000), *range(0x10000, 0x110000, 97)]
    claimed = [chr(c) for c in points if tk._ftfy_is_identity(chr(c))]
    assert len(claimed) > 50_000
    wrong = [c for c in claimed if ftfy.fix_text(c) != c]
    wrong += [
        c
        for c in claimed[::13]
        if tk._ftfy_is_identity(f"ab{c}cd") and ftfy.fix_text(f"ab{c}cd") != f"ab{c}cd"
    ]
    assert not wrong, f"fix_text changes {wrong[:5]!r} although the shortcut skips it"


MOJIBAKE = ["Ã©", "cafÃ©", "â€œ", "itâ€™s", "Ã  la", "Ã¼ber", "Ãƒ", "Â£5", "Ã\xa0", "Ã ", "ÃƒÂ©", "вЂ", "√±"]


def test_windowed_mojibake_test_equals_is_bad():
    from ftfy.badness import is_bad

    if tk._ftfy_shortcut() is None:
        pytest.skip(f"shortcut disabled for ftfy {ftfy.__version__}")
    windowed = tk._ftfy_shortcut()[2]
    if windowed is is_bad:
        pytest.skip("this ftfy's BADNESS_RE is not window-safe; cliplab calls is_bad itself")
    rng = random.Random(13)
    pool = MOJIBAKE + FRAGMENTS + WORDS + ["é", "à", "Ø", "°", "²", "×", "Œ", "│", "ГўВЂВ", " ", "\n"]
    for _ in range(5_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 8)))
        assert windowed(text) == is_bad(text), repr(text)
    for text in MOJIBAKE:
        assert windowed(text) and windowed(f"long enough prefix {text} and a suffix")


def test_split_only_spaces_is_where_str_split_and_regex_differ():
    import regex

    pattern = tk._split_only_spaces()
    for c in map(chr, range(0x3100)):  # every whitespace character of either kind lies below U+3100
        assert bool(pattern.fullmatch(c)) == (c.isspace() != bool(regex.fullmatch(r"\s", c))), repr(c)
    assert pattern.fullmatch("\x1c")


def test_ascii_split_equals_regex_split():
    printable = [chr(c) for c in range(128)]
    rng = random.Random(11)
    for _ in range(3_000):
        text = "".join(
            rng.choice(printable + ["'s", "'ll", "<|endoftext|>", " "]) for _ in range(rng.randint(0, 30))
        )
        assert tk._ASCII_SPLIT.findall(text) == tk._CLIP_SPLIT.findall(text), repr(text)


# Arbitrary unicode, with the characters and entities the cleaner treats specially made likely.
odd_text = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(
            list("&;#<>'\r\n\t \x85\u2028\xa0\u201c\u2019ﬁＡ\x1b\x9dÃ©â€") + ["&amp;", "&lt;", "&#39;"]
        ),
    ),
    max_size=30,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=odd_text)
def test_arbitrary_unicode_matches_reference(reference, text):
    assert tk.get_tokenizer().encode(text) == reference.encode(text)


@settings(max_examples=300, deadline=None)
@given(text=odd_text)
def test_ftfy_shortcut_never_skips_a_change(text):
    from ftfy.badness import is_bad

    if tk._ftfy_is_identity(text):
        assert ftfy.fix_text(text) == text
    if tk._ftfy_shortcut() is not None:
        assert tk._ftfy_shortcut()[2](text) == is_bad(text)


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.characters(max_codepoint=127), max_size=60))
def test_ascii_property_split(text):
    assert tk.split_words(tk.clean_text(text)) == tk._CLIP_SPLIT.findall(tk.clean_text(text))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
