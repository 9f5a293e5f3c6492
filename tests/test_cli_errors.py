"""Every ordinary mistake is one line on stderr and exit status 2, with nothing lost or half-done.

Each case here is a finding from trying the command line as a new user: before the fix each gave a
traceback, a hang or deleted files. The top-level handler in ``cliplab.cli.main`` turns the
project's own error types into that one line; ``--debug`` brings the traceback back.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cliplab
from cliplab.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

MICRO = ["--no-progress", "--steps=2", "--model=micro", "--data.workers=0", "--data.synthetic_size=16", "--batch_size=8",
         "--eval_every=0", "--tensorboard=false", "--warmup_steps=1"]  # fmt: skip


def one_line_error(capsys, argv: list[str], *needles: str) -> str:
    """Run the CLI in-process; assert exit 2 and a single ``cliplab ...: error:`` line naming ``needles``."""
    rc = main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[-1].startswith("cliplab "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@pytest.fixture(scope="module")
def micro_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "micro"
    torch.manual_seed(0)
    cliplab.save(cliplab.create_model("micro"), path)
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    from PIL import Image

    path = tmp_path_factory.mktemp("img") / "a.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(path)
    return path


# --- zeroshot, eval, benchmark -------------------------------------------------------------------


def test_zeroshot_unknown_model(capsys, image):
    one_line_error(capsys, ["zeroshot", str(image), "--labels", "a,b", "--model", "nosuch"], "nosuch")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_gpu(capsys, image, micro_model, tmp_path):
    one_line_error(
        capsys,
        ["zeroshot", str(image), "--labels", "a,b", "--model", str(micro_model), "--device", "cuda"],
        "CUDA is not available",
    )
    one_line_error(capsys, ["eval", "zeroshot", "--model", str(micro_model), "--data", "synthetic:colour",
                            "--device", "cuda:0"], "CUDA")  # fmt: skip
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), *MICRO, "--device=cuda"], "CUDA")
    assert not (tmp_path / "r").exists()


def test_bad_device_name(capsys, image, micro_model):
    one_line_error(
        capsys,
        ["zeroshot", str(image), "--labels", "a,b", "--model", str(micro_model), "--device", "gpu0"],
        "gpu0",
    )


def test_benchmark_out_is_a_file(capsys, tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "models: [{name: m, path: x}]\ntasks: [{task: zeroshot, dataset: d, data: synthetic:colour}]\n"
    )
    out = tmp_path / "results.txt"
    out.write_text("mine")
    one_line_error(
        capsys, ["benchmark", str(suite), "--out", str(out), "--no-progress"], "--out", "is a file"
    )
    assert out.read_text() == "mine"


def test_eval_arguments_are_checked_before_any_model_or_feature_work(capsys, tmp_path, monkeypatch):
    def must_not_load(*a, **k):
        raise AssertionError("cliplab.load ran before the arguments were checked")

    monkeypatch.setattr(cliplab, "load", must_not_load)
    data = tmp_path / "data"
    data.mkdir()
    one_line_error(capsys, ["eval", "linear-probe", "--model", "m", "--train", str(data), "--test", str(data),
                            "--val-fraction", "1.5"], "--val-fraction")  # fmt: skip
    one_line_error(capsys, ["eval", "retrieval", "--model", "m", "--data", str(data), "--chunk-size", "0"],
                   "--chunk-size")  # fmt: skip
    one_line_error(capsys, ["eval", "zeroshot", "--model", "m", "--data", str(data), "--json", str(data)],
                   "--json", "directory")  # fmt: skip
    one_line_error(
        capsys, ["eval", "zeroshot", "--model", "m", "--data", str(tmp_path / "nope")], "--data", "nope"
    )
    one_line_error(capsys, ["eval", "zeroshot", "--model", "m", "--data", str(data), "--batch-size", "0"],
                   "--batch-size")  # fmt: skip


def test_no_progress_silences_linear_probe_and_retrieval(capsys, micro_model, tmp_path):
    from cliplab.data.synthetic import SyntheticCaptions
    from cliplab.data.writers import write_files

    manifest = write_files(SyntheticCaptions(6, image_size=32), tmp_path / "ret", progress=False)
    assert main(["eval", "retrieval", "--model", str(micro_model), "--data", str(manifest), "--no-progress",
                 "--workers", "0"]) == 0  # fmt: skip
    assert "%|" not in capsys.readouterr().err
    assert main(["eval", "linear-probe", "--model", str(micro_model), "--train", "synthetic:colour",
                 "--test", "synthetic:colour", "--no-progress", "--workers", "0"]) == 0  # fmt: skip
    assert "%|" not in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(image):
    cmd = [sys.executable, "-m", "cliplab", "zeroshot", str(image), "--labels", "a", "--model", "nosuch"]
    plain = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert len(plain.stderr.strip().splitlines()) == 1, plain.stderr
    debug = subprocess.run([*cmd[:3], "--debug", *cmd[3:]], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# --- data --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["0", "100000"])
def test_data_synthetic_image_size_is_bounded(capsys, tmp_path, size):
    one_line_error(capsys, ["data", "synthetic", "--out", str(tmp_path / "o"), "--n", "2", "--image-size", size],
                   "--image-size")  # fmt: skip
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("what", ["synthetic", "tasks"])
def test_data_commands_refuse_a_non_empty_folder(capsys, tmp_path, what):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = ["data", what, "--out", str(out), "--no-progress", "--image-size", "16"]
    args += ["--n", "2"] if what == "synthetic" else ["--per-class", "1", "--tasks", "colour"]
    one_line_error(capsys, args, str(out), "--overwrite")
    assert (out / "mine.txt").read_text() == "keep me"
    # a bad argument with --overwrite still deletes nothing
    one_line_error(capsys, [*args, "--overwrite", "--image-size", "0"], "--image-size")
    assert (out / "mine.txt").read_text() == "keep me"
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "mine.txt").exists() and any(out.iterdir())


def test_data_tasks_unknown_task(capsys, tmp_path):
    one_line_error(capsys, ["data", "tasks", "--out", str(tmp_path / "o"), "--tasks", "colour", "nosuch"],
                   "nosuch")  # fmt: skip


# --- train: settings ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "needle"),
    [("--model=nosuch", "nosuch"), ("--steps=0", "steps"), ("--steps=-3", "steps"), ("--lr=.nan", "lr"),
     ("--lr=.inf", "lr"), ("--batch_size=0", "batch_size"), ("--data=foo", "data")],
)  # fmt: skip
def test_train_setting_mistakes(capsys, tmp_path, override, needle):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--out", str(out), *MICRO, override], needle)
    assert not out.exists(), "a run that cannot start must not create its directory"


def test_train_config_file_mistakes(capsys, tmp_path):
    (tmp_path / "data_foo.yaml").write_text("model: micro\ndata: foo\n")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path / "data_foo.yaml")],
                   "data", "data_foo.yaml")  # fmt: skip
    one_line_error(
        capsys, ["train", "--out", str(tmp_path / "r"), "--config", str(tmp_path)], "is a directory"
    )
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("model: micro  # r\xe9glage\n".encode("latin-1"))
    one_line_error(
        capsys, ["train", "--out", str(tmp_path / "r"), "--config", str(latin1)], "latin1.yaml:1", "UTF-8"
    )
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: micro\nlr: [1,\n")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "r"), "--config", str(bad_yaml)], "bad.yaml:")


# --- train: nothing a user made is lost ----------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    assert (
        main(["train", "--out", str(out), "--no-progress", *MICRO, "--steps=2", "--checkpoint_every=1"]) == 0
    )
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_typo_with_overwrite_leaves_the_old_run_intact(capsys, finished_run):
    before = snapshot(finished_run)
    typos = (
        "--model=micr0",
        "--lr=abc",
        "--data.source=manifest",
        "--data.source=manifest --data.path=/no.csv",
    )
    for typo in typos:
        one_line_error(capsys, ["train", "--out", str(finished_run), "--overwrite", *MICRO, *typo.split()])
        assert snapshot(finished_run) == before, typo


def test_out_with_a_users_files_is_refused(capsys, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    one_line_error(capsys, ["train", "--out", str(out), *MICRO, "--steps=1"], "not empty", "--overwrite")
    assert snapshot(out) == {"notes.txt": b"precious"}
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["train", "--out", str(tmp_path / "file"), *MICRO, "--steps=1"], "is a file")


def test_overwrite_removes_only_the_runs_own_outputs(finished_run, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "notes.txt").write_text("precious")
    assert main(["train", "--out", str(out), "--overwrite", "--no-progress", *MICRO, "--steps=1"]) == 0
    assert (out / "notes.txt").read_text() == "precious"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000001.pt"]


def test_resume_from_a_model_file_is_refused(capsys, finished_run):
    one_line_error(
        capsys,
        ["train", "--out", str(finished_run), "--resume", str(finished_run / "final" / "model.safetensors")],
        "not a training checkpoint",
        "--pretrained",
    )
