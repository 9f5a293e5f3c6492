"""The transfer sets stay out of training, and the demo's numbers for them are what a user measures.

- The printed digits use typefaces the training generator never draws, and no image of either set
  is a training image; the generator never reads the handwriting file.
- `configs/demo.yaml` loads and trains a few steps; `cliplab data transfer` + `cliplab eval zeroshot`
  on its folders give exactly the accuracies that training wrote to summary.json.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from cliplab.cli.main import main
from cliplab.data.glyphs import DIGIT_STROKES, handwritten_digit
from cliplab.data.synthetic import DIGITS, SyntheticCaptions, make_rng, sample_scene
from cliplab.data.synthetic_render import FONT_FILES, TRANSFER_FONT_FILES, font_dir
from cliplab.data.transfer import TRANSFER_SETS, handwritten_digits, printed_digits, transfer_set
from cliplab.errors import UsageError

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.yaml"


def _digest(image) -> str:
    return hashlib.sha256(image.tobytes() + repr((image.size, image.mode)).encode()).hexdigest()


def test_transfer_typefaces_are_not_training_typefaces():
    assert not set(FONT_FILES.values()) & set(TRANSFER_FONT_FILES.values())
    assert not set(FONT_FILES) & set(TRANSFER_FONT_FILES)
    for file in [*FONT_FILES.values(), *TRANSFER_FONT_FILES.values()]:
        assert (font_dir() / file).is_file(), file


def test_training_generator_draws_only_training_typefaces():
    used = set()
    for i in range(4000):
        scene, _, _ = sample_scene(0, "train", i)
        used |= {t.font for t in scene.texts}
    assert used and used <= set(FONT_FILES)
    # every training typeface is drawn (the split keeps them all in use)
    assert used == set(FONT_FILES)


def test_printed_digits_cover_every_held_out_typeface_and_digit():
    task = printed_digits(image_size=32, per_class=10)
    assert task.classnames == list(DIGITS) and task.templates == []
    assert len(task.images) == 100 and sorted(set(task.labels)) == list(range(10))
    # distinct pictures: each (font, digit) renders differently
    assert len({_digest(im) for im in task.images}) == 100


def test_transfer_images_are_never_training_images():
    train = SyntheticCaptions(3000, image_size=64)
    train_hashes = {_digest(train[i].image) for i in range(len(train))}
    for name in TRANSFER_SETS:
        task = transfer_set(name)
        assert not {_digest(im) for im in task.images} & train_hashes, name


def test_training_generator_never_reads_the_handwriting():
    """Rendering and loading the training set must not import the module that reads MNIST."""
    code = (
        "import sys\n"
        "from cliplab.data.loader import SyntheticSource\n"
        "src = SyntheticSource(64, 0, 32)\n"
        "[src.get(i)[1]() for i in range(64)]\n"
        "assert 'cliplab.data.transfer' not in sys.modules, 'training imported the transfer sets'\n"
        "assert 'mlxtend' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    for module in ("synthetic.py", "synthetic_render.py", "glyphs.py", "loader.py", "samples.py"):
        text = (REPO / "src" / "cliplab" / "data" / module).read_text()
        assert "mnist" not in text.lower() and "transfer import" not in text, module


def test_handwritten_digits_are_mnist_balanced():
    task = handwritten_digits(per_class=5)
    assert len(task.images) == 50
    assert [task.labels.count(k) for k in range(10)] == [5] * 10
    assert {im.size for im in task.images} == {(28, 28)} and {im.mode for im in task.images} == {"RGB"}
    # white strokes on black, as in MNIST
    pixels = np.stack([np.asarray(im) for im in task.images])
    assert np.median(pixels) == 0 and pixels.max() == 255


def test_handwritten_digit_strokes_vary_and_stay_in_the_box():
    for digit in DIGIT_STROKES:
        draws = [handwritten_digit(make_rng(0, "t", i), digit) for i in range(20)]
        assert len({repr(d) for d in draws}) == 20, digit
        pts = np.array([p for d in draws for stroke in d for p in stroke])
        assert pts.min() > -0.3 and pts.max() < 1.3, digit


def test_transfer_sets_do_not_depend_on_the_model():
    """Fixed images (64 px printed, 28 px MNIST): a 32 px model and a 224 px model score the same files."""
    from cliplab.evaluation.datasets import load_classification_dataset

    for name in TRANSFER_SETS:
        a = load_classification_dataset(f"transfer:{name}", synthetic_image_size=32)
        b = load_classification_dataset(f"transfer:{name}", synthetic_image_size=224)
        assert [_digest(im) for im in a.images] == [_digest(im) for im in b.images]
    assert {im.size for im in transfer_set("printed-digits").images} == {(64, 64)}


def test_unknown_transfer_set_is_a_usage_error():
    with pytest.raises(UsageError, match="printed-digits"):
        transfer_set("cursive")


def test_demo_config_names_every_task_and_both_transfer_sets():
    cfg = yaml.safe_load(DEMO_CONFIG.read_text())
    assert {f"transfer:{n}" for n in TRANSFER_SETS} <= set(cfg["eval_data"])
    assert {e for e in cfg["eval_data"] if e.startswith("synthetic:")} == {
        f"synthetic:{t}" for t in ("colour", "shape", "count", "position", "digit", "compositional")
    }


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """configs/demo.yaml as shipped, shortened to a few steps on a small synthetic set."""
    out = tmp_path_factory.mktemp("demo")
    code = main([
        "train", "--config", str(DEMO_CONFIG), "--out", str(out), "--no-progress", "--steps=3",
        "--batch_size=16", "--warmup_steps=1", "--eval_every=3", "--checkpoint_every=3",
        "--data.synthetic_size=64", "--tensorboard=false",
    ])  # fmt: skip
    assert code == 0
    return out


def test_demo_config_trains_and_reports_transfer(demo_run):
    summary = json.loads((demo_run / "summary.json").read_text())
    assert summary["steps"] == 3
    assert set(summary["zeroshot"]) == {
        "colour", "shape", "count", "position", "digit", "compositional", *TRANSFER_SETS,
    }  # fmt: skip
    for name in TRANSFER_SETS:
        assert summary["zeroshot"][name]["chance"] == pytest.approx(0.1)
    assert (demo_run / "report.png").stat().st_size > 0


@pytest.mark.parametrize("name", TRANSFER_SETS)
def test_cli_eval_of_transfer_folders_equals_summary(demo_run, tmp_path_factory, name):
    folders = tmp_path_factory.getbasetemp() / "transfer-folders"
    if not folders.exists():
        assert main(["data", "transfer", "--out", str(folders), "--no-progress"]) == 0
    # a user's folder: class folders 0..9 and nothing else, so the default templates apply
    assert sorted(p.name for p in (folders / name).iterdir()) == list(DIGITS)
    result_path = tmp_path_factory.mktemp("eval") / "result.json"
    code = main([
        "eval", "zeroshot", "--model", str(demo_run / "final"), "--data", str(folders / name),
        "--json", str(result_path), "--workers", "0",
    ])  # fmt: skip
    assert code == 0
    result = json.loads(result_path.read_text())
    summary = json.loads((demo_run / "summary.json").read_text())
    assert result["n_templates"] == 80
    assert result["n_images"] == len(transfer_set(name).labels)
    assert result["top1"] == pytest.approx(summary["zeroshot"][name]["top1"], abs=1e-9)
