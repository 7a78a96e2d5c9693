"""Colluding attackers (shared directory) and the example app's run config."""

from __future__ import annotations

import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import ArrayRecord

from flower_helpers import arrays_of
from tesseract_fl.attacks import FullKrum, FullTrim, make_attack
from tesseract_fl.errors import ConfigError, UpdateError
from tesseract_fl.flower import ColludingAttackers

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "flower"

P = 40


def _attackers(
    directory: Path, attack: Any = None, ids: tuple[int, ...] = (4, 1)
) -> ColludingAttackers:
    return ColludingAttackers(
        directory, attack or FullTrim(), num_clients=6, malicious_ids=ids, c_max=2, seed=3
    )


def _never() -> torch.Tensor:
    raise AssertionError("the round's rows were already shared; nobody should recompute them")


def test_rows_are_the_simulators_for_every_attacker(tmp_path: Path) -> None:
    """Both attackers get their row of one joint Full-Trim call, with the simulator's RNG
    sequence (seeded once, continued across rounds)."""
    gens = [torch.randn(6, P, generator=torch.Generator().manual_seed(r)) for r in (1, 2)]
    gen = torch.Generator().manual_seed(3)
    expected = [FullTrim().poison(G, _ctx(gen)).rows for G in gens]
    for r, G in enumerate(gens, start=1):
        arrays = arrays_of({"w": (P,)}, seed=r)
        row4, _ = _attackers(tmp_path).row(r, 4, arrays, lambda G=G: G)
        row1, _ = _attackers(tmp_path).row(r, 1, arrays, _never)
        assert torch.equal(row1, expected[r - 1][0])  # ascending attacker order: 1, then 4
        assert torch.equal(row4, expected[r - 1][1])


def _ctx(gen: torch.Generator) -> Any:
    from tesseract_fl.attacks import AttackContext

    mask = torch.zeros(6, dtype=torch.bool)
    mask[[1, 4]] = True
    return AttackContext(malicious=mask, c_max=2, generator=gen)


def test_full_krum_attackers_send_near_identical_rows(tmp_path: Path) -> None:
    G = torch.randn(6, P, generator=torch.Generator().manual_seed(0))
    arrays = arrays_of({"w": (P,)})
    a, rec = _attackers(tmp_path, FullKrum()).row(1, 1, arrays, lambda: G)
    b, _ = _attackers(tmp_path, FullKrum()).row(1, 4, arrays, _never)
    assert "lambda" in rec
    assert float((a - b).abs().max()) <= 1e-4 / P + 1e-12


def test_concurrent_attackers_compute_once(tmp_path: Path) -> None:
    G = torch.randn(6, P)
    arrays = arrays_of({"w": (P,)})
    calls = []
    out: dict[int, torch.Tensor] = {}

    def honest() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.2)
        return G

    def attacker(client: int) -> None:
        out[client] = _attackers(tmp_path).row(1, client, arrays, honest)[0]

    threads = [threading.Thread(target=attacker, args=(c,)) for c in (1, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert set(out) == {1, 4}


def test_stale_round_file_is_refused(tmp_path: Path) -> None:
    G = torch.randn(6, P)
    _attackers(tmp_path).row(1, 1, arrays_of({"w": (P,)}, seed=0), lambda: G)
    with pytest.raises(UpdateError, match="another global model"):
        _attackers(tmp_path).row(1, 4, arrays_of({"w": (P,)}, seed=1), lambda: G)


def test_attacks_that_cannot_collude_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="TESSERACT state"):
        _attackers(tmp_path, make_attack("adaptive_trim"))
    with pytest.raises(ConfigError, match="not a model-poisoning attack"):
        _attackers(tmp_path, make_attack("label_flip"))
    with pytest.raises(ConfigError, match="distinct"):
        _attackers(tmp_path, ids=(1, 1))
    with pytest.raises(ConfigError, match="not one of the attackers"):
        _attackers(tmp_path).row(1, 2, ArrayRecord(), _never)


@pytest.fixture
def settings() -> Any:
    sys.path.insert(0, str(EXAMPLE))
    try:
        from tesseract_flower import settings

        yield settings
    finally:
        sys.path.remove(str(EXAMPLE))


def _app_config() -> dict[str, Any]:
    data = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


def test_example_run_config_is_valid(settings: Any) -> None:
    cfg, opts = settings.read_run_config(_app_config())
    assert (cfg.dataset, cfg.model, cfg.clients, cfg.malicious) == ("mnist", "mnist_cnn", 10, 2)
    assert cfg.c_max is None and cfg.data_dir is None and cfg.malicious_ids is None
    assert opts.gradient_format == "flat"


def test_example_run_config_overrides_and_errors(settings: Any) -> None:
    conf = _app_config() | {
        "defense-params": "mu_d=0.95 filter_then='median'",
        "attack": "sign_flip",
        "attack-params": "scale=2.0",
        "malicious-ids": "3 7",
        "c_max": 3,
    }
    cfg, _ = settings.read_run_config(conf)
    assert cfg.defense_params == {"mu_d": 0.95, "filter_then": "median"}
    assert cfg.attack_params == {"scale": 2.0}
    assert cfg.malicious_ids == [3, 7] and cfg.resolved_c_max == 3
    with pytest.raises(ConfigError, match=r"unknown run-config key 'rounds_' .*'rounds'"):
        settings.read_run_config(_app_config() | {"rounds_": 3})
    with pytest.raises(ConfigError, match="defense"):
        settings.read_run_config(_app_config() | {"defense": "tesserakt"})
    with pytest.raises(ConfigError, match="gradient-format"):
        settings.read_run_config(_app_config() | {"gradient-format": "npz"})


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_example_clientapp_sends_the_simulators_rows(
    settings: Any, tiny_data_dir: Path, tmp_path: Path
) -> None:
    """The example ClientApp, honest and colluding (Full-Trim), replies with exactly the rows
    of the simulator's (poisoned) gradient matrix of round 1, and its num-examples."""
    from flwr.app import ConfigRecord, Context, Message, RecordDict

    from flower_helpers import task_identity
    from tesseract_fl.experiments.config import build_config
    from tesseract_fl.experiments.runner import build_simulation
    from tesseract_fl.flower import Layout, model_arrays
    from tesseract_flower import client_app

    experiment = {
        "clients": 6,
        "malicious": 2,
        "batch_size": 8,
        "attack": "full_trim",
        "data_dir": str(tiny_data_dir),
        "rounds": 1,
    }
    sim = build_simulation(build_config(experiment))
    arrays = model_arrays(sim.model)
    G_sim = {}

    class Keep:
        name = sim.aggregator.name

        def aggregate(self, G: torch.Tensor, ids: Any, ctx: Any) -> Any:
            G_sim["G"], G_sim["n"] = G.clone(), ctx.n_samples.clone()
            return inner.aggregate(G, ids, ctx)

    inner, sim.aggregator = sim.aggregator, Keep()
    sim.step()

    run_config = _app_config() | {
        k: v for k, v in experiment.items() if k in ("clients", "malicious", "batch_size")
    }
    run_config |= {
        "attack": "full_trim",
        "data_dir": str(tiny_data_dir),
        "rounds": 1,
        "attack-dir": str(tmp_path / "collusion"),
        "gradient-format": "layers",
    }
    layout = Layout.of(arrays)
    gen = task_identity()
    next(gen)
    try:
        for client in range(6):
            content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
            msg = Message(content, dst_node_id=100 + client, message_type="train")
            context = Context(
                run_id=5,
                node_id=100 + client,
                node_config={"partition-id": client, "num-partitions": 6},
                state=RecordDict(),
                run_config=run_config,
            )
            out = client_app.train(msg, context)
            grad = layout.read_gradient(out.content["gradient"])
            assert torch.equal(grad, G_sim["G"][client]), f"client {client}"
            metrics = out.content["metrics"]
            assert metrics["num-examples"] == int(G_sim["n"][client])
            assert metrics["malicious"] == int(bool(sim.malicious[client]))
    finally:
        next(gen, None)
