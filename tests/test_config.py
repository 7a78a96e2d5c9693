"""Config validation: every documented error names the bad key and the allowed values."""

from __future__ import annotations

from pathlib import Path

import pytest

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import (
    apply_overrides,
    build_config,
    list_presets,
    load_preset,
    parse_value,
    resolve_config,
)


def test_mnist_preset_is_table1() -> None:
    cfg = resolve_config("mnist")
    assert (cfg.clients, cfg.malicious, cfg.rounds, cfg.batch_size) == (100, 20, 500, 32)
    assert cfg.lr == 0.01 and cfg.bias == 0.5 and cfg.partition == "bias"
    assert cfg.defense == "tesseract" and cfg.defense_params["mu_d"] == 0.99
    assert cfg.resolved_c_max == 20


def test_presets_listed_and_valid() -> None:
    assert {"mnist", "demo"} <= set(list_presets())
    for name in list_presets():
        build_config(load_preset(name))


def test_overrides_types_and_nesting() -> None:
    cfg = resolve_config("mnist", overrides=["rounds=300", "defense.mu_d=0.9", "lr=0.02"])
    assert cfg.rounds == 300 and cfg.lr == 0.02 and cfg.defense_params == {"mu_d": 0.9}
    cfg = resolve_config("mnist", overrides=["defense=fedsgd"])
    assert cfg.defense == "fedsgd" and cfg.defense_params == {}
    assert parse_value("3") == 3 and parse_value("abc") == "abc" and parse_value('"x"') == "x"
    assert apply_overrides({"defense": "tesseract"}, ["defense.mu_d=0.5"]) == {
        "defense": {"name": "tesseract", "mu_d": 0.5}
    }


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("roundz=5", ["roundz", "rounds", "allowed keys"]),
        ("defense=krumm", ["defense", "krumm", "allowed values", "tesseract"]),
        ("dataset=foo", ["dataset", "allowed values", "mnist"]),
        ("partition=xyz", ["partition", "bias", "dirichlet"]),
        ("model=vgg", ["model", "mnist_cnn"]),
        ("rounds=0", ["rounds", ">= 1"]),
        ("rounds=1.5", ["rounds", "integer"]),
        ("lr=-1", ["lr", "(0, "]),
        ("bias=1.5", ["bias", "[0, 1]"]),
        ("malicious=100", ["malicious", "[0, 100)"]),
        ("c_max=50", ["c_max", "2*c_max"]),
        ("defense.mu_dd=0.5", ["mu_dd", "mu_d"]),
        ("attack=nonsense", ["attack", "none"]),
        ("device=tpu", ["device", "cpu"]),
        ("backend=jit", ["backend", "loop", "vmap"]),
        ("batch_size=true", ["batch_size", "integer"]),
        ("norounds", ["key=value"]),
    ],
)
def test_invalid_configs_give_documented_errors(override: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("mnist", overrides=[override])
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_unknown_preset_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"allowed values: .*mnist"):
        resolve_config("mnsit")
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(config_file=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve_config(config_file=bad)


def test_config_file_with_defense_table(tmp_path: Path) -> None:
    f = tmp_path / "exp.toml"
    f.write_text('rounds = 7\n[defense]\nname = "tesseract"\nmu_d = 0.5\n')
    cfg = resolve_config("mnist", config_file=f)
    assert cfg.rounds == 7 and cfg.defense_params == {"mu_d": 0.5} and cfg.name == "exp"


def test_run_id_depends_on_numbers_not_paths() -> None:
    a = resolve_config("mnist")
    b = resolve_config("mnist", overrides=['data_dir="/elsewhere"', "backend=vmap"])
    c = resolve_config("mnist", overrides=["seed=1"])
    assert a.run_id() == b.run_id() != c.run_id()


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        (["defense=bulyan", "clients=10", "malicious=3"], ["bulyan", "4*c_max"]),
        (["defense=krum", "clients=3", "malicious=1"], ["krum", "c_max"]),
        (["defense=faba", "clients=10", "malicious=2", "c_max=5"], ["c_max"]),
        (["defense=fltrust", "defense.root_size=0"], ["root_size"]),
        (["defense=foolsgold", "defense.kappa=-1"], ["kappa"]),
    ],
)
def test_defense_size_checks_fire_at_config_time(
    overrides: list[str], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_config("mnist", overrides=overrides)
    for frag in fragments:
        assert frag in str(info.value), (frag, str(info.value))


def test_a_run_that_cannot_fit_in_memory_is_refused_before_any_work() -> None:
    with pytest.raises(ConfigError, match="GiB gradient matrix"):
        resolve_config("mnist", overrides=["clients=1000000", "malicious=2", "defense=krum"])
