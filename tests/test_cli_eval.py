"""`cliplab eval zeroshot` and `cliplab zeroshot` end to end, through the real dispatcher."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import cliplab
from cliplab.cli import main as cli_main


@pytest.fixture
def cli(monkeypatch):
    # Only this file's subcommands: the test must not depend on other commands' modules importing.
    monkeypatch.setattr(cli_main, "SUBCOMMANDS", {k: cli_main.SUBCOMMANDS[k] for k in ("eval", "zeroshot")})
    return cli_main.main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "micro.safetensors"
    cliplab.save(cliplab.create_model("micro"), path)
    return path


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from cliplab.data.synthetic import zero_shot_tasks
    from cliplab.data.writers import write_image_folder

    (task,) = zero_shot_tasks(image_size=32, per_class=3, names=["colour"])
    root = tmp_path_factory.mktemp("data") / "colour"
    write_image_folder(task, root)
    return root, task


def test_eval_zeroshot_end_to_end(cli, checkpoint, image_folder, tmp_path, capsys):
    root, task = image_folder
    out, png = tmp_path / "zs.json", tmp_path / "cm.png"
    args = ["eval", "zeroshot", "--model", str(checkpoint), "--data", str(root), "--workers", "0"]
    rc = cli([*args, "--batch-size", "7", "--json", str(out), "--confusion", str(png), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["n_images"] == len(task.labels) and result["n_skipped"] == 0
    assert result["n_templates"] == len(task.templates)  # the folder's templates.txt by default
    assert list(result["per_class_recall"]) == task.classnames
    assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    assert "top1" in printed and f"{100 * result['top1']:6.2f} %" in printed
    with Image.open(png) as img:
        assert img.format == "PNG"

    # The library gives the same numbers for the same model, data and prompts.
    from cliplab.evaluation.datasets import ImageFolderDataset
    from cliplab.evaluation.zeroshot import evaluate_zero_shot

    model, preprocess = cliplab.load(checkpoint)
    direct = evaluate_zero_shot(
        model,
        cliplab.tokenize,
        ImageFolderDataset(root, preprocess),
        None,
        task.templates,
        workers=0,
        progress=False,
    )
    assert direct["top1"] == pytest.approx(result["top1"]) and direct["per_class_recall"] == pytest.approx(
        result["per_class_recall"]
    )

    # A named template set and a user class-name file are accepted; a bad template name is a clean error.
    names = tmp_path / "names.txt"
    names.write_text("\n".join(task.classnames) + "\n")
    assert (
        cli(
            [*args, "--templates", "cifar10", "--classnames", str(names), "--json", str(out), "--no-progress"]
        )
        == 0
    )
    assert json.loads(out.read_text())["n_templates"] == 18
    assert cli([*args, "--templates", "no-such-set", "--no-progress"]) == 2
    assert "neither an existing file nor a shipped prompt set" in capsys.readouterr().err


def test_eval_zeroshot_reports_corrupt_image(cli, checkpoint, image_folder, tmp_path, capsys):
    import shutil

    root, task = image_folder
    data = tmp_path / "data"
    shutil.copytree(root, data)
    bad = next(p for p in sorted(data.iterdir()) if p.is_dir()) / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "zs.json"
    rc = cli(
        [
            "eval",
            "zeroshot",
            "--model",
            str(checkpoint),
            "--data",
            str(data),
            "--workers",
            "0",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["n_skipped"] == 1 and result["skipped"] == [str(bad)]
    assert result["n_images"] == len(task.labels)
    assert "skipped 1 unreadable image" in capsys.readouterr().out


def test_zeroshot_command(cli, checkpoint, tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(a)
    Image.new("RGB", (30, 40), (30, 30, 200)).save(b)
    out = tmp_path / "p.json"
    rc = cli(
        [
            "zeroshot",
            str(a),
            str(b),
            "--labels",
            "dog, cat,car",
            "--model",
            str(checkpoint),
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    probs = json.loads(out.read_text())
    assert list(probs) == [str(a), str(b)]
    for p in probs.values():
        assert set(p) == {"dog", "cat", "car"}
        assert sum(p.values()) == pytest.approx(1.0, abs=1e-5)
        assert list(p.values()) == sorted(p.values(), reverse=True)  # top ones first
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == str(a) and printed[1].strip().endswith(next(iter(probs[str(a)])))

    # Same probabilities as computing them by hand with the raw label as prompt.
    rc = cli(
        [
            "zeroshot",
            str(a),
            "--labels",
            "dog,cat",
            "--model",
            str(checkpoint),
            "--templates",
            "none",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    model, preprocess = cliplab.load(checkpoint)
    with torch.no_grad():
        img = torch.nn.functional.normalize(
            model.encode_image(preprocess(Image.open(a)).unsqueeze(0)), dim=-1
        )
        ctx = model.config.text.context_length
        txt = torch.nn.functional.normalize(
            model.encode_text(cliplab.tokenize(["dog", "cat"], context_length=ctx)), dim=-1
        )
        expected = (model.logit_scale.exp() * img @ txt.T).softmax(-1)[0]
    got = json.loads(out.read_text())[str(a)]
    assert got["dog"] == pytest.approx(expected[0].item(), abs=1e-5) and got["cat"] == pytest.approx(
        expected[1].item(), abs=1e-5
    )


def test_zeroshot_command_errors(cli, checkpoint, tmp_path, capsys):
    good = tmp_path / "ok.png"
    Image.new("RGB", (8, 8)).save(good)
    assert cli(["zeroshot", str(good), "--labels", "dog,,cat", "--model", str(checkpoint)]) == 2
    assert "empty name" in capsys.readouterr().err
    missing = tmp_path / "missing.png"
    assert cli(["zeroshot", str(missing), str(good), "--labels", "dog,cat", "--model", str(checkpoint)]) == 1
    captured = capsys.readouterr()
    assert str(missing) in captured.err and str(good) in captured.out  # the readable one is still labelled
