"""`cliplab embed`, `cliplab index` and `cliplab search` through the real CLI: embeddings equal the
one-by-one loop through cliplab.load, interrupted jobs resume to identical files, indexes agree with
plain numpy search and the approximate one reaches its measured recall."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import cliplab
from cliplab.cli.main import main
from cliplab.inference import model_fingerprint
from cliplab.search import embed as embed_module
from cliplab.search.collection import Collection
from cliplab.search.index import exact_neighbours, open_index, recall_at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    return cliplab.save(cliplab.create_model("micro"), tmp_path_factory.mktemp("model") / "micro")


def _write_images(folder: Path, n: int, seed: int = 0, size: int = 32) -> list[Path]:
    from cliplab.data.synthetic import SyntheticCaptions

    folder.mkdir(parents=True, exist_ok=True)
    data = SyntheticCaptions(n, seed=seed, image_size=size)
    paths = []
    for i in range(n):
        path = folder / f"{i // 50:02d}" / f"{i:05d}.{'jpg' if i % 3 == 0 else 'png'}"
        path.parent.mkdir(exist_ok=True)
        image = data[i].image
        if i % 7 == 0:  # other sizes and aspect ratios
            image = image.resize((size + i % 11, size * 2))
        image.save(path)
        paths.append(path)
    return paths


def _embed(*args: str) -> int:
    return main(["embed", "--no-progress", "--workers", "0", *args])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------------------- embed


def test_embedding_a_folder_equals_encoding_each_image_through_cliplab_load(tmp_path, model_dir, capsys):
    paths = _write_images(tmp_path / "imgs", 23)
    (tmp_path / "imgs" / "00" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "emb"
    args = ["--model", str(model_dir), "--data", str(tmp_path / "imgs"), "--out", str(out)]
    assert _embed(*args, "--dtype", "float32", "--part-size", "10", "--batch-size", "4") == 0
    printed = capsys.readouterr().out
    assert "embedded 23 of 24 images" in printed and "broken.jpg" in printed and "images/s" in printed

    model, preprocess = cliplab.load(model_dir)
    vectors = np.concatenate([np.load(out / f"part-{p:05d}.npy", allow_pickle=False) for p in range(3)])
    meta = pq.read_table([out / f"part-{p:05d}.parquet" for p in range(3)][0]).schema.names
    assert meta == ["id", "source", "caption", "width", "height", "file", "offset", "size"]
    table = pq.ParquetDataset([str(out / f"part-{p:05d}.parquet") for p in range(3)]).read().to_pylist()
    by_source = {row["source"]: (row, vec) for row, vec in zip(table, vectors, strict=True)}
    assert sorted(by_source) == sorted(map(str, paths))
    with torch.no_grad():
        for path in paths:
            image = Image.open(path)
            expected = F.normalize(model.encode_image(preprocess(image).unsqueeze(0)), dim=-1)[0].numpy()
            row, vec = by_source[str(path)]
            np.testing.assert_allclose(vec, expected, atol=1e-5, rtol=0)
            assert (row["width"], row["height"]) == image.size and row["caption"] is None
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s[1] for s in skipped] == [str(tmp_path / "imgs" / "00" / "broken.jpg")]
    info = json.loads((out / "embed.json").read_text())
    assert info["complete"] and info["n_embedded"] == 23 and info["n_skipped"] == 1
    assert (
        info["model"]["path"] == str(Path(model_dir).resolve())
        and info["model"]["preprocess"]["image_size"] == 32
    )
    assert info["model"]["fingerprint"] == model_fingerprint(model)


def test_interrupted_embedding_resumes_to_identical_files(tmp_path, model_dir, monkeypatch):
    _write_images(tmp_path / "imgs", 30)
    args = [
        "--model",
        str(model_dir),
        "--data",
        str(tmp_path / "imgs"),
        "--part-size",
        "8",
        "--batch-size",
        "3",
    ]
    assert _embed(*args, "--out", str(tmp_path / "whole")) == 0

    real = embed_module._write_part
    calls = []

    def crash_on_third(job, part, *rest):
        calls.append(part)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real(job, part, *rest)

    monkeypatch.setattr(embed_module, "_write_part", crash_on_third)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _embed(*args, "--out", str(tmp_path / "resumed"))
    monkeypatch.setattr(embed_module, "_write_part", real)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    written = []
    monkeypatch.setattr(
        embed_module, "_write_part", lambda job, part, *rest: written.append(part) or real(job, part, *rest)
    )
    assert _embed(*args, "--out", str(tmp_path / "resumed")) == 0
    assert written == [2, 3]  # finished parts kept
    assert _files(tmp_path / "resumed") == _files(tmp_path / "whole")


def test_embedding_killed_with_sigkill_resumes_to_identical_files(tmp_path, model_dir):
    _write_images(tmp_path / "imgs", 240, size=96)
    out = tmp_path / "killed"
    args = ["--model", str(model_dir), "--data", str(tmp_path / "imgs"), "--part-size", "12", "--batch-size", "4",
            "--workers", "0", "--no-progress"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cliplab", "embed", "--out", str(out), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / "part-00001.parquet").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = sorted(out.glob("*.parquet"))
    assert 2 <= len(done) < 20, f"the kill should land mid-job; {len(done)} of 20 parts were finished"
    assert main(["embed", "--out", str(out), *args]) == 0
    assert main(["embed", "--out", str(tmp_path / "whole"), *args]) == 0
    assert _files(out) == _files(tmp_path / "whole")


def test_embed_refuses_to_touch_other_work(tmp_path, model_dir, capsys):
    _write_images(tmp_path / "imgs", 6)
    out = tmp_path / "emb"
    base = ["--model", str(model_dir), "--data", str(tmp_path / "imgs"), "--out", str(out)]
    assert _embed(*base) == 0
    before = _files(out)
    # Another job in the same folder: refused before anything is written, naming what differs.
    assert _embed(*base, "--dtype", "float32") == 2
    assert "dtype" in capsys.readouterr().err and _files(out) == before
    torch.manual_seed(1)
    other = cliplab.save(cliplab.create_model("micro"), tmp_path / "other")
    assert _embed(*base[:1], str(other), *base[2:]) == 2
    err = capsys.readouterr().err
    assert "model weights" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert _files(out) == before
    # A folder of the user's own files: refused; --overwrite keeps them and removes only embeddings.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (mine / ".draft.txt.x1.tmp").write_text("mine too")  # looks like a temporary file, but not ours
    (mine / ".part-00000.npy.k2j3.tmp").write_bytes(b"half")  # a killed write of ours
    assert _embed(*base[:-1], str(mine)) == 2
    assert _embed(*base[:-1], str(mine), "--overwrite") == 0
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "embed.json").is_file()
    assert (mine / ".draft.txt.x1.tmp").is_file() and not (mine / ".part-00000.npy.k2j3.tmp").exists()
    assert (
        _embed("--model", str(model_dir), "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
        == 2
    )
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------- index


@pytest.fixture(scope="module")
def collection(tmp_path_factory, model_dir):
    """1,200 synthetic captioned images embedded in two folders of 600 (float16)."""
    root = tmp_path_factory.mktemp("collection")
    for half in ("a", "b"):
        _write_images(root / half, 600, seed=ord(half))
        assert _embed("--model", str(model_dir), "--data", str(root / half), "--out", str(root / f"emb-{half}"),
                      "--batch-size", "100") == 0  # fmt: skip
    return root


def _plain_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


def test_exact_index_over_merged_folders_equals_numpy(collection, capsys):
    out = collection / "exact"
    assert (
        main(
            [
                "index",
                str(collection / "emb-a"),
                str(collection / "emb-b"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "recall@10" in capsys.readouterr().out
    index = open_index(out)
    assert index.kind == "exact" and len(index) == 1200
    vectors = np.concatenate(
        [np.load(p, allow_pickle=False) for p in sorted(collection.glob("emb-*/part-*.npy"))]
    )
    queries = vectors[[0, 599, 600, 1199]].astype(np.float32) + 0.01
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores, rows = index.search(queries, 10)
    plain_scores, plain_rows = _plain_topk(vectors.astype(np.float32), queries, 10)
    np.testing.assert_allclose(scores, plain_scores, atol=1e-5)
    assert (rows == plain_rows).mean() > 0.97  # equal up to the order of near-ties
    assert {int(r) for r in rows[:, 0]} == {0, 599, 600, 1199}
    # the memory-mapped index answers the same
    np.testing.assert_array_equal(open_index(out, mmap=True).search(queries, 10)[1], rows)


@pytest.mark.parametrize("kind", ["ivfpq", "hnsw"])
def test_approximate_index_reaches_its_measured_recall(collection, kind):
    out = collection / kind
    assert main(["index", str(collection / "emb-a"), str(collection / "emb-b"), "--out", str(out),
                 "--kind", kind, "--queries", "200", "--no-progress"]) == 0  # fmt: skip
    info = json.loads((out / "index.json").read_text())
    assert info["kind"] == kind and info["recall_queries"] == 200
    assert info["recall_at_10"] >= 0.95
    # The recorded number is what a plain recomputation gives on the same held-out queries.
    index = open_index(out)
    own = np.sort(np.random.default_rng(0).choice(1200, size=200, replace=False))
    coll = Collection([collection / "emb-a", collection / "emb-b"])
    queries = coll.vectors(own)
    vectors = np.concatenate([coll.vectors(np.arange(1200))])
    truth = _plain_topk(vectors, queries, 11)[1]
    found = index.search(queries, 11)[1]
    assert recall_at(found, truth, own) == pytest.approx(info["recall_at_10"], abs=0.01)
    np.testing.assert_array_equal(open_index(out, mmap=True).search(queries[:20], 11)[1], found[:20])
    np.testing.assert_array_equal(exact_neighbours(coll, queries, 11)[:, 0], truth[:, 0])


def test_folders_of_another_model_do_not_merge_and_stale_indexes_are_refused(collection, tmp_path, capsys):
    torch.manual_seed(3)
    other = cliplab.save(cliplab.create_model("micro"), tmp_path / "other")
    _write_images(tmp_path / "imgs", 5)
    assert (
        _embed("--model", str(other), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "emb")) == 0
    )
    assert (
        main(["index", str(collection / "emb-a"), str(tmp_path / "emb"), "--out", str(tmp_path / "i")]) == 2
    )
    assert "another model" in capsys.readouterr().err and not (tmp_path / "i").exists()
    assert main(["index", str(tmp_path / "emb"), "--no-progress"]) == 0
    assert main(["index", str(tmp_path / "emb"), "--no-progress"]) == 2  # an index is there already
    assert _embed("--model", str(other), "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "emb"),
                  "--dtype", "float32", "--overwrite") == 0  # fmt: skip
    assert main(["search", str(tmp_path / "emb"), "a red square"]) == 2
    assert "rebuild" in capsys.readouterr().err


def test_search_cli_text_and_image(collection, capsys):
    emb = collection / "emb-a"
    assert main(["index", str(emb), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["search", str(emb), "a photo of two red squares", "-k", "5", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer["results"]) == 5 and answer["results"][0]["score"] >= answer["results"][-1]["score"]
    first = sorted((collection / "a").rglob("*.png"))[0]
    assert main(["search", str(emb), "--image", str(first), "-k", "3"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "score", "id"] and str(first) in table[1]
    assert main(["search", str(emb)]) == 2 and "text query or --image" in capsys.readouterr().err
    assert main(["search", str(collection / "a"), "x"]) == 2 and "no cliplab index" in capsys.readouterr().err
