"""Texts per second of cliplab's tokenizer against OpenAI's pure-Python SimpleTokenizer.

Both tokenize the same generated captions into [N, 77] id tensors (OpenAI's ``clip.tokenize`` logic
around its ``SimpleTokenizer``, loaded by path from clip-anytorch), in batches of 256, first with
fresh tokenizers and empty caches (cold) and then again (warm, best of a few interleaved passes).
The ids must be identical. Rates use process CPU time, steadier than wall time on a shared machine;
wall-clock ratios are printed beside them.

Two caption mixes: "realistic" (web alt-text style: mostly English, ~10% with accents, CJK or
emoji, ~4% with ``&`` or HTML entities, ~12% with rare tokens such as file names and handles) and
"unicode_heavy" (half the captions carry non-ASCII text), the latter to show where the speed-up shrinks.

    python benchmarks/bench_tokenizer.py [--n 20000] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from cliplab.tokenizer import Tokenizer

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
]
NAMES = (
    "Paris London New York Tokyo Berlin Sydney Rome Madrid Chicago Toronto John Mary Alice Bob Emma".split()
)
NON_ASCII = [
    "café", "crème brûlée", "São Paulo", "Zürich", "Ångström", "jalapeño", "naïve", "Björk", "Kraków",
    "Málaga", "résumé", "Šibenik", "東京", "北京の夜", "서울", "🍰", "❤️", "😂", "🌅", "👍", "Москва", "Ελλάδα",
    "it’s", "“quoted”", "—", "…", "€25", "°C", "×2",
]  # fmt: skip
AMPERSANDS = [
    "salt & pepper",
    "black & white",
    "R&B",
    "Tom &amp; Jerry",
    "&quot;best&quot;",
    "fish &amp; chips",
]


def _rare_token(rng: random.Random) -> str:
    """File names, handles, codes: the tokens that miss any word cache."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    word = "".join(rng.choice(letters) for _ in range(rng.randint(4, 9)))
    return rng.choice(
        [
            f"IMG_{rng.randint(1000, 9999)}.jpg",
            f"@{word}",
            f"#{word}",
            word.capitalize(),
            f"{word}-{rng.randint(1, 99)}",
        ]
    )


def make_captions(n: int, non_ascii_rate: float, seed: int = 0) -> list[str]:
    """n distinct-looking captions from templates, with the given share carrying non-ASCII text."""
    rng = random.Random(seed)
    captions = []
    for _ in range(n):
        caption = rng.choice(TEMPLATES).format(
            adj=rng.choice(ADJECTIVES),
            adj2=rng.choice(ADJECTIVES),
            Adj=rng.choice(ADJECTIVES).capitalize(),
            noun=rng.choice(NOUNS),
            noun2=rng.choice(NOUNS),
            Noun=rng.choice(NOUNS).capitalize(),
            verb=rng.choice(VERBS),
            place=rng.choice(PLACES),
            num=rng.randint(2, 12),
            year=rng.randint(1950, 2024),
            Name=rng.choice(NAMES),
        )
        if rng.random() < non_ascii_rate:
            caption += " " + rng.choice(NON_ASCII)
        if rng.random() < 0.04:
            caption = rng.choice(AMPERSANDS) + " " + caption
        if rng.random() < 0.12:
            caption += " " + _rare_token(rng)
        if rng.random() < 0.3:
            caption = caption.capitalize()
        captions.append(caption)
    return captions


def _load_openai_tokenizer_class():
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("clip-anytorch is not installed: pip install --no-deps clip-anytorch==2.6.0")
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_openai_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer


def openai_tokenize(tok, texts: list[str], context_length: int = 77) -> torch.Tensor:
    """OpenAI's clip.tokenize(texts, truncate=True) around a given SimpleTokenizer."""
    sot, eot = tok.encoder["<|startoftext|>"], tok.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.long)
    for i, text in enumerate(texts):
        tokens = [sot, *tok.encode(text), eot][:context_length]
        tokens[-1] = eot
        result[i, : len(tokens)] = torch.tensor(tokens)
    return result


def timed_pass(tokenize, texts: list[str], batch: int, label: str) -> tuple[float, float, torch.Tensor]:
    """Texts per second of one pass over texts in batches, by wall clock and by process CPU time.

    CPU time is the steadier measure on a shared machine, where waiting for a core inflates wall time.
    """
    out = []
    wall, cpu = time.perf_counter(), time.process_time()
    for i in tqdm(range(0, len(texts), batch), desc=label, unit="batch", leave=False):
        out.append(tokenize(texts[i : i + batch]))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return len(texts) / wall, len(texts) / cpu, torch.cat(out)


def bench_mix(texts: list[str], batch: int, warm_repeats: int) -> dict:
    """Cold then warm passes of both tokenizers over texts; warm rates are the best of the repeats."""
    simple_tokenizer = _load_openai_tokenizer_class()
    openai = simple_tokenizer()  # fresh: empty BPE cache
    ours = Tokenizer()
    init = time.perf_counter()
    # One-time set-up (vocabulary, BPE model, module tables) is timed apart; the cache is emptied.
    ours.encode("warm up the lazy set-up: café 東京")
    init = time.perf_counter() - init
    ours._built().cache.clear()
    rates: dict[str, list[tuple[float, float]]] = {}

    def run(name: str, tokenize) -> torch.Tensor:
        wall, cpu, ids = timed_pass(tokenize, texts, batch, name)
        rates.setdefault(name, []).append((wall, cpu))
        return ids

    ref_ids = run("openai_cold", lambda t: openai_tokenize(openai, t))
    ids = run("cliplab_cold", lambda t: ours(t, truncate=True))
    if not torch.equal(ids, ref_ids):
        raise SystemExit(f"ids differ from OpenAI's on {int((ids != ref_ids).any(1).sum())} texts")
    for _ in range(warm_repeats):  # interleaved so that load changes hit both alike
        run("openai_warm", lambda t: openai_tokenize(openai, t))
        if not torch.equal(run("cliplab_warm", lambda t: ours(t, truncate=True)), ref_ids):
            raise SystemExit("warm ids differ from OpenAI's")
    best = {name: (max(w for w, _ in r), max(c for _, c in r)) for name, r in rates.items()}
    result: dict = {
        "n_texts": len(texts),
        "non_ascii_share": round(sum(not t.isascii() for t in texts) / len(texts), 3),
        "cliplab_setup_s": round(init, 3),
    }
    for phase in ("cold", "warm"):
        (o_wall, o_cpu), (c_wall, c_cpu) = best[f"openai_{phase}"], best[f"cliplab_{phase}"]
        result[f"openai_{phase}_texts_per_s"] = round(o_cpu)
        result[f"cliplab_{phase}_texts_per_s"] = round(c_cpu)
        result[f"{phase}_ratio"] = round(c_cpu / o_cpu, 2)
        result[f"{phase}_ratio_wall_clock"] = round(c_wall / o_wall, 2)
    result["ids_equal"] = True
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="captions per mix")
    parser.add_argument("--batch", type=int, default=256, help="texts per tokenize call")
    parser.add_argument("--warm-repeats", type=int, default=3, help="warm passes; the best counts")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    results = {
        "benchmark": "tokenizer",
        "target_ratio": 10.0,
        "rates": "texts per second of process CPU time; *_wall_clock ratios use elapsed time",
        "realistic": bench_mix(make_captions(args.n, non_ascii_rate=0.1), args.batch, args.warm_repeats),
        "unicode_heavy": bench_mix(
            make_captions(args.n, non_ascii_rate=0.5, seed=1), args.batch, args.warm_repeats
        ),
    }
    results["meets_target"] = (
        min(results["realistic"]["cold_ratio"], results["realistic"]["warm_ratio"]) >= 10
    )
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
