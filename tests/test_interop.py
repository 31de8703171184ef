"""Interop with the model zoo users have: a RobustBench-style checkpoint (a state dict under
`state_dict` / `model_state_dict`, `module.` prefixes, RobustBench's WideResNet names) and a timm
state dict load as the dense model of an architecture rbench knows; `rbench export --format
robustbench` writes RobustBench's model-info entries for a suite's rows."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import new_digits_model, registered, tiny_digits
from safetensors.torch import save_file
from test_leaderboard import make_record, write

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.data.models import build_model
from rbench.report.export import export
from rbench.store.checkpoint import fit_checkpoint, load_state, read_checkpoint
from rbench.store.interop import foreign_layout

ROBUSTBENCH_FIELDS = [  # RobustBench's model_info/<dataset>/<threat>/<model>.json, in its order
    "name",
    "link",
    "authors",
    "additional_data",
    "number_forward_passes",
    "dataset",
    "venue",
    "architecture",
    "eps",
    "clean_acc",
    "reported",
    "autoattack_acc",
    "unreliable",
    "footnote",
]


def digits_model(arch: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    info = get_suite("digits").data
    return build_model(arch, info.input_shape, info.num_classes, info.mean, info.std).eval()


def load_as(path: Path, arch: str, normalization: str | None) -> torch.nn.Module:
    """What `--dense-checkpoint PATH --input-normalization N` loads into the suite's model."""
    model = digits_model(arch, seed=1)  # other weights than the source
    state, _ = fit_checkpoint(read_checkpoint(path), model, normalization, f"checkpoint '{path}'")
    load_state(model, state, f"checkpoint '{path}'")
    return model.eval()


def same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.rand(16, 1, 8, 8)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def robustbench_wrn_names(state: dict) -> dict:
    """rbench's WideResNet keys as RobustBench's (TRADES') WideResNet names them."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^(block\d+)\.(\d+)\.", r"\1.layer.\2.", key)
        key = key.replace(".shortcut.", ".convShortcut.")
        out[re.sub(r"^bn\.", "bn1.", key)] = value
    return out


@pytest.mark.parametrize("container", ["state_dict", "model_state_dict"])
def test_a_robustbench_style_checkpoint_loads_as_the_dense_model(tmp_path, container):
    source = new_digits_model(seed=3).eval()
    bare = {f"module.{k}": v for k, v in source.net.state_dict().items()}  # DataParallel's
    path = tmp_path / "Someone2024Robust.pt"
    torch.save({container: bare, "epoch": 99, "best_acc": 0.5}, path)
    # RobustBench's models take [0, 1] pixels: the suite's normalisation is put in front here
    # because the source network was trained behind it
    loaded = load_as(path, "smallcnn", "suite")
    assert same_outputs(loaded, source)
    with pytest.raises(RbenchError, match="--input-normalization"):
        load_as(path, "smallcnn", None)  # a bare network must say what it expects


def test_robustbench_wideresnet_names_are_translated(tmp_path):
    source = digits_model("wrn10-2", seed=4)
    net = robustbench_wrn_names(source.net.state_dict())
    assert "block2.layer.0.convShortcut.weight" in net and "bn1.weight" in net
    net["sub_block1.layer.0.bn1.weight"] = torch.ones(16)  # TRADES' unused block
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.items()}}, tmp_path / "wrn.pt")
    loaded = load_as(tmp_path / "wrn.pt", "wrn10-2", "suite")
    assert same_outputs(loaded, source)
    # a layout that matches nothing is left alone, and the loader names what does not fit
    other = {f"module.{k}x": v for k, v in net.items()}
    torch.save({"state_dict": other}, tmp_path / "other.pt")
    with pytest.raises(RbenchError, match="does not fit"):
        load_as(tmp_path / "other.pt", "wrn10-2", "suite")


def test_foreign_layout_renames_only_onto_the_models_exact_keys():
    own = set(digits_model("resnet18").state_dict())
    resnet = {k[len("net.") :]: torch.zeros(1) for k in own if k.startswith("net.")}
    assert foreign_layout(resnet, own) is resnet  # RobustBench's ResNet-18: rbench's names
    assert "net.bn1.weight" in own  # which the WideResNet rule must not touch


@pytest.mark.parametrize("as_file", ["safetensors", "torch-container"])
def test_a_timm_state_dict_loads_for_a_timm_architecture(tmp_path, as_file):
    source = digits_model("timm:resnet18", seed=5)
    state = source.net.state_dict()  # timm's own names, as timm and the HF hub save them
    if as_file == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:  # timm's train.py keeps the state dict beside its metadata
        path = tmp_path / "checkpoint.pth.tar"
        torch.save({"state_dict": state, "arch": "resnet18", "epoch": 3}, path)
    assert same_outputs(load_as(path, "timm:resnet18", "suite"), source)


def test_the_cli_takes_a_robustbench_checkpoint_for_a_suites_architecture(tmp_path, cli):
    base = get_suite("digits")
    suite = replace(base, name="digits-wrn", arch="wrn10-2")
    source = digits_model("wrn10-2", seed=6)
    net = robustbench_wrn_names(source.net.state_dict())
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.items()}}, tmp_path / "rb.pt")
    args = ["--checkpoint", str(tmp_path / "rb.pt"), "--suite", "digits-wrn", "--points", "0"]
    with registered(suite):
        result = cli("diagnose", *args, "--input-normalization", "none", "--json")
    assert result.code == 0, result.err
    layers = json.loads(result.out)["layers"]
    assert any(layer["layer"].endswith("block2.0.shortcut") for layer in layers)


def test_rbench_run_compresses_a_robustbench_checkpoint(tmp_path, cli):
    suite = tiny_digits("digits-rb", dense_epochs=1, compress_epochs=0.2, n_eval=20)
    source = new_digits_model(seed=7)
    bare = {f"module.{k}": v for k, v in source.net.state_dict().items()}
    torch.save({"model_state_dict": bare}, tmp_path / "rb.pt")
    args = ["-m", "magnitude", "-r", "2", "-s", "digits-rb", "--device", "cpu", "-q", "--json"]
    args += ["--dense-checkpoint", str(tmp_path / "rb.pt"), "--input-normalization", "suite"]
    args += ["--cache-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r")]
    with registered(suite):
        result = cli("run", *args)
    assert result.code == 0, result.err
    record = json.loads(result.out)
    assert record["dense"]["source"] == "checkpoint"
    assert record["dense"]["input_normalization"] == "suite"


def test_export_writes_robustbench_entries_per_row(tmp_path):
    records = [make_record("magnitude", 4, seed=s, aa=a, clean=90) for s, a in [(0, 50), (1, 60)]]
    records += [make_record("hydra", 16, aa=30, flags={"robust_above_clean": "x"})]
    records += [make_record("cstar", 4, aa=20, protocol="quick")]  # another protocol: not exported
    for r in records[:2]:
        r["method"]["citation"] = "A, B, Title, Venue 2023 (arXiv:2212.01957)"
    written, skipped = export([write(tmp_path / "in", records)], "digits", tmp_path / "out")
    assert skipped == []
    assert sorted(p.name for p in written) == [
        "rbench_digits_hydra_r16_4ep.json",
        "rbench_digits_magnitude_r4_4ep.json",
    ]
    assert all(p.parent == tmp_path / "out" / "digits" / "Linf" for p in written)
    magnitude = json.loads(
        (tmp_path / "out/digits/Linf/rbench_digits_magnitude_r4_4ep.json").read_text()
    )
    assert list(magnitude) == ROBUSTBENCH_FIELDS
    assert magnitude["autoattack_acc"] == "55.00"  # the seeds' mean, as RobustBench writes it
    assert magnitude["clean_acc"] == "90.00" and magnitude["eps"] == "0.1"
    assert magnitude["link"] == "https://arxiv.org/abs/2212.01957"
    assert magnitude["unreliable"] is False and magnitude["additional_data"] is False
    assert "2 seeds (0,1)" in magnitude["footnote"] and "n=100" in magnitude["footnote"]
    hydra = json.loads((tmp_path / "out/digits/Linf/rbench_digits_hydra_r16_4ep.json").read_text())
    assert hydra["unreliable"] is True and "robust_above_clean" in hydra["footnote"]
    quick, _ = export([tmp_path / "in"], "digits", tmp_path / "quick", protocol="quick")
    assert [p.name for p in quick] == ["rbench_digits_cstar_r4_4ep.json"]
    assert "Not AutoAttack's standard version" in json.loads(quick[0].read_text())["footnote"]
    with pytest.raises(RbenchError, match="no valid records of suite 'mnist5k'"):
        export([tmp_path / "in"], "mnist5k", tmp_path / "none")


def test_rbench_export_json_and_its_errors(tmp_path, cli):
    root = write(tmp_path / "in", [make_record("magnitude", 4)])
    result = cli("export", "--format", "robustbench", "--suite", "digits", "--records", str(root))
    assert result.code == 2 and "--out" in result.err  # required
    args = ["export", "--suite", "digits", "--records", str(root), "--out", str(tmp_path / "o")]
    result = cli(*args, "--json")
    assert result.code == 0
    entries = json.loads(result.out)["entries"]
    assert len(entries) == 1 and Path(entries[0]).is_file()
    assert cli("export", "--suite", "nope", "--records", str(root), "--out", "x").code == 2
