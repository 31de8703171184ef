"""`rbench export --format robustbench`: a suite's leaderboard rows as RobustBench model-info
entries, one JSON file per row (a method, variant, ratio and budget, its seeds pooled), laid out
as RobustBench's `model_info/<dataset>/<threat model>/<model id>.json`.

The fields are RobustBench's: name, link, authors, additional_data, number_forward_passes,
dataset, venue, architecture, eps, clean_acc, reported, autoattack_acc, unreliable, footnote.
Accuracies are percentages written as strings with two decimals, as RobustBench writes them:
`clean_acc` on the whole test split and `autoattack_acc` on the protocol's `n_eval` points
(means over seeds). rbench keeps a method's citation as one line of free text, so `name` says
what the model is, `link` is the paper's arXiv page when the citation names one, and `authors`
and `venue` are left for the submitter to fill in; the footnote carries the citation and how
rbench measured the row (suite, protocol, points, seeds, budget, measured and MACs ratios).
`reported` (the paper's own number) is empty: no paper reports these compressed models.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from rbench.core.errors import RbenchError
from rbench.core.suites import get_suite
from rbench.report.rows import aggregate
from rbench.store.cache import atomic_write_text

FORMATS = ("robustbench",)
_ARXIV = re.compile(r"arXiv:\s*(\d{4}\.\d{4,5})", re.I)
_ARCHS = {"smallcnn": "SmallCNN", "lenet300": "LeNet-300-100", "lenet5": "LeNet-5"}
_ARCHS |= {"vgg16": "VGG-16-BN", "resnet18": "ResNet-18"}


def architecture(arch: str) -> str:
    """An rbench architecture id as RobustBench names architectures."""
    if m := re.fullmatch(r"wrn(\d+)-(\d+)", arch):
        return f"WideResNet-{m[1]}-{m[2]}"
    if arch.startswith("timm:"):
        return f"{arch[5:]} (timm)"
    return _ARCHS.get(arch, arch)


def _pct(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{float(value):.2f}"


def _model_id(row) -> str:
    """A file name in RobustBench's style: what the model is, and nothing a path could misuse."""
    variant = "" if row["variant"] == "harness" else f"_{row['variant']}"
    text = f"rbench_{row['suite']}_{row['method']}{variant}_r{row['ratio']:g}_{row['budget_epochs']:g}ep"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:150]


def entry(row, record: dict) -> dict:
    """One RobustBench model-info entry for an aggregated leaderboard row; `record` is one of
    its records (for the citation, the architecture and the threat model)."""
    suite, method = record["suite"], record["method"]
    citation = str(method.get("citation", ""))
    arxiv = _ARXIV.search(citation)
    protocol = f"{row['protocol']}, n={row['n_eval']}"
    seeds = f"{row['n_seeds']} seed{'s' if row['n_seeds'] != 1 else ''} ({row['seeds']})"
    lo, hi = row.get("aa_ci_low"), row.get("aa_ci_high")
    interval = f" [{_pct(lo)}, {_pct(hi)}] (Wilson 95%, seeds pooled)" if lo is not None else ""
    standard = "" if row["protocol"] == "standard" else " Not AutoAttack's standard version."
    flags = f" Flags: {row['flags']}." if row.get("flags") else ""
    footnote = (
        f"Compressed {row['ratio']:g}x by {method['name']} ({row['variant']}) from rbench's "
        f"adversarially trained dense model of suite {suite['name']} v{suite['version']}, "
        f"within {row['budget_epochs']:g} AT-epochs; measured ratio "
        f"{_pct(row.get('ratio_measured'))}, MACs ratio {_pct(row.get('macs_ratio'))}. "
        f"AutoAttack ({protocol}) on the first {row['n_eval']} test points, {seeds}"
        f"{interval}.{standard}{flags} Method: {citation}"
    )
    return {
        "name": f"{method['name']} ({row['variant']}) at {row['ratio']:g}x compression, rbench",
        "link": f"https://arxiv.org/abs/{arxiv.group(1)}" if arxiv else "",
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": str(suite["dataset"]),
        "venue": "",
        "architecture": f"{architecture(str(suite['arch']))}, {row['ratio']:g}x compressed",
        "eps": str(suite["threat"]["eps"]),
        "clean_acc": _pct(row["clean"]),
        "reported": "",
        "autoattack_acc": _pct(row["autoattack"]),
        "unreliable": bool(row["unreliable"]),
        "footnote": footnote,
    }


def export(
    dirs: list[Path], suite: str, out: Path, fmt: str = "robustbench", protocol: str = "standard"
) -> tuple[list[Path], list[str]]:
    """Write one entry per leaderboard row of `suite` (records under `dirs`, those of
    `protocol`) into out/<dataset>/<norm>/. Returns the files written and the records skipped."""
    from rbench.report.leaderboard import load_records

    if fmt not in FORMATS:
        raise RbenchError(f"unknown export format '{fmt}' (choose {', '.join(FORMATS)})")
    known = get_suite(suite)  # a typo is an error, not an empty export
    known.protocol(protocol)  # and so is a protocol the suite does not have
    # the folder from rbench's own definition of the suite, never from a record's text
    folder = Path(out) / known.dataset / known.threat.norm
    loaded = load_records([Path(d) for d in dirs])
    mine = [
        r
        for r in loaded.records
        if r["suite"]["name"] == suite and str(r["protocol"]["name"]) == protocol
    ]
    if not mine:
        raise RbenchError(
            f"no valid records of suite '{suite}' with protocol '{protocol}' under "
            f"{', '.join(map(str, dirs))}"
        )
    table = aggregate(mine, loaded.skipped)
    written = []
    for _, row in table.iterrows():
        record = next(r for r in mine if r["method"]["name"] == row["method"])
        path = folder / f"{_model_id(row)}.json"
        if path in written:  # same id for two settings (another threat or protocol key)
            path = folder / f"{_model_id(row)}_{row['protocol_key']}.json"
        # RobustBench's field order, not sorted
        atomic_write_text(path, json.dumps(entry(row, record), indent=2) + "\n")
        written.append(path)
    return written, loaded.skipped
