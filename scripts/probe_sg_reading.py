"""Probe of one reading of the paper we did not take: ``s_g = sign(GM(t) - GM(t-1))`` read
literally while clients send gradients (so the reference is minus the sign of the aggregated
gradient), against ours (docs/design.md, "The FedSGD round", step 9).

Runs the ``mnist`` preset (paper scale, no attack) with TESSERACT for ``rounds`` rounds and
prints the test accuracy every 100 rounds and the Table 3 statistic (share of benign clients
with weight above 1e-4, every 10th round). Results and commands: results/README.md, "TESSERACT
without an attack".

    python scripts/probe_sg_reading.py {ours|model_change} ROUNDS SEED
"""

from __future__ import annotations

import sys
import time

import torch

from tesseract_fl.aggregators.base import Rows, RuleResult
from tesseract_fl.aggregators.tesseract import Tesseract
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import build_simulation, resolved_malicious_ids


def main(reading: str, rounds: int, seed: int) -> None:
    if reading not in ("ours", "model_change"):
        raise SystemExit("reading must be 'ours' or 'model_change'")
    if reading == "model_change":
        rule = Tesseract.rule

        def model_change_rule(self: Tesseract, rows: Rows) -> RuleResult:
            out = rule(self, rows)
            if self._s_g is not None:
                self._s_g = -self._s_g  # sign of -lr * update, the global model's change
            return out

        Tesseract.rule = model_change_rule  # type: ignore[method-assign]
    cfg = resolve_config("mnist", overrides=[f"rounds={rounds}", f"seed={seed}"])
    sim = build_simulation(cfg)
    bad = set(resolved_malicious_ids(cfg))
    benign = torch.tensor([i not in bad for i in range(cfg.clients)])
    shares: list[float] = []
    start = time.time()
    for r in range(rounds):
        res = sim.step()
        if r % 10 == 0 or r == rounds - 1:
            shares.append(float((res.aggregate.weights[benign] > 1e-4).double().mean()))
        if (r + 1) % 100 == 0 or r == rounds - 1:
            accuracy, _ = sim.evaluate()
            print(
                f"reading={reading} seed={seed} round={r + 1} accuracy={accuracy:.4f} "
                f"benign_share_above_1e-4={sum(shares) / len(shares):.3f} "
                f"wall={time.time() - start:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
