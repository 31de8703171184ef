"""External dense checkpoints: the input convention is explicit. A bare network (the keys of the
network alone, as code outside rbench saves it) must be told `--input-normalization none|suite`;
a checkpoint of rbench's whole model carries its normalisation and an explicit choice must agree
with it. A network trained on unnormalised [0, 1] inputs keeps its predictions exactly; rbench's
own cached dense model (`model.*` keys) loads as it is; unreadable files get one clear line."""

from __future__ import annotations

import pickle

import pytest
import torch
from conftest import new_digits_model
from safetensors.torch import save_file

from rbench.core.budget import ComputeMeter
from rbench.core.config import RunConfig
from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.data.splits import BatchLoader, DataSplits
from rbench.dense import dense_model
from rbench.runner import Runner
from rbench.store.checkpoint import read_checkpoint
from rbench.store.stage_keys import dense_key
from rbench.train.trainer import fit


@pytest.fixture(scope="module")
def unnormalised(digits, tmp_path_factory):
    """The digits network trained for a few steps on raw [0, 1] pixels, no normalisation in
    front of it, saved as a bare state dict (torch.save), and its logits on the test split."""
    torch.manual_seed(0)
    net = new_digits_model().net
    suite = get_suite("digits")
    attack = suite.dense.attack.pgd(suite.threat)
    loader = BatchLoader(digits.train, 64, shuffle=True, seed=0)
    meter = ComputeMeter(len(digits.train), attack.steps)
    fit(net, loader, attack=None, meter=meter, epochs=3, lr=3e-3, optimizer="adam", loss="ce")
    net.eval()
    path = tmp_path_factory.mktemp("ckpt") / "bare.pt"
    torch.save(net.state_dict(), path)
    x = digits.test.images(slice(None))
    with torch.no_grad():
        logits = net(x)
    assert (logits.argmax(1) == digits.test.y).float().mean() > 0.5  # it learnt something
    return path, x, logits


def runner(tmp_path, checkpoint, normalization=None) -> Runner:
    return Runner(
        RunConfig(
            method="magnitude",
            ratio=4,
            suite="digits",
            device="cpu",
            dense_checkpoint=str(checkpoint),
            input_normalization=normalization,
            results_dir=str(tmp_path / "results"),
            cache_dir=str(tmp_path / "cache"),
            quiet=True,
        )
    )


def loaded(tmp_path, checkpoint, normalization, digits):
    r = runner(tmp_path, checkpoint, normalization)
    model, meta = dense_model(r, DataSplits(digits.info, digits.train, digits.val, None))
    return r, model, meta


def test_unnormalised_network_keeps_its_predictions_exactly(tmp_path, unnormalised, digits):
    path, x, logits = unnormalised
    r, model, meta = loaded(tmp_path, path, "none", digits)
    with torch.no_grad():
        assert torch.equal(
            model(x), logits
        )  # an identity Normalize: the same function, bit for bit
    assert meta["input_normalization"] == "none"
    # had the suite's normalisation been put in front of it, it would be another function
    _, other, _ = loaded(tmp_path / "suite", path, "suite", digits)
    with torch.no_grad():
        assert not torch.equal(other(x), logits)


def test_a_bare_network_must_say_how_it_was_normalised(tmp_path, unnormalised, digits):
    path, _, _ = unnormalised
    with pytest.raises(RbenchError, match="bare network .* --input-normalization none"):
        runner(tmp_path, path).run()  # refused before any data is read or anything trained
    assert not (tmp_path / "cache").exists() and not (tmp_path / "results").exists()


def test_the_normalisation_choice_is_part_of_the_dense_key(tmp_path, unnormalised):
    path, _, _ = unnormalised
    suite, cpu = get_suite("digits"), torch.device("cpu")
    keys = {n: dense_key(suite, 0, cpu, str(path), n) for n in (None, "none", "suite")}
    assert len(set(keys.values())) == 3
    assert keys[None] == dense_key(suite, 0, cpu, str(path))  # the keys of before stay


def test_rbench_own_cached_dense_model_loads_as_it_is(tmp_path, unnormalised, digits):
    path, x, logits = unnormalised
    r, _, _ = loaded(tmp_path, path, "none", digits)
    cached = r.store.dir("dense", r.stages.keys["dense"]) / "tensors.safetensors"
    assert "normalize.mean" in read_checkpoint(cached)  # the cache's `model.` prefix is gone
    _, again, meta = loaded(tmp_path / "again", cached, None, digits)
    with torch.no_grad():
        assert torch.equal(again(x), logits)
    assert meta["input_normalization"] == "checkpoint"  # it carries its own (identity) Normalize
    with pytest.raises(RbenchError, match="carries its own input normalisation"):
        runner(tmp_path / "conflict", cached, "suite").run()


def test_a_whole_model_checkpoint_agrees_with_suite(tmp_path, dense_checkpoint, digits):
    _, model, meta = loaded(tmp_path, dense_checkpoint, "suite", digits)
    assert meta["input_normalization"] == "checkpoint"
    with pytest.raises(RbenchError, match="which is not --input-normalization none"):
        runner(tmp_path / "none", dense_checkpoint, "none").run()


def test_safetensors_under_another_name_is_recognised(tmp_path, trained_digits_model):
    path = tmp_path / "weights.bin"
    save_file({k: v.contiguous() for k, v in trained_digits_model.state_dict().items()}, path)
    assert set(read_checkpoint(path)) == set(trained_digits_model.state_dict())


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: p.write_text("my notes\n"), "neither a safetensors file nor a torch checkpoint"),
        (lambda p: p.mkdir(), "is a folder, not a checkpoint file"),
        (lambda p: torch.save({}, p), "holds no tensors"),
        (lambda p: torch.save({"w": 3}, p), "not a state dict of tensors"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated zip"), "not a readable torch checkpoint"),
        (
            lambda p: p.write_bytes(pickle.dumps({"w": Payload(str(p) + ".pwned")}, protocol=2)),
            r"could not be loaded safely \(weights_only=True\): it holds Python objects",
        ),
    ],
    ids=["text", "folder", "empty", "not tensors", "bad zip", "code pickle"],
)
def test_unreadable_checkpoints_are_one_clear_line(tmp_path, make, expected):
    path = tmp_path / "c.pt"
    make(path)
    with pytest.raises(RbenchError, match=expected) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and "weights_only set to False" not in message
    assert "Re-running" not in message and "pop from empty list" not in message
    assert not (tmp_path / "c.pt.pwned").exists()
