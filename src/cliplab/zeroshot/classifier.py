"""Zero-shot classifier construction: class names + prompt templates -> a linear head.

The paper's recipe (section 3.1.4 and OpenAI's prompt-engineering notebook): for each class, fill
every template with the class name, encode each prompt with the text tower, L2-normalise each
embedding, average them, and L2-normalise the average. The resulting unit vectors, one per class,
are the columns of the classifier; an image's logits are ``logit_scale * normalised_image @ W``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .prompts import Template, format_prompt


def class_prompts(
    classnames: Sequence[str] | Mapping[str, Sequence[str]], templates: Sequence[Template]
) -> list[list[str]]:
    """The prompts of each class, in class order.

    With a sequence of names, class ``i`` gets every template filled with ``classnames[i]``. With a
    mapping ``name -> prompts`` (per-class prompt lists, as in CuPL), class ``i`` gets its listed
    prompts as written, followed by the templates filled with its name; pass ``templates=()`` to use
    the listed prompts alone.
    """
    if isinstance(classnames, str):
        raise TypeError("classnames must be a sequence of names or a mapping name -> prompts, not one string")
    if len(classnames) == 0:
        raise ValueError("no class names: a zero-shot classifier needs at least one class")
    per_class: list[list[str]] = []
    if isinstance(classnames, Mapping):
        for name, listed in classnames.items():
            if isinstance(listed, str):
                raise TypeError(f"class {name!r}: its prompts must be a list of strings, not one string")
            per_class.append(list(listed) + [format_prompt(t, name) for t in templates])
    else:
        per_class = [[format_prompt(t, name) for t in templates] for name in classnames]
    names = list(classnames)
    for name, prompts in zip(names, per_class, strict=True):
        if not prompts:
            raise ValueError(f"class {name!r} has no prompts: give at least one template or listed prompt")
    return per_class


def model_device(model: torch.nn.Module, device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; ``None`` means the device ``model``'s parameters are on.

    Every evaluation entry point takes ``device=None`` and resolves it here, so a model already on
    a GPU is evaluated there without a flag. A model without parameters falls back to its buffers,
    then to the CPU.
    """
    if device is not None:
        return torch.device(device)
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        return tensor.device
    return torch.device("cpu")


def build_zero_shot_classifier(
    model: torch.nn.Module,
    tokenize: Callable[..., torch.Tensor],
    classnames: Sequence[str] | Mapping[str, Sequence[str]],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    share_prefixes: bool = True,
) -> torch.Tensor:
    """Zero-shot classifier weights, a float32 tensor [embed_dim, n_classes] of unit columns.

    ``model`` needs ``encode_text(tokens)``; ``tokenize(texts, context_length=..., truncate=True)``
    turns prompts into token ids (``cliplab.tokenize``). Prompts longer than the model's context are
    truncated. ``classnames`` and ``templates`` are described in :func:`class_prompts`; templates are
    strings with ``{}`` / ``{c}`` or callables. Prompts of all classes are encoded together in
    batches of ``batch_size`` prompts, a tqdm bar showing progress when there is more than one
    batch. ``device`` defaults to the model's. The model's train/eval mode is restored afterwards.

    Two shortcuts, both exact in exact arithmetic (the result agrees with encoding each prompt on its
    own to float rounding): prompts are batched by token count, so a batch pads little; and with a
    cliplab ``CLIP`` and ``share_prefixes`` (the default), the tokens that all prompts of one
    template share ("<sot> a photo of a" in "a photo of a {}.") run through the text transformer
    once per template, and each prompt's remaining tokens attend to their cached keys and values
    (the causal mask makes that the same computation). For the 80 ImageNet templates it leaves
    about 4.3 of 9.6 tokens per prompt to compute (the
    linear layers run on those tokens only, unpadded). Other models get the plain batched path.
    """
    per_class = class_prompts(classnames, templates)
    owner = torch.tensor([c for c, ps in enumerate(per_class) for _ in ps])
    sums = None
    for index, emb in _encoded_batches(
        model, tokenize, per_class, len(templates), batch_size, device, progress, share_prefixes
    ):
        if sums is None:
            sums = torch.zeros(len(per_class), emb.shape[1], device=emb.device)
        # Accumulate per class rather than keep every prompt's embedding: 80k x D floats otherwise.
        sums.index_add_(0, owner[index].to(emb.device), emb)
    counts = torch.tensor([len(ps) for ps in per_class], device=sums.device, dtype=sums.dtype)
    return F.normalize(sums / counts[:, None], dim=-1).T.contiguous()


def prompt_features(
    model: torch.nn.Module,
    tokenize: Callable[..., torch.Tensor],
    classnames: Sequence[str] | Mapping[str, Sequence[str]],
    templates: Sequence[Template],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = True,
    share_prefixes: bool = True,
) -> torch.Tensor:
    """The L2-normalised feature of every prompt, float32 [n_prompts, embed_dim], in class order.

    The per-prompt features that :func:`build_zero_shot_classifier` averages, computed the same way
    (same arguments); rows follow :func:`class_prompts` flattened. Keeps every feature in memory.
    """
    per_class = class_prompts(classnames, templates)
    out = None
    for index, emb in _encoded_batches(
        model, tokenize, per_class, len(templates), batch_size, device, progress, share_prefixes
    ):
        if out is None:
            out = torch.zeros(sum(map(len, per_class)), emb.shape[1], device=emb.device)
        out[index.to(emb.device)] = emb
    return out


def _encoded_batches(model, tokenize, per_class, n_templates, batch_size, device, progress, share_prefixes):
    """Yield ``(prompt numbers, normalised float32 features)`` batch by batch (model in eval mode)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    prompts = [p for ps in per_class for p in ps]
    device = model_device(model, device)
    tokens = tokenize(prompts, context_length=_context_length(model), truncate=True)
    if share_prefixes and _encodes_prefixes(model):
        batches = _prefix_batches(tokens, _prompt_groups(per_class, n_templates), batch_size)
    else:
        batches = _length_batches(tokens, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            bar = tqdm(
                batches,
                desc="zero-shot classifier",
                unit="batch",
                disable=not progress or len(batches) < 2,
            )
            cache = None
            for batch in bar:
                if isinstance(batch, _SharedBatch):
                    if batch.prefixes is not None:  # the first batch of a run of groups
                        cache = model.encode_text_prefixes(*(t.to(device) for t in batch.prefixes))
                    emb = model.encode_text_after_prefix(
                        batch.suffixes.to(device), batch.suffix_lengths, batch.prefix_index, cache
                    )
                    index = batch.index
                else:
                    index = batch
                    emb = model.encode_text(tokens[index].to(device))
                yield index, F.normalize(emb.float(), dim=-1)
    finally:
        model.train(was_training)


def _encodes_prefixes(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a cliplab CLIP whose text encoding is the stock one (not overridden)."""
    from ..models.clip import CLIP

    return isinstance(model, CLIP) and type(model).encode_text is CLIP.encode_text


def _prompt_groups(per_class: list[list[str]], n_templates: int) -> torch.Tensor:
    """Group of each prompt (in ``per_class`` order): 0 for listed prompts, ``t + 1`` for template ``t``."""
    groups = []
    for prompts in per_class:
        n_listed = len(prompts) - n_templates
        groups.extend([0] * n_listed + list(range(1, n_templates + 1)))
    return torch.tensor(groups)


def _lengths(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens up to and including each row's end-of-text token (the highest id, as encode_text reads it)."""
    return tokens.argmax(dim=-1) + 1


def _length_batches(tokens: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Prompt indices in batches of similar token counts (``encode_text`` runs up to a batch's longest)."""
    order = torch.argsort(_lengths(tokens), stable=True)
    return list(order.split(batch_size))


class _SharedBatch:
    """Prompts as a cached prefix + their own tokens; ``prefixes`` is set where a new cache starts."""

    def __init__(self, index, suffixes, suffix_lengths, prefix_index, prefixes=None):
        self.index = index  # (B,) prompt numbers
        self.suffixes = suffixes  # (B, S) ids after each prompt's prefix
        self.suffix_lengths = suffix_lengths  # (B,)
        self.prefix_index = prefix_index  # (B,) row of each prompt's prefix in the cache
        self.prefixes = prefixes  # None, or (prefix ids (G, P), lengths (G,)) to cache before this batch


# Groups whose prefixes are cached at once: bounds the cache (groups x layers x prefix x width x 2).
_GROUPS_PER_CACHE = 128


def _prefix_batches(tokens: torch.Tensor, groups: torch.Tensor, batch_size: int) -> list[_SharedBatch]:
    """Plan the shared-prefix encoding: each group's common token prefix, then batches of suffixes.

    A group's prefix is the longest run of leading ids that all its prompts share, at most all but
    their last token (each prompt keeps its end-of-text token, where its feature is read). It
    always holds the start-of-text token, so a template starting with the class name still shares
    one position (a tokenizer without one gives an empty prefix).

    A group of at least ``batch_size // 4`` prompts (a template over many classes) is encoded in
    batches of its own, sorted by suffix length and split into near-equal batches of at most
    ``batch_size``: one prefix per batch, whose cached keys and values every row uses uncopied.
    Smaller groups (a few classes, listed per-class prompts) are pooled, within a run of groups,
    into mixed batches sorted by suffix length, each row gathering its own prefix.
    """
    lengths = _lengths(tokens)
    ids, counts = torch.unique(groups, return_counts=True)
    slot = torch.searchsorted(ids, groups)  # group row of each prompt
    # Each group's prompts, in prompt order (one sort: the planning is linear in the prompts).
    members_of = torch.argsort(slot, stable=True).split(counts.tolist())
    prefix_len = torch.zeros(len(ids), dtype=torch.long)
    first = torch.zeros(len(ids), dtype=torch.long)
    for g, members in enumerate(members_of):
        rows = tokens[members]
        same = (rows == rows[0]).all(dim=0).long().cumprod(dim=0)
        prefix_len[g] = min(int(same.sum()), int(lengths[members].min()) - 1)
        first[g] = members[0]
    own_batch = max(batch_size // 4, 1)
    batches: list[_SharedBatch] = []

    def add(index: torch.Tensor, lo: int, prefixes) -> None:
        start = prefix_len[slot[index]]
        n = lengths[index] - start
        columns = (start[:, None] + torch.arange(int(n.max()))).clamp(max=tokens.shape[1] - 1)
        batches.append(_SharedBatch(index, tokens[index[:, None], columns], n, slot[index] - lo, prefixes))

    for lo in range(0, len(ids), _GROUPS_PER_CACHE):
        hi = min(lo + _GROUPS_PER_CACHE, len(ids))
        p = max(int(prefix_len[lo:hi].max()), 1)
        prefixes = (tokens[first[lo:hi], :p], prefix_len[lo:hi])
        pooled = []
        for g in range(lo, hi):
            members = members_of[g]
            if len(members) < own_batch:
                pooled.append(members)
                continue
            members = members[torch.argsort(lengths[members], stable=True)]
            for chunk in members.tensor_split(-(-len(members) // batch_size)):
                add(chunk, lo, prefixes)
                prefixes = None
        if pooled:
            members = torch.cat(pooled)
            order = torch.argsort(lengths[members] - prefix_len[slot[members]], stable=True)
            for chunk in members[order].split(batch_size):
                add(chunk, lo, prefixes)
                prefixes = None
    return batches


def _context_length(model: torch.nn.Module) -> int:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "text"):
        return int(config.text.context_length)
    return int(getattr(model, "context_length", 77))


def zero_shot_logits(
    image_features: torch.Tensor, classifier: torch.Tensor, logit_scale: float | torch.Tensor = 100.0
) -> torch.Tensor:
    """Logits [N, n_classes] = ``logit_scale`` * cosine(image, class); features are normalised here.

    Pass ``model.logit_scale.exp()`` as ``logit_scale`` for the model's own temperature (100 for
    OpenAI's models); the ranking, and so every accuracy, does not depend on it.
    """
    feats = F.normalize(image_features.float(), dim=-1)
    return float(logit_scale) * feats @ classifier.to(feats.device, torch.float32)
