import subprocess
import sys

import torch

from segutils.cli import main
from segutils.train import load_checkpoint


def test_info_names_versions_and_device(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert torch.__version__ in out and "device" in out


def test_preview_writes_a_png(tmp_path):
    out = tmp_path / "grid.png"
    assert main(["preview", "--out", str(out), "--count", "3", "--image-size", "24"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_train_prints_metrics_and_saves_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "plain.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "segutils",
            "train",
            "--model",
            "plain",
            "--epochs",
            "1",
            "--train-size",
            "16",
            "--val-size",
            "8",
            "--image-size",
            "24",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--checkpoint",
            str(checkpoint),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert '"val_mean_iou"' in result.stdout
    assert load_checkpoint(checkpoint)["extra"]["model_name"] == "plain"


def test_unknown_model_is_refused():
    result = subprocess.run(
        [sys.executable, "-m", "segutils", "train", "--model", "resnet"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "invalid choice: 'resnet'" in result.stderr


def test_the_package_and_the_command_line_start_without_torch():
    # `segutils grade` and its job servers never need PyTorch in their own processes: importing it costs seconds.
    code = (
        "import sys, segutils, segutils.cli; segutils.cli.build_parser(); "
        "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
