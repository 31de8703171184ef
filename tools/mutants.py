"""Mutation testing of rbench's evaluation, budget, training losses, masks and method objectives.

Each mutant is one plausible one-line bug: an exact piece of text in one source file and its
replacement. For each mutant, in turn, this script writes the mutated file into a scratch copy of
the tree (bench/ as the package `rbench`, methods/ as `rbench.methods`, tests/, pyproject.toml),
runs the tests that guard that code there (the fast ones, `-m "not slow and not gpu"`, stopping
at the first failure) with the copy first on PYTHONPATH, and restores the file. The real files
are never written. A mutant is killed when pytest fails (or runs past the timeout), survives when
every selected test passes. Before the mutants, every selected test group runs once unmutated:
a group that fails there would kill mutants for the wrong reason, so the run stops.

    python tools/mutants.py                 # every mutant (make mutants), one pytest at a time
    python tools/mutants.py --list          # the mutants, without running them
    python tools/mutants.py --only E01,T02  # some of them
    python tools/mutants.py --json out.json # also write the results

Standard library only. docs/mutation.md holds the measured score and the accepted survivors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# the tests that guard each part (pytest node ids relative to the repository root)
ATTACKS = ("tests/test_attack_properties.py",)
EVALUATE = (*ATTACKS, "tests/test_evaluate.py")
NATIVE = (*ATTACKS, "tests/test_native.py")
METER = (
    "tests/test_integrity.py::test_five_percent_over_the_allowance_is_tolerated_and_more_is_stopped",
    "tests/test_objectives.py",
)
RATIO = ("tests/test_ratio.py", "tests/test_traits.py")
TRAINER = ("tests/test_objectives.py",)
ADMM_TESTS = ("tests/test_traits.py", "tests/test_radmm.py")
OBJECTIVE = "tests/test_objectives.py::test_each_phase_trains_on_its_papers_objective"


def method_tests(name: str) -> tuple[str, ...]:
    """The objective and trait tests, then the method's own test file where it has one."""
    own = f"tests/test_{name}.py"
    return (OBJECTIVE, "tests/test_traits.py") + ((own,) if (ROOT / own).exists() else ())


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    old: str  # exact text, replaced at its `nth` occurrence (1-based)
    new: str
    tests: tuple[str, ...]
    what: str
    nth: int = 1


M = Mutant
MUTANTS = [
    # ---------------------------------------------------------------- the evaluation stage
    M("E01", "bench/evaluation.py", "aa = aa & clean_points", "aa = aa", ATTACKS,
      "AutoAttack's robust points not ANDed with clean-correct"),
    M("E02", "bench/evaluation.py", "points = data.test.head(protocol.n_eval)",
      "points = data.test.part(1, protocol.n_eval + 1)", ATTACKS,
      "the attacked points are shifted by one id"),
    M("E03", "bench/evaluation.py", "clean_points = clean[:n]", "clean_points = clean[-n:]",
      ATTACKS, "clean-correct bits taken from the wrong points"),
    M("E04", "bench/evaluation.py", "part = points.part(start, stop)",
      "part = points.part(0, stop - start)", ATTACKS, "every AutoAttack chunk attacks chunk 0"),
    M("E05", "bench/evaluation.py", '"ids_sha256": content_hash(points.ids.cpu().tolist(), 64)',
      '"ids_sha256": content_hash(data.test.ids.cpu().tolist(), 64)', ATTACKS,
      "the recorded ids are not the attacked ones"),
    M("E06", "bench/evaluation.py", "ev.pgd_correct(model, points, threat, protocol.pgd, device, seed, p",
      "ev.pgd_correct(model, data.test, threat, protocol.pgd, device, seed, p", ATTACKS,
      "PGD attacks the whole test split, not the evaluation points"),
    # ---------------------------------------------------------------- accuracy.py
    M("A01", "bench/evaluate/accuracy.py", "correct = model(x).argmax(1) == y",
      "correct = torch.ones_like(y, dtype=torch.bool)", EVALUATE,
      "PGD robust accuracy not ANDed with clean-correct"),
    M("A02", "bench/evaluate/accuracy.py", "for _ in range(spec.restarts):",
      "for _ in range(spec.restarts - 1):", EVALUATE, "one PGD restart fewer (none at 1)"),
    M("A03", "bench/evaluate/accuracy.py", "correct &= model(x_adv).argmax(1) == y",
      "correct |= model(x_adv).argmax(1) == y", EVALUATE, "restarts OR-ed instead of AND-ed"),
    M("A04", "bench/evaluate/accuracy.py", "eps=threat.eps_value,", "eps=2 * threat.eps_value,",
      EVALUATE, "AutoAttack (custom protocol) at twice the threat's eps"),
    M("A05", "bench/evaluate/accuracy.py", "return (y_adv.to(y.device) == y).cpu()",
      "return (y_adv.to(y.device) != y).cpu()", EVALUATE, "AutoAttack's result inverted"),
    M("A06", "bench/evaluate/accuracy.py", "idx = slice(start, start + bs)",
      "idx = slice(start, start + bs - 1)", EVALUATE, "batches drop their last point"),
    M("A07", "bench/evaluate/accuracy.py", "eps = min(threat.eps_value * f, 1.0)",
      "eps = min(threat.eps_value, 1.0)", EVALUATE, "the eps sweep never grows eps"),
    M("A08", "bench/evaluate/accuracy.py", "z * z / (4 * n * n)", "z * z / (2 * n * n)",
      EVALUATE, "Wilson interval half-width formula"),
    # ---------------------------------------------------------------- curves.py, native.py
    M("C01", "bench/evaluate/curves.py", "accuracy = [float((norms > e).float().mean())",
      "accuracy = [float((norms >= e).float().mean())", ATTACKS,
      "the curve counts a point robust at its own minimal norm"),
    M("C02", "bench/evaluate/curves.py", "grid = [eps * span * i / (GRID_POINTS - 1)",
      "grid = [eps * span * i / GRID_POINTS", ATTACKS, "the eps grid misses the suite's eps"),
    M("C03", "bench/evaluate/curves.py", "return flat.abs().amax(1)", "return flat.abs().sum(1)",
      ATTACKS, "L_inf norms measured as L1"),
    M("C04", "bench/evaluate/curves.py",
      "out.append(torch.where(wrong, torch.zeros_like(norms), norms).cpu())",
      "out.append(norms.cpu())", ATTACKS, "misclassified points not given norm 0"),
    M("N01", "bench/evaluate/native.py", "eps = [f * threat.eps_value for f in fractions]",
      "eps = [threat.eps_value for f in fractions]", NATIVE, "FGSM at full eps for every row"),
    M("N02", "bench/evaluate/native.py", "flipped = _predict(model, x_adv) != y",
      "flipped = _predict(model, x_adv) == y", NATIVE, "minimal-L2 'found' inverted"),
    M("N03", "bench/evaluate/native.py", "correct = _predict(model, x) == y",
      "correct = torch.ones_like(y, dtype=torch.bool)", NATIVE,
      "rho_2 over every point, misclassified ones included"),
    M("N04", "bench/evaluate/native.py", "rel = r / xc.flatten(1).norm(dim=1).clamp_min(1e-12)",
      "rel = r", NATIVE, "rho_2 not relative to ||x||"),
    # ---------------------------------------------------------------- PGD
    M("P01", "bench/core/pgd.py", ".clamp_(-self.eps, self.eps)", "", EVALUATE,
      "L_inf step not projected onto the ball"),
    M("P02", "bench/core/pgd.py", "        return (x + delta).clamp_(0, 1) - x\n\n\ndef",
      "        return delta\n\n\ndef", EVALUATE, "step not clamped to [0, 1]"),
    M("P03", "bench/core/pgd.py", "delta + self.step_size * grad.sign()",
      "delta - self.step_size * grad.sign()", EVALUATE, "PGD descends the loss"),
    M("P04", "bench/core/pgd.py", "return (x + 0.001 * noise)", "return (x + 0.01 * noise)",
      ATTACKS, "TRADES start at 0.01 N(0, 1)"),
    M("P05", "bench/core/pgd.py",
      'delta = self._kl_start(x, generator) if loss == "kl" else self._start(x, generator)',
      "delta = self._start(x, generator)", ATTACKS, "TRADES starts uniformly in the ball"),
    M("P06", "bench/core/pgd.py", "objective = (other.amax(1) - true).sum()",
      "objective = (true - other.amax(1)).sum()", EVALUATE, "margin loss sign flipped"),
    M("P07", "bench/core/pgd.py", "delta = (2 * noise - 1) * self.eps",
      "delta = noise * self.eps", ATTACKS, "one-sided random start"),
    # ---------------------------------------------------------------- the meter and the count
    M("B01", "bench/core/budget.py", "self.per_epoch = n_train * (attack_steps + 1)",
      "self.per_epoch = n_train * attack_steps", METER, "an AT-epoch costs k passes, not k + 1"),
    M("B02", "bench/core/budget.py", "self.used_epochs > self.limit_epochs * (",
      "self.used_epochs >= self.limit_epochs * (", METER, "the tolerance's edge refused"),
    M("B03", "bench/core/budget.py", "rows.append((path, int(torch.count_nonzero(w)), w.numel()))",
      "rows.append((path, w.numel(), w.numel()))", RATIO, "masked zeros counted as stored"),
    M("B04", "bench/core/budget.py", "return module.weight_orig * module.weight_mask",
      "return module.weight_orig", RATIO, "the mask ignored by the count"),
    M("B05", "bench/core/budget.py", "return math.floor(n_dense / ratio) + n_layers",
      "return math.floor(n_dense / ratio) + 2 * n_layers", RATIO, "two elements of slack"),
    M("B06", "bench/core/budget.py", "if p.dim() >= 2 and not name.endswith", "if p.dim() >= 1 and "
      "not name.endswith", RATIO, "custom modules' biases counted"),
    # ---------------------------------------------------------------- losses and the loop
    M("T01", "bench/train/trainer.py", "value = 0.5 * F.cross_entropy(clean,",
      "value = 0.25 * F.cross_entropy(clean,", TRAINER, "mixed loss at 0.25 clean"),
    M("T02", "bench/train/trainer.py",
      "kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1),",
      "kl = F.kl_div(F.log_softmax(clean, 1), F.softmax(adv, 1),", TRAINER,
      "TRADES' KL in the other direction"),
    M("T03", "bench/train/trainer.py", "return F.cross_entropy(clean, y) + beta * kl, adv",
      "return F.cross_entropy(adv, y) + beta * kl, adv", TRAINER, "TRADES' CE on x'"),
    M("T04", "bench/train/trainer.py", "        logits = model(x_adv)\n        return F.cross",
      "        logits = model(x)\n        return F.cross", TRAINER, "'adv' trains on clean inputs"),
    M("T05", "bench/train/trainer.py", 'loss="kl" if loss == "trades" else "ce"', 'loss="ce"',
      TRAINER, "TRADES' inner attack maximises CE"),
    M("T06", "bench/train/trainer.py", '"mixed": 2,', '"mixed": 1,', TRAINER,
      "mixed loss charged one pass"),
    M("T07", "bench/train/trainer.py", "meter.charge(len(y), attack.steps)",
      "meter.charge(len(y), attack.steps - 1)", TRAINER, "attack under-charged"),
    M("T08", "bench/train/trainer.py", 'attack_model.train(attack_mode == "train")',
      'attack_model.train(attack_mode == "eval")', TRAINER, "attack mode inverted"),
    M("T09", "bench/train/trainer.py", 'if loss != "ce" and attack is not None:',
      'if loss == "adv" and attack is not None:', TRAINER, "mixed/TRADES get no attack"),
    M("X01", "bench/train/context.py", 'attack=(attack or self.train_attack) if loss != "ce" else None',
      "attack=None", TRAINER, "the context hands out no attack"),
    M("X02", "bench/train/context.py", "per_epoch = (steps + LOSS_PASSES[loss]) / (k + 1)",
      "per_epoch = (steps + 1) / (k + 1)", TRAINER, "affordable epochs ignore the loss' price"),
    # ---------------------------------------------------------------- masks and ADMM
    M("K01", "bench/layers/masks.py", "    if exact:\n", "    if False:\n", RATIO,
      "keep_counts(exact=True) ignored"),
    M("K02", "bench/layers/masks.py", "m.weight_orig.mul_(m.weight_mask)", "pass", RATIO,
      "reapply_masks does nothing"),
    M("K03", "bench/layers/masks.py", "max(1, math.floor(budget * w / weight_total))",
      "max(1, round(budget * w / weight_total))", RATIO, "per-layer shares rounded, not floored"),
    M("K04", "bench/layers/masks.py", "score = score or (lambda m: m.weight.detach().abs())",
      "score = score or (lambda m: m.weight.detach())", RATIO, "magnitude by signed value"),
    M("D01", "bench/train/admm.py", "self.Z[n] = self.project(n, w + self.U[n])",
      "self.Z[n] = self.project(n, w)", ADMM_TESTS, "the dual never reaches the projection"),
    M("D02", "bench/train/admm.py", "self.U[n] += w - self.Z[n]", "self.U[n] += self.Z[n] - w",
      ADMM_TESTS, "U-step sign flipped"),
    M("D03", "bench/train/admm.py", "(w - self.Z[n] + self.U[n]).pow(2).sum()",
      "(w - self.Z[n]).pow(2).sum()", ADMM_TESTS, "penalty without the dual"),
    # ---------------------------------------------------------------- each method's objective
    M("m01", "methods/magnitude.py", 'loss = "trades" if cfg.variant == "paper" else "adv"',
      'loss = "trades" if cfg.variant == "paper" else "ce"', method_tests("magnitude"),
      "magnitude's harness fine-tunes naturally"),
    M("m02", "methods/hydra.py", 'return "trades" if self.config.variant == "paper" else "adv"',
      'return "adv"', method_tests("hydra"), "HYDRA's paper variant without TRADES"),
    M("m03", "methods/hydra.py", "trades_beta=cfg.trades_beta,", "trades_beta=1.0,",
      method_tests("hydra"), "TRADES beta ignored"),
    M("m04", "methods/hydra.py", "attach_scores(model, self.plan(model, budget.ratio))",
      "attach_scores(model, self.plan(model, budget.ratio), init=lambda w: w.detach().abs())",
      method_tests("hydra"), "scores start at |W|, not the scaled init"),
    M("m05", "methods/lth_adv.py", '"loss": "mixed",  # the paper', '"loss": "adv",  # the paper',
      method_tests("lth_adv"), "lth-adv harness back to pure PGD-AT"),
    M("m06", "methods/lth_adv.py", "(cfg.output_rate_factor if p == layers[-1] else 1.0)",
      "(cfg.output_rate_factor if p == layers[0] else 1.0)", method_tests("lth_adv"),
      "the half rate on the first layer"),
    M("m07", "methods/lth_adv.py", '"label_smoothing": 0.1,', '"label_smoothing": 0.0,',
      method_tests("lth_adv"), "paper recipe without label smoothing"),
    M("m08", "methods/radmm.py", "updates = {math.floor(i * total / rounds)",
      "updates = {round(i * total / rounds)", method_tests("radmm"), "updates placed by round"),
    M("m09", "methods/radmm.py", "total = max(1, math.floor(epochs * len(",
      "total = max(1, round(epochs * len(", method_tests("radmm"), "steps counted by round"),
    M("m10", "methods/radmm.py", 'attack_mode="train" if cfg.variant == "paper" else "eval",',
      'attack_mode="eval",', method_tests("radmm"), "paper ADMM attack in eval mode"),
    M("m11", "methods/radmm.py", "hooks=StepHooks(regularizer=admm.penalty, after_step=",
      "hooks=StepHooks(after_step=", method_tests("radmm"), "ADMM without its penalty"),
    M("m12", "methods/radmm.py", 'loss="adv",', 'loss="ce",', method_tests("radmm"),
      "radmm retrains naturally", nth=2),
    M("m13", "methods/cstar.py", 'loss="adv",', 'loss="ce",', method_tests("cstar"),
      "CSTAR's ADMM phase natural"),
    M("m14", "methods/cstar.py", "hooks=StepHooks(regularizer=admm.penalty, after_step=",
      "hooks=StepHooks(after_step=", method_tests("cstar"), "CSTAR's ADMM without its penalty"),
    M("m15", "methods/orth_lowrank.py", '("ce" if paper else "adv")', '("adv" if paper else "adv")',
      method_tests("orth_lowrank"), "CondLR paper variant trained adversarially"),
    M("m16", "methods/orth_lowrank.py",
      "sign = torch.diagonal(r).sign().masked_fill_(torch.diagonal(r) == 0, 1)",
      "sign = torch.ones_like(torch.diagonal(r))", method_tests("orth_lowrank"),
      "QR without the sign fix"),
    M("m17", "methods/orth_lowrank.py", 'model.load_state_dict(best["state"])', "pass",
      method_tests("orth_lowrank"), "best checkpoint not restored"),
    M("m18", "methods/orth_lowrank.py", "on_epoch_end=keep_best if paper else None,",
      "on_epoch_end=None,", method_tests("orth_lowrank"), "best checkpoint never tracked"),
    M("m19", "methods/sparse_robust.py", 'loss = "ce" if cfg.variant == "paper" else "adv"',
      'loss = "ce"', method_tests("sparse_robust"), "sparse-robust harness trains naturally"),
    M("m20", "methods/tscnc.py", '            loss="adv",', '            loss="ce",',
      method_tests("tscnc"), "TSCNC trains naturally"),
    M("m21", "methods/tscnc.py", "hooks=StepHooks(regularizer=self.penalty(nu, conditioning=False)),",
      "hooks=None,", method_tests("tscnc"), "TSC sparsification without its term"),
    M("m22", "methods/dense_ft.py", 'loss="adv",', 'loss="ce",', (OBJECTIVE,),
      "dense-ft control fine-tunes naturally"),
    M("m23", "methods/random_pruning.py", "ratio, exact=True)", "ratio, exact=False)",
      ("tests/test_traits.py",), "random keeps fewer than floor(N/B)"),
]  # fmt: skip


def mutate(text: str, mutant: Mutant) -> str:
    """`text` with the mutant's `nth` occurrence of `old` replaced; ValueError if it is missing."""
    start = -1
    for _ in range(mutant.nth):
        start = text.find(mutant.old, start + 1)
        if start < 0:
            raise ValueError(f"{mutant.id}: occurrence {mutant.nth} of {mutant.old!r} not found")
    return text[:start] + mutant.new + text[start + len(mutant.old) :]


def scratch_tree(dest: Path) -> Path:
    """A copy of the tree in which `import rbench` finds the copy (PYTHONPATH=dest/src)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "bench", dest / "src" / "rbench", ignore=ignore)
    shutil.copytree(ROOT / "methods", dest / "src" / "rbench" / "methods", ignore=ignore)
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)
    (dest / "leaderboard").mkdir()
    shutil.copy2(ROOT / "leaderboard" / "baseline.json", dest / "leaderboard")
    shutil.copy2(ROOT / "pyproject.toml", dest)
    return dest


def in_scratch(tree: Path, path: str) -> Path:
    if path.startswith("bench/"):
        return tree / "src" / "rbench" / path.removeprefix("bench/")
    if path.startswith("methods/"):
        return tree / "src" / "rbench" / "methods" / path.removeprefix("methods/")
    raise ValueError(f"mutants apply to bench/ and methods/ only, not {path}")


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout' | 'error', seconds, last output line) of one pytest."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider"]
    cmd += ["-m", "not slow and not gpu", *tests]
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", time.perf_counter() - start, f"over {timeout:g} s"
    seconds = time.perf_counter() - start
    lines = [line for line in out.strip().splitlines() if line.strip()]
    tail = lines[-1] if lines else ""
    # pytest: 0 all passed, 1 some failed, 2 interrupted (e.g. an import error), 5 none collected
    status = {0: "passed", 1: "failed", 2: "failed"}.get(proc.returncode, "error")
    return status, seconds, tail


def check_imports(tree: Path) -> None:
    """The scratch copy, not the installed tree, must be what the tests import."""
    code = "import rbench, rbench.methods.magnitude as m; print(rbench.__file__); print(m.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tree, capture_output=True,
                         text=True, check=True).stdout.split()  # fmt: skip
    if not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in out):
        raise SystemExit(f"the scratch tree is not what Python imports: {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutant ids")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per pytest run")
    parser.add_argument("--skip-clean", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    chosen = MUTANTS
    if args.only:
        wanted = set(args.only.split(","))
        chosen = [m for m in MUTANTS if m.id in wanted]
        if unknown := wanted - {m.id for m in chosen}:
            parser.error(f"unknown mutant ids: {', '.join(sorted(unknown))}")
    for m in chosen:  # every mutant must still apply to today's source
        mutate((ROOT / m.path).read_text(encoding="utf-8"), m)
    if args.list:
        for m in chosen:
            print(f"{m.id}  {m.path}: {m.what}")
        return 0
    results = []
    with tempfile.TemporaryDirectory(prefix="rbench-mutants-") as tmp:
        tree = scratch_tree(Path(tmp))
        check_imports(tree)
        if not args.skip_clean:
            for tests in sorted({m.tests for m in chosen}):
                status, seconds, tail = run_tests(tree, tests, args.timeout)
                print(f"clean   {seconds:6.1f}s  {' '.join(tests)}: {tail}", flush=True)
                if status != "passed":
                    print("the unmutated tree fails these tests: fix that first", file=sys.stderr)
                    return 2
        for m in chosen:
            target = in_scratch(tree, m.path)
            original = target.read_text(encoding="utf-8")
            target.write_text(mutate(original, m), encoding="utf-8")
            try:
                status, seconds, tail = run_tests(tree, m.tests, args.timeout)
            finally:
                target.write_text(original, encoding="utf-8")
            verdict = {"failed": "killed", "timeout": "killed", "passed": "SURVIVED"}.get(
                status, "error"
            )
            results.append({"id": m.id, "path": m.path, "what": m.what, "verdict": verdict,
                            "status": status, "seconds": round(seconds, 1), "tail": tail})  # fmt: skip
            print(f"{verdict:8s} {seconds:6.1f}s  {m.id} {m.path}: {m.what}", flush=True)
    killed = sum(r["verdict"] == "killed" for r in results)
    errors = [r for r in results if r["verdict"] == "error"]
    print(f"\nmutation score: {killed}/{len(results)} killed ({100 * killed / len(results):.1f}%)")
    for r in results:
        if r["verdict"] != "killed":
            print(f"  {r['verdict']}: {r['id']} {r['path']}: {r['what']} ({r['tail']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
