"""Zero-shot classifier construction (prompts through ``encode_text``) against open_clip and transformers.

The job is the one ImageNet zero-shot evaluation starts with: every one of the 80 ImageNet templates
filled with every one of the 1,000 class names (80,000 prompts), each prompt encoded by the ViT-B/32
text tower, normalised, averaged per class. All three implementations hold the same random ViT-B/32
weights (cliplab's, loaded into open_clip's ``ViT-B-32-quickgelu`` and exported to a transformers
``CLIPModel`` directory), each called the way its users call it:

* cliplab: ``build_zero_shot_classifier(model, cliplab.tokenize, classnames, templates)``: each
  template's shared tokens ("<sot> a photo of a") run once, the rest of each prompt attends to their
  cached keys and values (exact: the text mask is causal), unpadded through the linear layers;
* open_clip: its tokenizer (77 positions) and ``model.encode_text``;
* transformers: ``tokenizer(texts, padding=True)`` (padded to the longest prompt of the batch) and
  ``CLIPModel.get_text_features`` (its ``pooler_output`` in transformers 5).

The whole job takes open_clip over an hour on 2 cores, so each implementation is timed on a fixed
random sample of the job and its full time estimated from it (``--full`` runs all of it):

* open_clip and transformers process the 80,000 prompts in class-major order in 313 batches of 256
  (the last one 128), each batch tokenized, encoded, normalised and added into the class sums; the
  batches are independent, so the full time is the sum of the 313 batch times. The same
  ``--batches`` k of those exact batches (``random.Random(seed)``) are timed for both, scaled by 313/k.
* cliplab's work splits by template. Why the full time is the sum over the 80 templates of
  (tokenize its 1,000 prompts, plan them, run its prefix, run its batches, add into the class sums):
  each template's prompts form one group (``_prompt_groups``); a group of >= batch_size // 4
  prompts gets batches of its own, never pooled with another's (``_prefix_batches``), so every
  suffix batch holds one template's prompts and reads only that template's cached keys/values;
  the prefixes (one row each, at most 128 groups per cache) are run as rows of one batch per
  prefix length, row-wise independent work (the same rows whichever other templates are present);
  tokenizing is per prompt; planning is one sort plus per-group work, linear in the prompts; the
  class sums are additions. So m templates (``--templates``, ``random.Random(seed + 1)``) are timed
  with all 1,000 classes through the same public call, tokenizing and planning included, and
  scaled by 80/m.

Per-prompt features are checked to agree before anything is timed (max abs difference of the
normalised features, on the sampled prompts). Rounds alternate the implementations; medians.

    python benchmarks/compare_encode_text.py [--batches 3] [--templates 4] [--rounds 3] [--threads 2] [--full]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import Report, alternate  # noqa: E402

import cliplab  # noqa: E402
from cliplab.zeroshot import build_zero_shot_classifier, imagenet_classnames, imagenet_templates  # noqa: E402
from cliplab.zeroshot.classifier import prompt_features  # noqa: E402

BATCH = 256
LIMIT = 1e-5


def make_models(seed: int = 0):
    """cliplab's random ViT-B/32 and the same weights in open_clip and transformers."""
    import open_clip
    from transformers import AutoTokenizer, CLIPModel

    torch.manual_seed(seed)
    ours = cliplab.create_model("ViT-B/32").eval()
    oc = open_clip.create_model("ViT-B-32-quickgelu")
    missing = oc.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    oc.eval()
    with tempfile.TemporaryDirectory() as tmp:
        cliplab.export.export_hf(ours, Path(tmp) / "hf")
        hf = CLIPModel.from_pretrained(Path(tmp) / "hf").eval()
        hf_tok = AutoTokenizer.from_pretrained(Path(tmp) / "hf")
    return ours, oc, open_clip.get_tokenizer("ViT-B-32-quickgelu"), hf, hf_tok


def baseline_batches(encode, prompts, starts, n_templates, n_classes) -> torch.Tensor:
    """The usual loop, on the class-major batches that start at ``starts``: encode, normalise, add
    into the class sums. Returns the normalised features of those prompts (for the agreement check)."""
    sums = torch.zeros(n_classes, 512)
    feats = []
    with torch.inference_mode():
        for start in starts:
            emb = F.normalize(encode(prompts[start : start + BATCH]).float(), dim=-1)
            owner = torch.arange(start, start + len(emb)) // n_templates
            sums.index_add_(0, owner, emb)
            feats.append(emb)
    return torch.cat(feats)


def token_statistics(report: Report) -> None:
    """Tokens each implementation runs through the transformer for all 1,000 x 80 prompts."""
    names, templates = imagenet_classnames(), imagenet_templates()
    tokens = cliplab.tokenize([t.replace("{}", c) for c in names for t in templates], truncate=True)
    lengths = tokens.argmax(-1) + 1
    padded = sum(int(chunk.max()) * len(chunk) for chunk in lengths.split(BATCH))
    per_template = tokens.view(len(names), len(templates), -1)
    lcp = (per_template == per_template[:1]).all(0).long().cumprod(-1).sum(-1)  # (templates,)
    shared = torch.minimum(lcp, lengths.view(len(names), len(templates)).min(0).values - 1)
    ours = int(lengths.sum()) - int(shared.sum()) * (len(names) - 1)
    report.notes.append(
        f"Token positions run for all 80,000 prompts (ViT-B/32 text tower): open_clip "
        f"{77 * len(lengths):,} (77 each); transformers {padded:,} (padded to each batch's longest, "
        f"batches of {BATCH}); cliplab {ours:,} (each template's shared prefix once, then "
        f"{(int(lengths.sum()) - int(shared.sum()) * len(names)) / len(lengths):.2f} tokens per prompt; "
        f"mean prompt {float(lengths.float().mean()):.2f} tokens). transformers/cliplab = {padded / ours:.2f}."
    )


def sample_statistics(report: Report, prompts: list[str], starts: list[int], picked: list[int]) -> dict:
    """How faithful the samples are: their token positions, scaled as the times are, against the job's.

    Returns {implementation: scaled sample positions / full positions}."""
    n_templates = len(imagenet_templates())
    all_tokens = cliplab.tokenize(prompts, truncate=True)
    lengths = all_tokens.argmax(-1) + 1
    batch_max = torch.stack([chunk.max() for chunk in lengths.split(BATCH)])
    batch_pos = batch_max * torch.tensor([len(chunk) for chunk in lengths.split(BATCH)])
    sample_pos = int(batch_pos[[s // BATCH for s in starts]].sum()) * len(batch_pos) / len(starts)
    per_template = lengths.view(-1, n_templates)  # (classes, templates)
    tokens = all_tokens.view(per_template.shape[0], n_templates, -1)
    lcp = (tokens == tokens[:1]).all(0).long().cumprod(-1).sum(-1)
    shared = torch.minimum(lcp, per_template.min(0).values - 1)
    ours = per_template.sum(0) - shared * (per_template.shape[0] - 1)  # (templates,) positions each
    report.notes.append(
        f"Sample faithfulness (token positions, scaled like the times): transformers' sampled batches "
        f"{sample_pos:,.0f} vs {int(batch_pos.sum()):,} for all 313 ({sample_pos / int(batch_pos.sum()):.3f}); "
        f"cliplab's sampled templates {float(ours[picked].sum()) * n_templates / len(picked):,.0f} vs "
        f"{int(ours.sum()):,} for all 80 ({float(ours[picked].sum()) * n_templates / len(picked) / int(ours.sum()):.3f}); "
        f"open_clip always 77 per prompt."
    )
    return {
        "transformers": sample_pos / int(batch_pos.sum()),
        "cliplab": float(ours[picked].sum()) * n_templates / len(picked) / int(ours.sum()),
    }


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="baseline batches of 256 timed (of 313)")
    parser.add_argument("--templates", type=int, default=4, help="templates timed for cliplab (of 80)")
    parser.add_argument("--full", action="store_true", help="time the whole job (over an hour on 2 cores)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument(
        "--out", type=Path, help="results JSON (default benchmarks/results/compare_encode_text.json)"
    )
    args = parser.parse_args(argv)
    names, templates = imagenet_classnames(), imagenet_templates()
    prompts = [t.replace("{}", c) for c in names for t in templates]
    all_starts = list(range(0, len(prompts), BATCH))  # 313 class-major batches
    if args.full:
        args.batches, args.templates = len(all_starts), len(templates)
    if not (1 <= args.batches <= len(all_starts) and 1 <= args.templates <= len(templates)):
        parser.error(f"--batches must be in 1..{len(all_starts)} and --templates in 1..{len(templates)}")
    if args.rounds < 1 or args.threads < 1:
        parser.error("--rounds and --threads must be at least 1")
    torch.set_num_threads(args.threads)

    starts = sorted(random.Random(args.seed).sample(all_starts, args.batches))
    picked = sorted(random.Random(args.seed + 1).sample(range(len(templates)), args.templates))
    sample_templates = [templates[i] for i in picked]
    n_base = sum(len(prompts[s : s + BATCH]) for s in starts)
    n_ours = len(names) * len(picked)
    scale = {"cliplab": len(templates) / len(picked)}
    scale["open_clip"] = scale["transformers"] = len(all_starts) / len(starts)
    ours, oc, oc_tok, hf, hf_tok = make_models()

    def hf_encode(texts):
        batch = hf_tok(texts, padding=True, return_tensors="pt")
        out = hf.get_text_features(**batch)  # transformers 5: the projected features are its pooler_output
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def oc_encode(texts):
        return oc.encode_text(oc_tok(texts))

    candidates = {
        "cliplab": lambda: build_zero_shot_classifier(
            ours, cliplab.tokenize, names, sample_templates, batch_size=BATCH, progress=False
        ),
        "open_clip": lambda: baseline_batches(oc_encode, prompts, starts, len(templates), len(names)),
        "transformers": lambda: baseline_batches(hf_encode, prompts, starts, len(templates), len(names)),
    }
    report = Report(
        name="compare_encode_text",
        title="encode_text: zero-shot prompts (1,000 ImageNet classes x 80 templates), ViT-B/32",
        description=__doc__.split("\n\n")[1],
    )
    report.notes.append(
        f"Timed samples (seed {args.seed}): open_clip and transformers the {len(starts)} class-major batches "
        f"of {BATCH} starting at prompts {starts} ({n_base} prompts), full time = median x "
        f"{len(all_starts)}/{len(starts)}; cliplab templates {picked} x 1,000 classes ({n_ours} prompts, "
        f"tokenizing and planning included), full time = median x {len(templates)}/{len(picked)}. "
        f"torch threads {args.threads}, {args.rounds} alternating rounds, medians."
    )
    token_statistics(report)
    faithful = sample_statistics(report, prompts, starts, picked)

    # Outputs first: per-prompt features of the sampled prompts (open_clip's on the first sampled
    # batch only: it is 7x slower than the others, and its 77-position path is not what differs).
    t0 = time.perf_counter()
    sampled = [i for s in starts for i in range(s, min(s + BATCH, len(prompts)))]
    base = {
        "open_clip": baseline_batches(oc_encode, prompts, starts[:1], len(templates), len(names)),
        "transformers": baseline_batches(hf_encode, prompts, starts, len(templates), len(names)),
    }
    checked = {name: sampled[: len(feats)] for name, feats in base.items()}
    diff = float((base["open_clip"] - base["transformers"][: len(base["open_clip"])]).abs().max())
    report.agree(
        f"prompt features open_clip vs transformers ({len(base['open_clip'])} prompts)",
        "max abs difference",
        diff,
        LIMIT,
    )
    # cliplab on exactly the baselines' sampled prompts (as listed per-class prompts: one group
    # sharing the start token) ...
    listed: dict[str, list[str]] = {}
    for i in sampled:
        listed.setdefault(names[i // len(templates)], []).append(prompts[i])
    ours_listed = prompt_features(ours, cliplab.tokenize, listed, [], batch_size=BATCH, progress=False)
    # ... and through its timed job (template groups of 1,000), on the prompts both samples hold.
    ours_job = prompt_features(
        ours, cliplab.tokenize, names, sample_templates, batch_size=BATCH, progress=False
    )
    for other in ("open_clip", "transformers"):
        n_other = len(base[other])
        diff = float((ours_listed[:n_other] - base[other]).abs().max())
        report.agree(
            f"prompt features cliplab vs {other} ({n_other} prompts)", "max abs difference", diff, LIMIT
        )
        both = [(k, i) for k, i in enumerate(checked[other]) if i % len(templates) in picked]
        if both:
            rows = [(i // len(templates)) * len(picked) + picked.index(i % len(templates)) for _, i in both]
            diff = float((ours_job[rows] - base[other][[k for k, _ in both]]).abs().max())
            report.agree(
                f"prompt features cliplab (template groups) vs {other} ({len(both)} prompts in both samples)",
                "max abs difference",
                diff,
                LIMIT,
            )
    assert all(a["ok"] for a in report.agreement), report.agreement
    report.notes.append(f"Agreement checks (also the warm-up): {time.perf_counter() - t0:.1f} s.")

    timing = alternate(candidates, rounds=args.rounds, warmup=0)  # warmed by the agreement check
    full = {name: t["median_s"] * scale[name] for name, t in timing.items()}
    for name, t in timing.items():
        n = n_ours if name == "cliplab" else n_base
        report.row(
            case="1,000 classes x 80 templates (estimated from the sample)"
            if not args.full
            else "1,000 x 80, whole",
            impl=name,
            sample_prompts=n,
            sample_median_s=round(t["median_s"], 3),
            prompts_per_s=round(n / t["median_s"], 1),
            full_job_s=round(full[name], 1),
            speedup_of_cliplab=round(full[name] / full["cliplab"], 2),
            times_s=t["times_s"],
        )
    fastest = min(("open_clip", "transformers"), key=lambda n: full[n])
    if "transformers" in fastest and not args.full:
        adjusted = (full["transformers"] / faithful["transformers"]) / (full["cliplab"] / faithful["cliplab"])
        report.notes.append(
            f"Estimate corrected for the samples' token positions (time taken as proportional to them; "
            f"see 'Sample faithfulness'): transformers/cliplab = {adjusted:.2f}."
        )
    report.target(
        f"cliplab vs the faster alternative ({fastest}), full job", 3.0, full[fastest] / full["cliplab"]
    )
    report.print()
    report.write(args.out)
    return report


if __name__ == "__main__":
    main()
