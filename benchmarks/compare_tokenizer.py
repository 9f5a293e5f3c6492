"""cliplab's tokenizer against open_clip's, OpenAI's and transformers' CLIPTokenizerFast, side by side.

All four turn the same 10,000 varied captions into the same kind of [N, 77] LongTensor (start token,
BPE ids, end token, zero padding; texts too long are truncated to 76 tokens plus the end token), each
called the way a user calls it:

* cliplab: ``Tokenizer()(texts, truncate=True)`` (what ``cliplab.tokenize`` runs on its shared instance);
* open_clip: ``open_clip.get_tokenizer("ViT-B-32")(texts)``;
* OpenAI: ``clip.tokenize(texts, truncate=True)`` (clip-anytorch);
* transformers: ``CLIPTokenizerFast(texts, padding="max_length", max_length=77, truncation=True,
  return_tensors="pt")["input_ids"]``, built from cliplab's own vocab.json/merges.txt (the files
  ``cliplab.export`` writes for a Hugging Face export; padding with id 0 as the others do).

"Cold" is a fresh tokenizer instance (empty caches) on the 10k captions, a new instance every round;
building the instance (reading the vocabulary) is timed apart and reported as set-up. "Warm" is the
same captions again on an instance that has already seen them. Rounds alternate the implementations;
medians are reported, and ratios against the faster of open_clip, OpenAI and transformers.

Ids are checked before timing: cliplab must equal OpenAI and open_clip on every caption. transformers'
tokenizer normalises differently (no ftfy, no HTML unescaping), so the rows it gets right are counted
and the differing ones classified; it is timed on the same inputs anyway.

    python benchmarks/compare_tokenizer.py [--n 10000] [--rounds 5] [--out results/compare_tokenizer.json]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Report, alternate, time_once  # noqa: E402

from cliplab.tokenizer import Tokenizer  # noqa: E402

CONTEXT = 77

# ---------------------------------------------------------------------------------------------------
# Captions: web alt-text style, from two words to far past 77 tokens.

NOUNS = (
    "dog cat bird horse cow sheep elephant bear zebra giraffe man woman child boy girl baby family "
    "couple team crowd car truck bus train bicycle motorcycle boat airplane street road bridge building "
    "house church tower castle city town village beach sea ocean lake river waterfall mountain hill "
    "forest tree flower garden park field desert snow sky sunset sunrise cloud rain storm night kitchen "
    "bedroom bathroom office table chair sofa bed window door wall floor lamp computer laptop phone "
    "camera book guitar piano pizza burger sandwich salad cake coffee tea wine beer bottle cup plate "
    "bowl fruit apple banana orange shirt dress jacket hat shoes bag wedding party concert game match "
    "player stadium logo icon illustration vector pattern background texture poster map diagram chart "
    "portrait landscape painting drawing sketch sculpture statue museum market shop restaurant hotel "
    "pool gym school student teacher doctor nurse chef soldier police firefighter farmer artist"
).split()
ADJECTIVES = (
    "red blue green yellow black white brown grey pink purple orange golden silver old new young small "
    "large big tiny huge beautiful cute happy sad smiling angry modern vintage rustic abstract colorful "
    "bright dark sunny cloudy snowy wooden metal glass plastic stone wet dry empty crowded quiet busy "
    "famous traditional luxury cheap fresh delicious hot cold warm frozen isolated aerial close-up"
).split()
VERBS = (
    "sitting standing running walking playing eating drinking holding looking riding driving flying "
    "swimming jumping sleeping reading writing cooking dancing singing smiling posing waiting"
).split()
PLACES = (
    "in the park|on the beach|in a kitchen|on the street|at night|in the snow|near a lake|on a table|"
    "in front of a building|at sunset|in the city|on a white background|in the forest|at the stadium"
).split("|")
TEMPLATES = [
    "a photo of a {adj} {noun} {place}",
    "{adj} {noun} {verb} {place}",
    "a {noun} {verb} next to a {adj} {noun2}",
    "{Noun} {verb} with {num} {noun2}s {place}",
    "close-up of {adj} {noun} and {noun2}",
    "the {adj} {noun} of {Name}, {year}",
    "{Name} {verb} {place} during the {year} season",
    "stock image: {adj} {noun} isolated on white",
    "{num} {adj} {noun2}s {verb} {place}. {Adj} and {adj2}!",
    "vector illustration of a {adj} {noun} - {noun2} icon set",
    "{Adj} {noun} for sale - ${price} (free shipping) #{noun2}",
    "{noun2} {noun}, {num}x{num2} cm, {year}-{month:02d}-{day:02d}",
]
SHORT = ["{adj} {noun}", "{Noun}", "{noun} {noun2}", "IMG_{num4}.JPG", "{Name} {year}", "untitled", "image"]
NAMES = (
    "Paris London New York Tokyo Berlin Sydney Rome Madrid Chicago Toronto John Mary Alice Bob Emma".split()
)
NON_ASCII = [
    "café", "crème brûlée", "São Paulo", "Zürich", "Ångström", "jalapeño", "naïve", "Björk", "Kraków",
    "Málaga", "résumé", "Šibenik", "東京", "北京の夜", "서울의 밤", "猫が好き", "中文，标点。", "🍰", "❤️", "😂",
    "🌅", "👍🏽", "👨\u200d👩\u200d👧", "🇫🇷", "Москва", "Ελλάδα", "it’s", "“quoted”", "—", "…", "€25", "°C",
    "×2", "½ price", "ＢＩＧ ＳＡＬＥ", "ﬁsh", "\u00a0non-breaking",
]  # fmt: skip
# Text that ftfy or html.unescape changes: entities, and UTF-8 read as Windows-1252 (mojibake).
ENTITIES = [
    "salt &amp; pepper", "Tom &amp; Jerry", "&quot;best&quot;", "fish &amp; chips", "it&#39;s",
    "caf&eacute;", "&lt;b&gt;new&lt;/b&gt;", "50&nbsp;cm", "&amp;amp; more", "R&B", "AT&T", "black & white",
]  # fmt: skip
MOJIBAKE = ["cafÃ©", "itâ€™s", "Ã¼ber", "â€œquotedâ€\x9d", "SÃ£o Paulo", "naÃ¯ve", "Ã‰cole", "â€” new"]


def _unique_word(rng: random.Random) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return "".join(rng.choice(letters) for _ in range(rng.randint(4, 10)))


def _rare_token(rng: random.Random) -> str:
    """File names, handles, URLs, codes: the tokens that miss any word cache."""
    word = _unique_word(rng)
    return rng.choice(
        [
            f"IMG_{rng.randint(1000, 9999)}.jpg",
            f"@{word}",
            f"#{word}",
            word.capitalize(),
            f"{word}-{rng.randint(1, 99)}",
            f"https://www.{word}.com/images/{rng.randint(1, 10**6)}/{_unique_word(rng)}.jpg?w=800&h=600",
            f"www.{word}.co.uk",
            f"SKU {rng.randint(10**5, 10**7)}",
        ]
    )


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        adj=rng.choice(ADJECTIVES),
        adj2=rng.choice(ADJECTIVES),
        Adj=rng.choice(ADJECTIVES).capitalize(),
        noun=rng.choice(NOUNS),
        noun2=rng.choice(NOUNS),
        Noun=rng.choice(NOUNS).capitalize(),
        verb=rng.choice(VERBS),
        place=rng.choice(PLACES),
        num=rng.randint(2, 12),
        num2=rng.randint(10, 200),
        num4=rng.randint(1000, 9999),
        price=f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}",
        year=rng.randint(1950, 2024),
        month=rng.randint(1, 12),
        day=rng.randint(1, 28),
        Name=rng.choice(NAMES),
    )


def make_captions(n: int, seed: int = 0) -> list[str]:
    """n captions: ~12% of 1-3 words, ~8% long descriptions (most past 77 tokens), the rest one or two
    template sentences; ~12% with non-ASCII text, ~5% with HTML entities or ``&``, ~3% mojibake, ~15%
    with a unique token (URL, file name, handle), ~4% exact repeats of an earlier caption."""
    rng = random.Random(seed)
    captions: list[str] = []
    for _ in range(n):
        r = rng.random()
        if captions and r < 0.04:
            captions.append(rng.choice(captions))
            continue
        if r < 0.16:
            caption = _fill(rng.choice(SHORT), rng)
        elif r < 0.24:  # product descriptions and scraped paragraphs, 40-150 words
            sentences = [_fill(rng.choice(TEMPLATES), rng) for _ in range(rng.randint(5, 18))]
            caption = ". ".join(sentences)
        else:
            caption = " ".join(_fill(rng.choice(TEMPLATES), rng) for _ in range(rng.choice([1, 1, 1, 2])))
        if rng.random() < 0.12:
            caption += " " + rng.choice(NON_ASCII)
        if rng.random() < 0.05:
            caption = rng.choice(ENTITIES) + " " + caption
        if rng.random() < 0.03:
            caption += " " + rng.choice(MOJIBAKE)
        if rng.random() < 0.15:
            caption += " " + _rare_token(rng)
        if rng.random() < 0.3:
            caption = caption.capitalize()
        if rng.random() < 0.05:
            caption = rng.choice(["  ", "\n", " | ", "\t"]).join(caption.split(" ", 2))
        captions.append(caption)
    return captions


# ---------------------------------------------------------------------------------------------------
# The four implementations: a factory for a fresh instance and the call that gives [N, 77] ids.


def _import_clip():
    """OpenAI's ``clip`` package (clip-anytorch). Its clip.py does ``from pkg_resources import
    packaging``, which setuptools >= 81 no longer ships; it uses only ``packaging.version``."""
    try:
        import pkg_resources  # noqa: F401
    except ImportError:
        import types

        import packaging.version

        sys.modules["pkg_resources"] = types.SimpleNamespace(packaging=packaging)  # type: ignore[assignment]
    import clip

    return clip


def _hf_directory() -> Path:
    """vocab.json, merges.txt and configs written by cliplab's Hugging Face export, in a temp dir."""
    from cliplab.export.formats import _write_hf_tokenizer

    directory = Path(tempfile.mkdtemp(prefix="cliplab-hf-tokenizer-"))
    _write_hf_tokenizer(directory, CONTEXT)
    return directory


class Impl:
    """One implementation: ``fresh()`` builds a new instance, ``run(instance, texts)`` gives the ids."""

    def __init__(
        self, name: str, fresh: Callable[[], object], run: Callable[[object, list[str]], torch.Tensor]
    ):
        self.name, self.fresh, self.run = name, fresh, run


def implementations() -> dict[str, Impl]:
    import open_clip
    from transformers import CLIPTokenizerFast

    clip = _import_clip()
    simple_tokenizer = clip.clip._Tokenizer
    hf_dir = _hf_directory()

    def openai_run(instance, texts):
        clip.clip._tokenizer = instance  # clip.tokenize uses this module-level instance
        return clip.tokenize(texts, truncate=True)

    def hf_run(instance, texts):
        out = instance(texts, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
        # It pads with its pad token, <|endoftext|> as in OpenAI's released tokenizer config; the
        # others pad with 0.
        return out["input_ids"].masked_fill_(out["attention_mask"] == 0, 0)

    return {
        "cliplab": Impl("cliplab", Tokenizer, lambda tok, texts: tok(texts, truncate=True)),
        "open_clip": Impl(
            "open_clip", lambda: open_clip.get_tokenizer("ViT-B-32"), lambda tok, texts: tok(texts)
        ),
        "openai": Impl("openai", simple_tokenizer, openai_run),
        "transformers": Impl(
            "transformers",
            lambda: CLIPTokenizerFast.from_pretrained(hf_dir, pad_token="<|endoftext|>"),
            hf_run,
        ),
    }


def build(impl: Impl) -> tuple[object, float]:
    """A fresh instance, fully initialised (cliplab builds lazily: force it), and its set-up seconds."""
    t0 = time.perf_counter()
    instance = impl.fresh()
    if isinstance(instance, Tokenizer):
        instance._built()
    return instance, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------------
# Agreement.


def check_ids(report: Report, impls: dict[str, Impl], texts: list[str]) -> dict[str, torch.Tensor]:
    ids = {name: impl.run(build(impl)[0], texts) for name, impl in impls.items()}
    for name, t in ids.items():
        assert t.shape == (len(texts), CONTEXT) and t.dtype == torch.long, (name, t.shape, t.dtype)
    for ref in ("openai", "open_clip"):
        same = int((ids["cliplab"] == ids[ref]).all(1).sum())
        report.agree(f"cliplab ids vs {ref}", f"identical rows (of {len(texts)})", same == len(texts))
        report.row(case="agreement", impl=f"cliplab vs {ref}", identical_rows=same, rows=len(texts))
        if same != len(texts):
            raise SystemExit(f"cliplab's ids differ from {ref}'s on {len(texts) - same} captions")
    _hf_agreement(report, texts, ids["cliplab"], ids["transformers"])
    return ids


def _hf_agreement(report: Report, texts: list[str], ours: torch.Tensor, hf: torch.Tensor) -> None:
    """Count transformers' identical rows and say why the others differ."""
    from cliplab.tokenizer import clean_text

    same = (ours == hf).all(1)
    n_same = int(same.sum())
    ours_len = (ours != 0).sum(1)
    truncated = ours_len == CONTEXT
    differ = [i for i in range(len(texts)) if not same[i]]

    # transformers normalises with NFC, whitespace collapsing and lower-casing only: a text whose
    # cleaning needs ftfy or HTML unescaping (cliplab's clean_text differs from that) can differ.
    def hf_clean(t: str) -> str:
        import unicodedata

        return " ".join(unicodedata.normalize("NFC", t).split()).lower()

    by_cleaning = sum(clean_text(texts[i]) != hf_clean(texts[i]) for i in differ)
    report.row(
        case="agreement",
        impl="transformers vs cliplab/OpenAI",
        identical_rows=n_same,
        rows=len(texts),
        differing_rows=len(differ),
        differing_where_ftfy_or_html_unescape_changes_the_text=by_cleaning,
        differing_elsewhere=len(differ) - by_cleaning,
        truncated_rows_identical=f"{int((same & truncated).sum())} of {int(truncated.sum())}",
    )
    report.agree(
        "transformers CLIPTokenizerFast ids vs cliplab/OpenAI",
        "share of identical rows",
        round(n_same / len(texts), 4),
    )
    report.notes.append(
        "transformers' truncation (truncation=True, max_length=77) keeps the first 75 BPE ids and adds "
        "<|startoftext|> and <|endoftext|>: the same row as OpenAI's, which cuts [SOT, ids..., EOT] to 77 "
        "and overwrites the last with EOT. Its rows differ only where ftfy or HTML unescaping changes "
        "the text (it normalises with NFC, whitespace collapsing and lower-casing only), and it pads with "
        "its pad token (<|endoftext|> in OpenAI's released config), set to 0 here as the others pad."
    )
    if differ:
        i = differ[0]
        report.notes.append(
            f"transformers first differing caption: {texts[i]!r}: cliplab {ours[i][: int(ours_len[i])].tolist()} "
            f"vs transformers {hf[i][: int((hf[i] != 0).sum())].tolist()}"
        )


# ---------------------------------------------------------------------------------------------------
# Timing.


def time_cold(impls: dict[str, Impl], texts: list[str], rounds: int) -> dict[str, dict]:
    """Per round and implementation, alternately: build a fresh instance (timed apart), tokenize once."""
    import statistics

    times: dict[str, list[float]] = {n: [] for n in impls}
    setup: dict[str, list[float]] = {n: [] for n in impls}
    for _ in range(rounds):
        for name, impl in impls.items():
            instance, seconds = build(impl)
            setup[name].append(seconds)
            times[name].append(time_once(partial(impl.run, instance, texts)))
            del instance  # before the next build: one fresh instance alive at a time
    return {
        n: {"median_s": statistics.median(times[n]), "setup_median_s": statistics.median(setup[n])}
        for n in impls
    }


def time_warm(impls: dict[str, Impl], texts: list[str], rounds: int) -> dict[str, dict]:
    instances = {name: build(impl)[0] for name, impl in impls.items()}
    candidates = {name: (lambda i=impl, t=instances[name]: i.run(t, texts)) for name, impl in impls.items()}
    return alternate(candidates, rounds=rounds, warmup=1)  # the warm-up pass is what makes them warm


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="captions")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, cold and warm each")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads (and Rust threads of tokenizers)"
    )
    parser.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/compare_tokenizer.json)"
    )
    args = parser.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.threads < 1:
        parser.error("--n, --rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))

    texts = make_captions(args.n)
    report = Report(
        name="compare_tokenizer",
        title="Tokenizer: 10,000 captions to [N, 77] ids",
        description=__doc__.split("\n\n")[1],
    )
    impls = implementations()
    ids = check_ids(report, impls, texts)
    lengths = (ids["cliplab"] != 0).sum(1)
    tokenizer = Tokenizer()
    report.notes.append(
        f"{len(texts)} captions: {len(set(texts))} distinct, {sum(not t.isascii() for t in texts)} with "
        f"non-ASCII text, {sum('&' in t for t in texts)} with '&', "
        f"{int((lengths == CONTEXT).sum())} truncated at 77 tokens; tokens per caption median "
        f"{int(lengths.median())}, max before truncation "
        f"{max(map(len, map(tokenizer.encode, texts))) + 2}"
    )

    results = {"cold": time_cold(impls, texts, args.rounds), "warm": time_warm(impls, texts, args.rounds)}
    baselines = [n for n in impls if n != "cliplab"]
    for phase, timing in results.items():
        for name, t in timing.items():
            extra = {"setup_s": round(t["setup_median_s"], 4)} if "setup_median_s" in t else {}
            report.row(
                case=phase,
                impl=name,
                median_s=round(t["median_s"], 5),
                texts_per_s=round(len(texts) / t["median_s"]),
                speedup_of_cliplab=round(t["median_s"] / timing["cliplab"]["median_s"], 2),
                **extra,
            )
        fastest = min(baselines, key=lambda n: timing[n]["median_s"])
        report.target(
            f"{phase}: cliplab vs the fastest alternative ({fastest})",
            10.0,
            timing[fastest]["median_s"] / timing["cliplab"]["median_s"],
        )
    report.notes.append(
        "transformers 5 has one CLIP tokenizer class, backed by the Rust tokenizers library: "
        "CLIPTokenizerFast is an alias of CLIPTokenizer. It encodes a batch on all Rust threads "
        f"(RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']}); the others use one thread."
    )
    report.print()
    report.write(args.out)
    return report


if __name__ == "__main__":
    main()
