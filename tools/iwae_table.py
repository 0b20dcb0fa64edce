#!/usr/bin/env python3
"""Burda, Grosse & Salakhutdinov (2016), Table 1, with train_mnist: the IWAE paper's protocol
for the VAE and IWAE rows at k = 1, 5, 50, one and two stochastic layers, and a Markdown table
of each run's test -log p(x) (K = 5,000 importance samples) beside the paper's.

Unchanged (--passes 3280, batch 20) it runs the paper's full schedule: 3,280 passes a row, far
beyond a software adapter (docs/models.md gives the time per pass measured here). --passes N
compresses the schedule (stage i runs max(1, round(3^i N / 3280)) passes); --rows picks rows;
--final-eval estimates -log p(x) once after training instead of at each stage's end. The rows'
run directories and the table go under --out; a row whose run finished is not trained again.

    python3 tools/iwae_table.py --passes 40 --rows vae1-5,iwae1-5 --final-eval --out runs/iwae

Standard library only; runs the release examples through cargo.
"""

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

PAPER = {  # (layers, model, k) -> test -log p(x), the paper's Table 1
    (1, "vae", 1): 86.76, (1, "vae", 5): 86.47, (1, "vae", 50): 86.35,
    (1, "iwae", 1): 86.76, (1, "iwae", 5): 85.54, (1, "iwae", 50): 84.78,
    (2, "vae", 1): 85.33, (2, "vae", 5): 85.01, (2, "vae", 50): 84.78,
    (2, "iwae", 1): 85.33, (2, "iwae", 5): 83.89, (2, "iwae", 50): 82.90,
}
ALL_ROWS = [f"{m}{layers}-{k}" for layers in (1, 2) for m in ("vae", "iwae") for k in (1, 5, 50)]


def stages(passes):
    """Epochs per stage, as LrSchedule::Burda computes them (round half away from zero)."""
    return [max(1, math.floor(3**i * passes / 3280 + 0.5)) for i in range(8)]


def parse_row(name):
    """'iwae1-5' -> (1, 'iwae', 5)."""
    model, rest = None, None
    for m in ("iwae", "vae"):
        if name.startswith(m):
            model, rest = m, name[len(m):]
            break
    try:
        layers, k = rest.split("-")
        layers, k = int(layers), int(k)
    except (AttributeError, ValueError):
        raise SystemExit(f"row {name!r}: expected vae|iwae, layers 1|2, '-', k, e.g. iwae1-5")
    if (layers, model, k) not in PAPER:
        raise SystemExit(f"row {name!r}: the table has no such row (rows: {', '.join(ALL_ROWS)})")
    return layers, model, k


def flags(layers, model, k, passes, batch, final_eval, eval_k):
    f = ["--activation", "tanh", "--hidden", "200,200", "--adam-eps", "1e-4",
         "--batch-size", str(batch), "--limit-train", "59600", "--binarize", "dynamic",
         "--output-bias", "mean", "--lr-schedule", "burda", "--passes", str(passes),
         "--epochs", str(sum(stages(passes)))]
    f += ["--latent", "50"] if layers == 1 else ["--latent", "100", "--top", "50:100x100"]
    if model == "iwae":
        f += ["--objective", "iwae", "--iw-k", str(k)]
    elif k > 1:
        f += ["--mc-samples", str(k)]
    if not final_eval:
        f += ["--eval-iw", str(eval_k)]
    return f


def last_iw(run):
    """The last test_iw_nll in the run's metrics.jsonl, or None."""
    path = run / "metrics.jsonl"
    if not path.exists():
        return None
    values = [json.loads(line).get("test_iw_nll") for line in path.read_text().splitlines() if line.strip()]
    values = [v for v in values if v is not None]
    return values[-1] if values else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--passes", type=int, default=3280, help="nominal passes (3280: the paper's schedule)")
    p.add_argument("--batch", type=int, default=20, help="batch size (the paper's is 20)")
    p.add_argument("--rows", default=",".join(ALL_ROWS), help="comma-separated rows, e.g. vae1-5,iwae1-5")
    p.add_argument("--eval-k", type=int, default=5000, help="importance samples of the test estimate")
    p.add_argument("--final-eval", action="store_true", help="estimate once, after training")
    p.add_argument("--out", default="runs/iwae-table")
    a = p.parse_args()
    if a.passes < 1 or a.batch < 1:
        raise SystemExit("--passes and --batch must be at least 1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.strip() for r in a.rows.split(",") if r.strip()]
    results = []
    for name in rows:
        layers, model, k = parse_row(name)
        run = out / name
        iw = last_iw(run)
        epochs = sum(stages(a.passes))
        done = (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) >= epochs
        if not done:
            cmd = ["cargo", "run", "--release", "--example", "train_mnist", "--"]
            cmd += flags(layers, model, k, a.passes, a.batch, a.final_eval, a.eval_k)
            cmd += ["--out", str(run), "--overwrite"]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True)
            iw = last_iw(run)
        if a.final_eval:
            report = out / f"{name}.eval.json"
            if not report.exists():
                cmd = ["cargo", "run", "--release", "--example", "explore", "--", "--checkpoint", str(run),
                       "--eval-iw", str(a.eval_k), "--out", str(out / f"{name}-explore")]
                print("+", " ".join(cmd), flush=True)
                res = subprocess.run(cmd, check=True, capture_output=True, text=True)
                line = [l for l in res.stdout.splitlines() if l.startswith("{")][-1]
                report.write_text(line + "\n")
            iw = json.loads(report.read_text()).get("test_iw_nll")
        results.append((name, layers, model, k, iw))
    lines = [
        f"Schedule: {a.passes} nominal passes ({sum(stages(a.passes))} epochs, stages {stages(a.passes)}), "
        f"batch {a.batch}; test -log p(x) with K = {a.eval_k}"
        + (" after training." if a.final_eval else " at the last stage's end."),
        "",
        "| row | layers | objective | k | test −log p(x) | paper |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, layers, model, k, iw in results:
        what = "IWAE" if model == "iwae" else ("VAE" if k == 1 else f"VAE, ELBO averaged over k draws")
        shown = f"{iw:.2f}" if iw is not None else "—"
        lines.append(f"| {name} | {layers} | {what} | {k} | {shown} | {PAPER[(layers, model, k)]:.2f} |")
    table = "\n".join(lines) + "\n"
    (out / "table.md").write_text(table)
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
