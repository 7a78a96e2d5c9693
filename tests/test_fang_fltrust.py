"""Fang et al.'s framework against FLTrust (Cao et al. 2021's adaptive attack): the deviation
it predicts is the one FLTrust suffers, the ascent reaches the optimum of the formula, and the
attack is refused wherever the server computes no root gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tesseract_fl.aggregators.base import AggregationContext
from tesseract_fl.aggregators.fltrust import FLTrust
from tesseract_fl.attacks import AttackContext, FangFLTrust, fang_fltrust, full_trim, make_attack
from tesseract_fl.attacks.fang_fltrust import fltrust_terms
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore


def _round(seed: int = 0, m: int = 10, c: int = 2, P: int = 400) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(P, generator=gen)
    G = mu + 0.8 * torch.randn(m, P, generator=gen)
    g0 = mu + 0.8 * torch.randn(P, generator=gen)
    mask = torch.zeros(m, dtype=torch.bool)
    mask[:c] = True
    return G, g0, mask


def _fltrust(X: torch.Tensor, g0: torch.Tensor) -> torch.Tensor:
    return FLTrust().aggregate(X, ctx=AggregationContext(root_gradient=g0)).update


def _deviation(G: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, g0: torch.Tensor) -> float:
    g = _fltrust(G, g0)
    X = G.clone()
    X[mask] = rows
    return float(torch.sign(g) @ (g - _fltrust(X, g0)))


def _best_identical(G: torch.Tensor, mask: torch.Tensor, g0: torch.Tensor) -> float:
    """Optimum over identical malicious rows, by a fine search: for a trust ``t`` the best unit
    row is ``t r + sqrt(1 - t^2) u`` (``u`` the unit part of ``-s`` orthogonal to ``r``)."""
    c = int(mask.sum())
    g = _fltrust(G, g0).double()
    s = torch.sign(g)
    r = g0.double() / g0.double().norm()
    n0 = float(g0.double().norm())
    w, ts = fltrust_terms(G[~mask], g0.double())
    A, B = w @ G[~mask].double(), ts.sum()
    u = -s + (s @ r) * r
    u = u / u.norm()
    t = torch.linspace(1e-5, 1.0, 100001, dtype=torch.float64)[:, None]
    E = t * r + torch.sqrt(1 - t * t) * u
    after = (A + n0 * c * t * E) / (B + c * t)
    return float((s @ (g[:, None] - after.T)).max())


def _ascent_per_row(
    G: torch.Tensor, mask: torch.Tensor, g0: torch.Tensor, steps: int, step_size: float
) -> torch.Tensor:
    """The ascent written plainly: every malicious row ``||g0|| e_i`` its own unit vector, the
    deviation of FLTrust's formula (float64) differentiated by autograd."""
    X, r = G.double(), g0.double()
    n0 = r.norm()
    benign = X[~mask]
    ts_b = ((benign @ r) / (benign.norm(dim=1) * n0)).clamp(min=0.0)
    num_b = ts_b @ (benign * (n0 / benign.norm(dim=1))[:, None])
    ts_all = ((X @ r) / (X.norm(dim=1) * n0)).clamp(min=0.0)
    g = (ts_all @ (X * (n0 / X.norm(dim=1))[:, None])) / ts_all.sum()
    s = torch.sign(g)
    E = (r / n0).expand(int(mask.sum()), -1).clone()
    best, best_h = E.clone(), -float("inf")
    for _ in range(steps + 1):
        E.requires_grad_(True)
        ts_m = (E @ r / n0).clamp(min=0.0)
        h = s @ (g - (num_b + n0 * (ts_m @ E)) / (ts_b.sum() + ts_m.sum()))
        if float(h.detach()) > best_h:
            best, best_h = E.detach().clone(), float(h.detach())
        (grad,) = torch.autograd.grad(h, E)
        with torch.no_grad():
            E = E + step_size * grad / grad.norm(dim=1, keepdim=True)
            E = E / E.norm(dim=1, keepdim=True)
    return best * n0


def test_one_shared_row_gives_the_per_row_ascent() -> None:
    G, g0, mask = _round(6, c=3)
    rows, _ = fang_fltrust(G, mask, g0, steps=30)
    ref = _ascent_per_row(G, mask, g0, steps=30, step_size=0.05)
    assert torch.allclose(rows.double(), ref, rtol=1e-4, atol=1e-5 * float(g0.norm()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_predicted_deviation_is_the_one_fltrust_suffers_and_it_is_optimal(seed: int) -> None:
    G, g0, mask = _round(seed)
    rows, record = fang_fltrust(G, mask, g0)
    assert rows.shape == (2, G.shape[1]) and rows.dtype == G.dtype
    # every row lies on FLTrust's hypersphere of radius ||g0||, with positive trust
    assert torch.allclose(rows.norm(dim=1), g0.norm().expand(2), rtol=1e-5)
    assert 0.0 < record["trust"] < 1.0
    actual = _deviation(G, mask, rows, g0)
    assert actual == pytest.approx(record["deviation"], rel=1e-4)
    assert record["deviation"] == pytest.approx(_best_identical(G, mask, g0), rel=1e-3)


def test_it_deviates_fltrust_far_more_than_full_trim_and_sign_flipping() -> None:
    G, g0, mask = _round(3)
    rows, _ = fang_fltrust(G, mask, g0)
    trim = full_trim(G, 2, torch.Generator().manual_seed(0))
    ours = _deviation(G, mask, rows, g0)
    assert ours > 10 * max(_deviation(G, mask, trim, g0), _deviation(G, mask, -G[mask], g0))


def test_more_steps_never_lower_the_deviation() -> None:
    G, g0, mask = _round(4)
    devs = [fang_fltrust(G, mask, g0, steps=k)[1]["deviation"] for k in (1, 5, 50)]
    assert devs[0] <= devs[1] <= devs[2]
    assert devs[2] > devs[0]


def test_root_of_norm_zero_gives_zero_rows_and_bad_roots_are_refused() -> None:
    G, g0, mask = _round(5)
    rows, record = fang_fltrust(G, mask, torch.zeros_like(g0))
    assert not bool(rows.any()) and record["deviation"] == 0.0
    with pytest.raises(UpdateError):
        fang_fltrust(G, mask, torch.full_like(g0, float("nan")))
    with pytest.raises(UpdateError):
        fang_fltrust(G, mask, g0[:-1])
    ctx = AttackContext(malicious=mask, c_max=2)  # no root gradient: not against FLTrust
    with pytest.raises(ConfigError, match="root gradient"):
        FangFLTrust().poison(G, ctx)


def test_parameters_validated() -> None:
    for bad in ({"steps": 0}, {"steps": 1.5}, {"step_size": 0.0}, {"step_size": float("inf")}):
        with pytest.raises(ConfigError):
            make_attack("fang_fltrust", **bad)


def test_config_refuses_a_defense_without_root_gradient(tiny_overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="root gradient"):
        resolve_config(
            "mnist", overrides=[*tiny_overrides, "attack=fang_fltrust", "defense=median"]
        )
    resolve_config("mnist", overrides=[*tiny_overrides, "attack=fang_fltrust", "defense=fltrust"])


def test_a_run_against_fltrust_records_the_deviation_and_is_deterministic(
    tmp_path: Path, tiny_overrides: list[str]
) -> None:
    cfg = resolve_config(
        "mnist", overrides=[*tiny_overrides, "attack=fang_fltrust", "defense=fltrust"]
    )
    a = run_experiment(cfg, tmp_path / "a.sqlite")
    b = run_experiment(cfg, tmp_path / "b.sqlite")
    assert a.final_accuracy == b.final_accuracy
    with ResultsStore(tmp_path / "a.sqlite") as store:
        records = store.attack_records(a.run_id)
    assert records and all(
        r["deviation"] is not None and r["deviation"] > 0 for r in records.values()
    )


def test_flower_colluding_attackers_refuse_it(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from tesseract_fl.flower.collusion import ColludingAttackers

    with pytest.raises(ConfigError, match="root gradient"):
        ColludingAttackers(
            tmp_path, FangFLTrust(), num_clients=4, malicious_ids=[0], c_max=1, seed=0
        )


def test_half_precision_rows_follow_the_float32_ones() -> None:
    G, g0, mask = _round(7)
    rows32, rec32 = fang_fltrust(G, mask, g0)
    rows16, rec16 = fang_fltrust(G.half(), mask, g0.half())
    assert rows16.dtype == torch.float16
    assert rec16["deviation"] == pytest.approx(rec32["deviation"], rel=1e-2)
    torch.testing.assert_close(rows16.float(), rows32, rtol=2e-2, atol=2e-2)
