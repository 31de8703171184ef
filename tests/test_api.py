"""The Python API (rbench.api) and the command line's --json: docs/api.md's example runs as
written; the CLI's run and sweep go through the API; `--json` on run, list, sweep and check
prints one JSON document on stdout and nothing else."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import tiny_cli_script
from test_leaderboard import make_record, write

from rbench import api
from rbench.core.errors import RbenchError
from rbench.methods import load_methods
from rbench.regress import CheckReport, Comparison

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


@pytest.mark.slow
def test_the_documented_example_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks((ROOT / "docs" / "api.md").read_text())
    assert len(blocks) == 2 and "api.run(" in blocks[0] and "api.leaderboard(" in blocks[0]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RBENCH_CACHE", str(tmp_path / "cache"))
    scope: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), scope)
    out = capsys.readouterr().out
    assert "AutoAttack" in out and "unknown run option 'epoch' (did you mean 'epochs'?)" in out
    assert Path(scope["record"]["_path"]).resolve().is_relative_to((tmp_path / "results").resolve())
    assert len(scope["table"]) == 2 and "aa_bits" not in scope["table"].columns
    assert (tmp_path / "board" / "LEADERBOARD.md").is_file()
    assert (tmp_path / "board" / "index.html").is_file()
    assert len(list((tmp_path / "cache" / "dense").iterdir())) == 1  # trained once


def test_options_are_checked_and_typed_like_the_command_line():
    cfg = api.config("magnitude", 4, suite="digits", opts={"lr": 0.02, "scope": "layer"})
    assert cfg.opts == (("lr", "0.02"), ("scope", "layer")) and cfg.suite == "digits"
    assert api.config("cstar", 2, results_dir=Path("out")).results_dir == "out"
    with pytest.raises(RbenchError, match="unknown run option 'seeds' \\(did you mean 'seed'"):
        api.config("magnitude", 4, seeds=1)
    with pytest.raises(RbenchError, match="--ratio"):  # the CLI's own check, before any compute
        api.run("magnitude", 0.5, suite="digits")
    with pytest.raises(RbenchError, match="give a list"):
        api.sweep("magnitude", [4])


def test_load_records_gives_one_flat_row_per_record(tmp_path):
    root = write(tmp_path / "in", [make_record("magnitude", 4, seed=s) for s in (0, 1)])
    (root / "broken.json").write_text("{")
    table = api.load_records(root)
    assert len(table) == 2 and sorted(table["seed"]) == [0, 1]
    assert {"method", "ratio", "clean", "autoattack", "macs_ratio", "path"} <= set(table.columns)
    assert not {"aa_bits", "curve"} & set(table.columns)  # per-point arrays stay in the records
    assert [line.split(":")[0] for line in table.attrs["skipped"]] == [str(root / "broken.json")]
    with pytest.raises(RbenchError, match="does not exist"):
        api.load_records(tmp_path / "nowhere")


def test_rbench_run_goes_through_the_api_and_json_prints_only_the_record(cli, monkeypatch):
    seen = []

    def fake(cfg):
        seen.append(cfg)
        return {"schema": "rbench.record/2", "metrics": {"autoattack": {"accuracy": 0.5}}}

    monkeypatch.setattr(api, "run_config", fake)
    result = cli("run", "-m", "magnitude", "-r", "4", "-s", "digits", "--opt", "lr=0.1", "--json")
    assert result.code == 0
    assert json.loads(result.out)["metrics"]["autoattack"]["accuracy"] == 0.5
    assert seen[0].opts == (("lr", "0.1"),) and seen[0].suite == "digits"


def test_list_json_is_one_document(cli):
    methods = cli("list", "methods", "--json")
    assert methods.code == 0
    names = [m["name"] for m in json.loads(methods.out)["methods"]]
    assert names == sorted(load_methods())
    suites = json.loads(cli("list", "suites", "--json").out)["suites"]
    digits = next(s for s in suites if s["name"] == "digits")
    assert digits["embedded"] and digits["threat"] == {"norm": "Linf", "eps": "0.1"}


def test_sweep_json_is_one_document_and_goes_through_the_api(cli, monkeypatch):
    import rbench.sweep

    calls = []

    def fake(base, methods, ratios, seeds, executor, slurm, say, max_parallel):
        calls.append((base, methods, ratios, seeds))
        say("sweep: 1/2 done, 0 running, 1 failed, 0 waiting")
        return {
            "magnitude-r4-s0": {"status": "done", "record": "r.json", "autoattack": 0.5},
            "magnitude-r4-s1": {"status": "failed", "error": "boom"},
        }

    monkeypatch.setattr(rbench.sweep, "sweep", fake)
    result = cli("sweep", "--methods", "magnitude", "--ratios", "4", "--seeds", "0,1", "--json")
    assert result.code == 1  # a failed job still fails the command
    document = json.loads(result.out)
    assert document["done"] == 1 and document["failed"] == 1
    assert document["jobs"]["magnitude-r4-s1"]["error"] == "boom"
    assert "1/2 done" in result.err and calls[0][1:] == (["magnitude"], [4.0], [0, 1])
    assert calls[0][0].quiet


def test_check_json_is_one_document(cli, monkeypatch):
    import rbench.regress

    report = CheckReport(baseline_path=Path("leaderboard/baseline.json"))
    report.rows = [Comparison("magnitude", "autoattack", 0.6, 0.5, 0.12, "pass")]
    report.messages = ["new hydra: not in the baseline"]
    monkeypatch.setattr(rbench.regress, "run_check", lambda *a, **k: report)
    result = cli("check", "--methods", "magnitude", "--json")
    assert result.code == 0
    document = json.loads(result.out)
    assert document["passed"] and document["rows"][0]["drop"] == pytest.approx(0.1)
    assert document["messages"] == ["new hydra: not in the baseline"]


@pytest.mark.slow
def test_rbench_run_json_pipes_into_json_tool(tmp_path):
    """The acceptance line: `rbench run --json ... | python -m json.tool` works."""
    script = tmp_path / "rbench_tiny.py"
    script.write_text(tiny_cli_script("digits-json", compress_epochs=0.2, batch_size=40))
    args = ["-m", "magnitude", "-r", "4", "-s", "digits-json", "--json", "--device", "cpu"]
    args += ["--cache-dir", str(tmp_path / "c"), "--results-dir", str(tmp_path / "r")]
    run = subprocess.Popen(
        [sys.executable, str(script), "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tool = subprocess.run(
        [sys.executable, "-m", "json.tool"], stdin=run.stdout, capture_output=True, text=True
    )
    run.stdout.close()
    err = run.stderr.read().decode()
    assert run.wait() == 0, err
    assert tool.returncode == 0, tool.stderr
    record = json.loads(tool.stdout)
    assert record["method"]["name"] == "magnitude" and Path(record["_path"]).is_file()
    assert "compress: magnitude" in err  # the progress lines went to stderr
