"""Bad input gets one clear line on stderr and exit code 2, and nothing is written."""

import pickle
import re

import pytest


@pytest.fixture
def run_cli(cli, tmp_path):
    """run_cli(*args) -> (exit code, stderr, files written) of `rbench run ARGS -q`."""

    def run(*args):
        results, cache = tmp_path / "results", tmp_path / "cache"
        code, _, err = cli(
            "run", *args, "--results-dir", str(results), "--cache-dir", str(cache), "-q"
        )
        written = [p for p in results.rglob("*") if p.is_file()] if results.exists() else []
        return code, err.strip(), written

    return run


def assert_one_line_error(code, err, written, pattern):
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]
    assert written == []


MAGNITUDE_ON_DIGITS = ("-m", "magnitude", "-r", "4", "-s", "digits")

CASES = {
    "unknown method": (["-m", "magnitud", "-r", "4"], r"unknown method 'magnitud'.*'magnitude'"),
    "unknown suite": (["-m", "magnitude", "-r", "4", "-s", "mnist5"], r"did you mean 'mnist5k'"),
    "ratio below 1": (["-m", "magnitude", "-r", "0.5"], r"--ratio must be .* >= 1"),
    "ratio zero": (["-m", "magnitude", "-r", "0"], r"--ratio must be"),
    "ratio negative": (["-m", "magnitude", "-r", "-1"], r"--ratio must be"),
    "ratio nan": (["-m", "magnitude", "-r", "nan"], r"--ratio must be"),
    "ratio inf": (["-m", "magnitude", "-r", "inf"], r"--ratio must be"),
    "ratio string": (["-m", "magnitude", "-r", "abc"], r"'abc' is not a valid float"),
    "ratio unreachable": (["-m", "magnitude", "-r", "1e9", "-s", "digits"], r"cannot be reached"),
    "dense compresses": (["-m", "dense", "-r", "4", "-s", "digits"], r"does not compress"),
    "missing data root": (
        ["-m", "magnitude", "-r", "4", "-s", "cifar10-resnet18"],
        r"needs --data-root.*cifar-10-batches-py",
    ),
    "data root absent": (
        ["-m", "magnitude", "-r", "4", "-s", "mnist", "--data-root", "/nonexistent/x"],
        r"not a directory; expected MNIST",
    ),
    "unknown opt": (
        ["-m", "magnitude", "-r", "4", "-s", "digits", "--opt", "lrr=0.1"],
        r"no option 'lrr'.*did you mean 'lr'",
    ),
    "opt wrong type": (
        ["-m", "magnitude", "-r", "4", "-s", "digits", "--opt", "lr=fast"],
        r"lr=fast: expected a float",
    ),
    "opt without value": (["-m", "magnitude", "-r", "4", "--opt", "lr"], r"expects key=value"),
    "opt nan": (["-m", "magnitude", "-r", "4", "--opt", "lr=nan"], r"lr must be a finite number"),
    "unknown variant": (
        ["-m", "magnitude", "-r", "4", "--opt", "variant=fast"],
        r"choose one of harness, paper",
    ),
    "unknown protocol": (
        ["-m", "magnitude", "-r", "4", "--protocol", "fast"],
        r"no protocol 'fast'",
    ),
    "negative seed": (["-m", "magnitude", "-r", "4", "--seed", "-1"], r"--seed must be"),
    "huge seed": (["-m", "magnitude", "-r", "4", "--seed", str(2**40)], r"--seed must be"),
    "negative epochs": (["-m", "magnitude", "-r", "4", "--epochs", "-2"], r"--epochs must be"),
    "unknown device": (["-m", "magnitude", "-r", "4", "--device", "tpu"], r"'tpu' is not one of"),
    "missing checkpoint": (
        ["-m", "magnitude", "-r", "4", "--dense-checkpoint", "/no/such.pt"],
        r"does not exist",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(case, run_cli):
    args, pattern = CASES[case]
    assert_one_line_error(*run_cli(*args), pattern)


def test_cuda_without_gpu(run_cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = run_cli("-m", "magnitude", "-r", "4", "--device", "cuda")
    assert_one_line_error(*result, r"no CUDA GPU")


def test_results_dir_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = cli(
        "run", "-m", "magnitude", "-r", "4",
        "--results-dir", str(blocker / "sub"), "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    written = [p.name for p in tmp_path.rglob("*") if p != blocker and p.is_file()]
    assert_one_line_error(code, err.strip(), written, r"cannot write to")


def test_corrupt_safetensors_checkpoint(run_cli, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    result = run_cli(*MAGNITUDE_ON_DIGITS, "--dense-checkpoint", str(bad))
    assert_one_line_error(*result, r"not a readable safetensors file")


def test_truncated_safetensors_checkpoint(run_cli, tmp_path, dense_checkpoint):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(dense_checkpoint.read_bytes()[:-100])
    result = run_cli(*MAGNITUDE_ON_DIGITS, "--dense-checkpoint", str(cut))
    assert_one_line_error(*result, r"not a readable safetensors file")


class Payload:
    """Unpickling this would create a file: a checkpoint that carries code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_not_executed(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weight": Payload(str(marker))}))
    result = run_cli(*MAGNITUDE_ON_DIGITS, "--dense-checkpoint", str(evil))
    assert_one_line_error(*result, r"could not be loaded safely \(weights_only=True\)")
    assert not marker.exists()


def test_checkpoint_of_another_architecture(run_cli, tmp_path):
    import torch

    from rbench.data.models import build_model

    other = build_model("lenet300", (1, 8, 8), 10, (0.0,), (1.0,))
    path = tmp_path / "lenet.pt"
    torch.save(other.state_dict(), path)
    result = run_cli(*MAGNITUDE_ON_DIGITS, "--dense-checkpoint", str(path))
    assert_one_line_error(*result, r"does not fit this suite's architecture")


def test_absurd_rate_is_refused_before_training(run_cli, dense_checkpoint):
    """lr=1e30 used to train until the loss became NaN; its declared range (0, 10] refuses it
    first (a diverging run is a result with a flag: tests/test_planted_flags.py)."""
    result = run_cli(
        *MAGNITUDE_ON_DIGITS, "--dense-checkpoint", str(dense_checkpoint),
        "--opt", "lr=1e30", "--epochs", "1", "--protocol", "quick",
    )  # fmt: skip
    assert_one_line_error(*result, r"--opt lr must be a finite number in \(0, 10\], got 1e30")
