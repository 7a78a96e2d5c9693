"""Where ByzFL has the same rule, both get the same matrices and agree to float tolerance.

ByzFL is not a dependency (its package imports torchvision); install it with
``pip install --no-deps byzfl==0.0.11`` to run these. Definitional mapping: ByzFL's
``GeometricMedian(nu, T)`` runs T smoothed Weiszfeld steps from 0 with uniform weights (ours with
``init="zero"``); ``CenteredClipping(tau, L)`` starts from 0 in its first call as ours does;
``NNM(f)``, ``Meamed(f)`` and ``MoNNA(f, idx)`` take f = c_max (ours: ``MoNNA(c_max, pivot=idx)``,
the pivot a client id, equal to the row index here); ``Mimic(epsilon)`` is ours with
``epsilon`` (ByzFL indexes the honest vectors it is given, we index the benign rows); exact ties
are broken differently (ByzFL's ``argpartition`` order, our lower index), which random matrices
do not hit.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import Any

import pytest
import torch

from tesseract_fl.aggregators import CenteredClipping, GeometricMedian, Meamed, MoNNA
from tesseract_fl.attacks import AttackContext, Mimic
from tesseract_fl.preaggregators import NearestNeighbourMixing


def _byzfl(module: str) -> Any:
    """``byzfl.aggregators.<module>`` without ``byzfl/__init__.py`` (it imports torchvision)."""
    return _byzfl_module(f"aggregators.{module}")


def _byzfl_module(path: str) -> Any:
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or spec.submodule_search_locations is None:
            pytest.skip("ByzFL is not installed (pip install --no-deps byzfl==0.0.11)")
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    return importlib.import_module(f"byzfl.{path}")


@pytest.mark.parametrize("seed", range(5))
def test_same_rules_as_byzfl(seed: int) -> None:
    agg = _byzfl("aggregators")
    pre = _byzfl("preaggregators")
    gen = torch.Generator().manual_seed(seed)
    m, P, c = 12, 50, 3
    G = torch.randn(m, P, generator=gen, dtype=torch.float64)
    G[:c] += 4.0 * torch.randn(P, generator=gen, dtype=torch.float64)  # a few outliers

    ours = GeometricMedian(iters=3, nu=0.1, init="zero").aggregate(G).update
    theirs = torch.as_tensor(agg.GeometricMedian(nu=0.1, T=3)(G.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    ours = CenteredClipping(tau=2.0, iters=2).aggregate(G).update
    theirs = torch.as_tensor(agg.CenteredClipping(tau=2.0, L=2)(G.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    ours = Meamed(c).aggregate(G).update
    theirs = torch.as_tensor(agg.Meamed(f=c)(G.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    ours, _ = NearestNeighbourMixing(c_max=c).transform(G)
    theirs = torch.as_tensor(pre.NNM(f=c)(G.numpy()))
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)

    for idx in (0, m - 1):
        ours = MoNNA(c, pivot=idx).aggregate(G).update
        theirs = torch.as_tensor(agg.MoNNA(f=c, idx=idx)(G.numpy()))
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("epsilon", [0, 3])
def test_mimic_as_byzfl(epsilon: int) -> None:
    attacks = _byzfl_module("attacks.attacks")
    gen = torch.Generator().manual_seed(epsilon)
    G = torch.randn(8, 20, generator=gen, dtype=torch.float64)
    mal = torch.zeros(8, dtype=torch.bool)
    mal[[1, 6]] = True
    ours = Mimic(epsilon=epsilon).poison(G, AttackContext(malicious=mal)).rows[0]
    theirs = torch.as_tensor(attacks.Mimic(epsilon=epsilon)(G[~mal].numpy()))
    torch.testing.assert_close(ours, theirs)
