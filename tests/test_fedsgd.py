"""FedSGD (sample-weighted mean), check_matrix and the aggregator registry."""

from __future__ import annotations

import pytest
import torch

from tesseract_fl.aggregators import (
    AGGREGATORS,
    Aggregate,
    AggregationContext,
    Aggregator,
    FedSGD,
    Tesseract,
    fedsgd,
    make_aggregator,
    register_aggregator,
)
from tesseract_fl.aggregators.base import all_finite, check_matrix
from tesseract_fl.errors import ConfigError, UpdateError

G3 = torch.tensor(
    [
        [1.0, 2.0, -3.0, 0.0],
        [4.0, -1.0, 0.5, 2.0],
        [-2.0, 0.0, 1.0, 8.0],
    ]
)


def test_fedsgd_weighted_mean_by_hand() -> None:
    # n = [1, 2, 1]: update = (1*g0 + 2*g1 + 1*g2) / 4
    expected = torch.tensor(
        [
            (1.0 + 2 * 4.0 - 2.0) / 4,
            (2.0 + 2 * -1.0 + 0.0) / 4,
            (-3.0 + 2 * 0.5 + 1.0) / 4,
            (0.0 + 2 * 2.0 + 8.0) / 4,
        ]
    )
    for n in ([1, 2, 1], torch.tensor([1, 2, 1]), (1.0, 2.0, 1.0)):
        out = fedsgd(G3, n)
        assert out.shape == (4,)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, expected)


def test_fedsgd_uniform_is_mean() -> None:
    torch.testing.assert_close(fedsgd(G3), G3.mean(0))
    torch.testing.assert_close(fedsgd(G3, None), G3.mean(0))


def test_fedsgd_random_matches_manual() -> None:
    gen = torch.Generator().manual_seed(3)
    G = torch.randn(7, 300, generator=gen)
    n = torch.randint(1, 50, (7,), generator=gen)
    manual = (n[:, None].double() * G.double()).sum(0) / n.sum()
    torch.testing.assert_close(fedsgd(G, n).double(), manual, rtol=1e-5, atol=1e-6)


def test_fedsgd_zero_count_client_gets_no_weight() -> None:
    torch.testing.assert_close(fedsgd(G3, [0, 1, 0]), G3[1])


@pytest.mark.parametrize(
    "n",
    [[1, 2], [1, 2, 3, 4], [1, -1, 3], [0, 0, 0], [1, float("nan"), 1], [[1, 2, 3]]],
)
def test_fedsgd_rejects_bad_counts(n: list) -> None:
    with pytest.raises(UpdateError):
        fedsgd(G3, n)


def test_fedsgd_rejects_bad_matrix() -> None:
    bad = G3.clone()
    bad[1, 2] = float("nan")
    # hostile-row policy: the NaN row is excluded, the others are averaged
    torch.testing.assert_close(fedsgd(bad), G3[[0, 2]].mean(0))
    with pytest.raises(UpdateError):
        fedsgd(G3[0])  # 1-D
    with pytest.raises(UpdateError):
        fedsgd(G3.long())


def test_fedsgd_class_uses_ctx_counts() -> None:
    agg = FedSGD()
    assert isinstance(agg, Aggregator)
    assert agg.name == "fedsgd"
    out = agg.aggregate(G3, ctx=AggregationContext(n_samples=torch.tensor([1, 2, 1])))
    assert isinstance(out, Aggregate)
    torch.testing.assert_close(out.weights, torch.tensor([0.25, 0.5, 0.25]))
    torch.testing.assert_close(out.update, fedsgd(G3, [1, 2, 1]))
    uniform = agg.aggregate(G3, client_ids=torch.tensor([5, 9, 2]))
    torch.testing.assert_close(uniform.weights, torch.full((3,), 1 / 3))
    torch.testing.assert_close(uniform.update, G3.mean(0))
    with pytest.raises(UpdateError):
        agg.aggregate(G3, client_ids=[0, 1])


def test_fedsgd_state_is_empty() -> None:
    agg = FedSGD()
    assert agg.state_dict() == {}
    agg.load_state_dict({})
    with pytest.raises(ConfigError):
        agg.load_state_dict({"x": 1})


def test_check_matrix_fast_finiteness_path() -> None:
    check_matrix(G3)
    for value in (float("nan"), float("inf"), float("-inf")):
        bad = G3.clone()
        bad[2, 0] = value
        with pytest.raises(UpdateError, match="rows \\[2\\]"):
            check_matrix(bad)
    both = G3.clone()
    both[0, 1], both[2, 1] = float("inf"), float("-inf")  # column sum is NaN
    with pytest.raises(UpdateError, match="rows \\[0, 2\\]"):
        check_matrix(both)
    # Finite entries whose column sum overflows are still accepted (exact check decides).
    big = torch.full((3, 2), 3e38)
    assert all_finite(big)
    check_matrix(big)


# --------------------------------------------------------------------------- registry


def test_registry_contents() -> None:
    assert AGGREGATORS["fedsgd"] is FedSGD
    assert AGGREGATORS["tesseract"] is Tesseract


def test_make_aggregator_builds_and_ignores_sizes_for_fedsgd() -> None:
    agg = make_aggregator("fedsgd", num_clients=10, c_max=2)
    assert isinstance(agg, FedSGD)
    tess = make_aggregator("TESSERACT", num_clients=10, c_max=2, mu_d=0.9)
    assert isinstance(tess, Tesseract)
    assert (tess.num_clients, tess.c_max, tess.mu_d) == (10, 2, 0.9)


def test_make_aggregator_unknown_name_lists_allowed() -> None:
    with pytest.raises(ConfigError) as exc:
        make_aggregator("krumm", num_clients=10, c_max=2)
    msg = str(exc.value)
    assert "krumm" in msg and "fedsgd" in msg and "tesseract" in msg


def test_make_aggregator_unknown_param_lists_accepted() -> None:
    with pytest.raises(ConfigError, match="accepted: \\(none\\)"):
        make_aggregator("fedsgd", num_clients=10, c_max=2, lr=0.1)
    with pytest.raises(ConfigError) as exc:
        make_aggregator("tesseract", num_clients=10, c_max=2, mu=0.9)
    msg = str(exc.value)
    assert "mu" in msg and "mu_d" in msg and "filter_then" in msg


def test_make_aggregator_bad_hyper_parameter_is_config_error() -> None:
    with pytest.raises(ConfigError, match="c_max"):
        make_aggregator("tesseract", num_clients=10, c_max=5)


def test_register_aggregator_is_extensible() -> None:
    class Half(FedSGD):
        name = "half_test"

        def __init__(self, c_max: int, scale: float = 0.5) -> None:
            self.c_max, self.scale = c_max, scale

    register_aggregator("half_test", Half)
    try:
        agg = make_aggregator("half_test", num_clients=4, c_max=1, scale=0.25)
        assert isinstance(agg, Half) and agg.c_max == 1 and agg.scale == 0.25
        with pytest.raises(ConfigError, match="already registered"):
            register_aggregator("half_test", FedSGD)
    finally:
        AGGREGATORS.pop("half_test", None)
