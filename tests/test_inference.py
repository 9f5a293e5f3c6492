"""The one label-free inference layer (cliplab.inference): image collections of every kind, batched
encoding against the plain one-by-one loop, texts, and the model's mode left alone."""

from __future__ import annotations

import io
import tarfile
import threading

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cliplab
from cliplab.inference import (
    ImageFolder,
    ImageManifest,
    ImagePathList,
    ImageShards,
    TrainingModeError,
    encode_images,
    encode_texts,
    image_batches,
    open_images,
)
from cliplab.transforms import image_transform

pytestmark = pytest.mark.usefixtures("one_thread")

COLOURS = [(200, 30, 30), (30, 160, 40), (40, 60, 200), (230, 200, 40), (120, 40, 160)]


def _images() -> list[Image.Image]:
    out = []
    for i, colour in enumerate(COLOURS):
        img = Image.new("RGB", (40 + 8 * i, 32 + 4 * i), colour)  # different sizes and aspect ratios
        img.paste((255 - colour[0], 90, 20 * i), (4, 4, 14 + i, 20))
        out.append(img)
    return out


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return cliplab.create_model("micro").eval()


@pytest.fixture
def collection(tmp_path):
    """The same five images (plus one corrupt file) as a folder tree, a manifest, a path list and a shard."""
    images = _images()
    folder = tmp_path / "tree"
    paths = []
    for i, img in enumerate(images):
        path = folder / ("a" if i < 3 else "b/c") / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        paths.append(path)
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    manifest = tmp_path / "m.csv"
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    manifest.write_text("filepath,caption\n" + "".join(f"{r},image {i}\n" for i, r in enumerate(rel)))
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(rel) + "\n")
    shard = tmp_path / "shards" / "shard-000000.tar"
    shard.parent.mkdir()
    with tarfile.open(shard, "w") as tar:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            img.save(buf, format="PNG")
            for name, data in ((f"{i:04d}.png", buf.getvalue()), (f"{i:04d}.txt", f"image {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"images": images, "folder": folder, "manifest": manifest, "list": listing, "shards": shard.parent}


def _plain(model, images: list[Image.Image]) -> torch.Tensor:
    """The obvious loop: one image at a time through the model."""
    tf = image_transform(model.config.vision.image_size)
    with torch.no_grad():
        return torch.cat([F.normalize(model.encode_image(tf(im).unsqueeze(0)), dim=-1) for im in images])


def test_every_kind_of_collection_gives_the_plain_loops_features(micro, collection):
    expected = _plain(micro, collection["images"])
    tf = image_transform(32)
    kinds = {
        "folder": (ImageFolder, 6),  # the broken file is listed, then skipped
        "manifest": (ImageManifest, 5),
        "list": (ImagePathList, 5),
        "shards": (ImageShards, 5),
    }
    for key, (cls, n) in kinds.items():
        images = open_images(collection[key])
        assert type(images) is cls and len(images) == n, key
        out = encode_images(micro, images, preprocess=tf, batch_size=2, workers=0, progress=False)
        torch.testing.assert_close(out.features, expected, atol=1e-5, rtol=0, msg=key)
        assert len(out.indices) == 5
        if key == "folder":
            (skipped,) = out.skipped
            assert skipped.source.endswith("broken.png") and "cannot decode" in skipped.reason
        else:
            assert out.skipped == []
    assert open_images(collection["manifest"]).caption(2) == "image 2"
    shards = open_images(collection["shards"])
    assert shards.caption(4) == "image 4" and shards.source(0).endswith("shard-000000.tar:0000")
    file, offset, size = shards.location(1)
    with open(file, "rb") as f:
        f.seek(offset)
        assert Image.open(io.BytesIO(f.read(size))).size == collection["images"][1].size


def test_workers_and_batches_do_not_change_the_features(micro, collection):
    images = open_images(collection["folder"])
    a = encode_images(micro, images, preprocess=image_transform(32), batch_size=1, workers=0, progress=False)
    b = encode_images(micro, images, preprocess=image_transform(32), batch_size=4, workers=2, progress=False)
    torch.testing.assert_close(a.features, b.features, atol=1e-5, rtol=0)
    assert a.indices.tolist() == b.indices.tolist() and [s.source for s in a.skipped] == [
        s.source for s in b.skipped
    ]
    sizes = [s for batch in image_batches(micro, images, preprocess=image_transform(32), workers=0, progress=False)
             for s in batch.sizes]  # fmt: skip
    assert sorted(sizes) == sorted(im.size for im in collection["images"])


def test_texts_match_the_plain_loop_and_truncate(micro):
    texts = ["a red square", "a photo of a dog", "word " * 200]  # the last is longer than the context
    plain = []
    with torch.no_grad():
        for t in texts:
            tokens = cliplab.tokenize([t], context_length=micro.config.text.context_length, truncate=True)
            plain.append(F.normalize(micro.encode_text(tokens), dim=-1))
    torch.testing.assert_close(
        encode_texts(micro, texts, batch_size=2, progress=False), torch.cat(plain), atol=1e-5, rtol=0
    )


def test_the_models_mode_is_never_changed(collection):
    rn = cliplab.create_model("tiny-rn").train()  # BatchNorm: training mode would mix a batch's images
    images = open_images(collection["manifest"])
    with pytest.raises(TrainingModeError, match="model.eval()"):
        encode_images(rn, images, preprocess=image_transform(64), workers=0, progress=False)
    with pytest.raises(TrainingModeError):
        encode_texts(rn, ["a dog"], progress=False)
    assert rn.training and all(m.training for m in rn.modules())
    running = rn.visual.bn1.running_mean.clone()
    rn.eval()
    encode_images(rn, images, preprocess=image_transform(64), workers=0, progress=False)
    assert not rn.training and torch.equal(rn.visual.bn1.running_mean, running)
    vit = cliplab.create_model("micro").train()  # no mode-dependent layers: encoded as it is
    encode_texts(vit, ["a dog"], progress=False)
    assert vit.training


def test_concurrent_encoding_with_one_model_equals_serial(micro):
    texts = [f"a photo of {n} red squares" for n in range(16)]
    serial = encode_texts(micro, texts, progress=False)
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        results[i] = encode_texts(micro, [texts[i]], progress=False)[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(
        torch.stack([results[i] for i in range(len(texts))]), serial, atol=1e-5, rtol=0
    )


def test_bad_specs_are_one_line_errors(tmp_path):
    from cliplab.errors import CliplabError

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("\n")
    for spec in [tmp_path / "missing", tmp_path / "empty", tmp_path / "empty.txt", tmp_path / "nope.png"]:
        with pytest.raises(CliplabError) as err:
            open_images(spec)
        assert "\n" not in str(err.value) and str(spec) in str(err.value)
