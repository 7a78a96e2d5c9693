"""Experiment grids: one TOML file expands into many runs.

A grid names the datasets it covers (each with its preset), overrides applied to every run, the
seeds, and one or more ``[[cells]]`` blocks. In a block every list-valued key is an axis and the
block expands into the product of its axes, for every dataset and seed::

    name = "table2-mnist"
    seeds = [0]
    [datasets]
    mnist = "mnist"               # dataset -> preset (paper Table 1 settings)
    [set]
    rounds = 500                  # applied to every run (optional)
    [[cells]]
    attack = "full_krum"
    defense = ["fedsgd", "krum", "tesseract"]
    malicious_fraction = [0.2]    # c = round(fraction * clients); optional
    [[cells]]
    attack = "full_trim"
    defense = {name = "tesseract", mu_d = 0.9}   # a defense (or attack) with parameters

Every run's config is built exactly as ``tesseract-fl run --preset P --set k=v ...`` builds it,
so a run done by hand and the same run in a grid share one run id (and one stored result).
"""

from __future__ import annotations

import copy
import itertools
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError
from tesseract_fl.experiments.config import (
    ExperimentConfig,
    _suggest,
    apply_overrides,
    build_config,
    load_plugin_key,
    load_preset,
    load_toml,
    read_toml,
)

__all__ = ["Grid", "RunSpec", "expand_grid", "list_grids", "load_grid", "resolve_grid_path"]

_TOP_KEYS = ("name", "description", "seeds", "datasets", "set", "cells", "plugins")
#: Keys a block may use besides config keys (handled by the grid itself).
_BLOCK_KEYS = ("dataset", "seed", "malicious_fraction")


@dataclass(frozen=True)
class RunSpec:
    """One run of a grid: its labels (the cell it fills) and its validated config."""

    labels: dict[str, Any]
    config: ExperimentConfig
    run_id: str


@dataclass
class Grid:
    """An expanded grid: its name, description and runs (unique by run id, in file order)."""

    name: str
    description: str
    runs: list[RunSpec] = field(default_factory=list)
    path: Path | None = None


def _literal(value: Any) -> str:
    """A TOML literal for ``--set``-style overrides: strings quoted, numbers and booleans as
    JSON (valid TOML), arrays and tables (``defense = {name = "tesseract", mu_d = 0.9}``)
    written element by element as TOML (JSON objects are not TOML)."""
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(str(k))} = {_literal(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return json.dumps(value)


def defense_key(cfg: ExperimentConfig) -> str:
    """The defense's name in a grid's labels and run names: the registry name, with TESSERACT's
    filter in front of another rule written ``tesseract>RULE`` (``filter_then = "RULE"``), so
    that such cells do not merge with plain TESSERACT's."""
    then = cfg.defense_params.get("filter_then")
    return f"{cfg.defense}>{then}" if then else cfg.defense


def _axis(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _resolve_malicious(data: dict[str, Any], fraction: float, where: str) -> None:
    if (
        isinstance(fraction, bool)
        or not isinstance(fraction, (int, float))
        or not 0 <= fraction < 1
    ):
        raise ConfigError(f"{where}: malicious_fraction must be in [0, 1), got {fraction!r}")
    clients = data.get("clients", ExperimentConfig.clients)
    data["malicious"] = round(fraction * int(clients))
    data.pop("c_max", None)  # c_max = c, as in the paper


def _base_config(value: Any, base: Path | None, where: str) -> dict[str, Any]:
    """A ``[datasets]`` entry's settings: a bundled preset's name, a config file (``.toml``,
    relative to the grid file) or an inline table of config keys."""
    if isinstance(value, dict):
        return dict(value)
    if isinstance(value, str) and value.endswith(".toml"):
        path = Path(value) if base is None or Path(value).is_absolute() else base / value
        data = load_toml(path)
        data.pop("name", None)
        return data
    if isinstance(value, str):
        return load_preset(value)
    raise ConfigError(
        f"{where}: a [datasets] entry is a preset name, a config .toml path or a table of "
        f"config keys, got {value!r}"
    )


def expand_grid(raw: dict[str, Any], *, name: str = "grid", base: Path | None = None) -> Grid:
    """Expand a parsed grid mapping into validated runs (errors name the block and the key);
    ``base`` is the grid file's folder (relative plugin and config paths start there)."""
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"grid {name!r}: unknown top-level keys {unknown}; allowed: {_TOP_KEYS}")
    gname = str(raw.get("name", name))
    if "plugins" in raw:
        load_plugin_key(raw["plugins"], base, f"grid {gname!r}")
    datasets = raw.get("datasets")
    if not isinstance(datasets, dict) or not datasets:
        raise ConfigError(
            f"grid {gname!r}: needs a [datasets] table mapping a label to a preset, a config "
            "file or a table of config keys"
        )
    seeds = raw.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise ConfigError(f"grid {gname!r}: seeds must be a non-empty list of integers")
    common = raw.get("set", {})
    if not isinstance(common, dict):
        raise ConfigError(f"grid {gname!r}: [set] must be a table of config keys")
    cells = raw.get("cells")
    if not isinstance(cells, list) or not cells:
        raise ConfigError(f"grid {gname!r}: needs at least one [[cells]] block")
    grid = Grid(name=gname, description=str(raw.get("description", "")))
    seen: set[str] = set()
    bases: dict[str, dict[str, Any]] = {}
    for b, block in enumerate(cells):
        where = f"grid {gname!r} [[cells]] #{b + 1}"
        if not isinstance(block, dict):
            raise ConfigError(f"{where}: must be a table")
        block_datasets = _axis(block.get("dataset", list(datasets)))
        for ds in block_datasets:
            if ds not in datasets:
                raise ConfigError(
                    f"{where}: dataset {ds!r} is not in [datasets] ({list(datasets)})"
                )
        block_seeds = _axis(block.get("seed", seeds))
        axes = {k: _axis(v) for k, v in block.items() if k not in ("dataset", "seed")}
        empty = sorted(k for k, v in axes.items() if not v) + [
            k for k in ("dataset", "seed") if k in block and _axis(block[k]) == []
        ]
        if empty:
            raise ConfigError(f"{where}: empty list for {empty} (the block would add no runs)")
        if "malicious_fraction" in axes and ("malicious" in axes or "c_max" in axes):
            raise ConfigError(
                f"{where}: give malicious_fraction or malicious/c_max, not both "
                "(the fraction sets malicious = round(fraction * clients) and c_max = malicious)"
            )
        keys = list(axes)
        for ds, seed, combo in itertools.product(
            block_datasets, block_seeds, itertools.product(*(axes[k] for k in keys))
        ):
            values = dict(zip(keys, combo, strict=True))
            if ds not in bases:  # each preset or config file read once per grid
                bases[ds] = _base_config(datasets[ds], base, where)
            data = copy.deepcopy(bases[ds])
            data = apply_overrides(data, [f"{k}={_literal(v)}" for k, v in common.items()])
            fraction = values.pop("malicious_fraction", None)
            data = apply_overrides(data, [f"{k}={_literal(v)}" for k, v in values.items()])
            data["seed"] = seed
            if fraction is not None:
                _resolve_malicious(data, fraction, where)
            try:
                cfg = build_config(data)
            except ConfigError as exc:
                raise ConfigError(f"{where} ({ds}, {values}, seed {seed}): {exc}") from None
            defense = defense_key(cfg)
            labels: dict[str, Any] = {
                "dataset": ds,
                "preset": datasets[ds] if isinstance(datasets[ds], str) else ds,
                "attack": cfg.attack,
                "defense": defense,
                "seed": seed,
                "malicious_fraction": cfg.malicious / cfg.clients,
                **{k: v for k, v in values.items() if k not in ("attack", "defense")},
            }
            cfg.name = f"{gname}/{ds}/{cfg.attack}/{defense}/s{seed}"
            rid = cfg.run_id()
            if rid in seen:
                continue
            seen.add(rid)
            grid.runs.append(RunSpec(labels=labels, config=cfg, run_id=rid))
    return grid


def packaged_grids_dir() -> Path:
    """The folder of the grid files that ship with the package (the paper's experiments)."""
    return Path(str(resources.files("tesseract_fl.experiments") / "grids"))


def list_grids() -> list[str]:
    """Names of the packaged grid files (``table2-mnist``, ``fig5-quick``, ...)."""
    return sorted(p.stem for p in packaged_grids_dir().glob("*.toml"))


def resolve_grid_path(name_or_path: str | Path) -> Path:
    """A grid file: an existing path, else a packaged grid by name (``table2-mnist`` or
    ``table2-mnist.toml``), so the paper's grids run from any folder, in a clone or not."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = packaged_grids_dir() / (p.name if p.suffix == ".toml" else f"{p.name}.toml")
    if packaged.is_file():
        if p.parent == Path("."):
            return packaged
        raise ConfigError(
            f"no grid file {str(name_or_path)!r}; the packaged grid of that name is "
            f"{packaged.stem!r} (pass the name alone)"
        )
    names = list_grids()
    raise ConfigError(
        f"no grid file {str(name_or_path)!r}{_suggest(p.stem, names)}; give a path to a grid "
        f"TOML file or one of the packaged grids: {', '.join(names)}"
    )


def load_grid(path: str | Path) -> Grid:
    """Read and expand a grid TOML file, given by path or packaged name (clear errors for a
    missing or invalid file)."""
    p = resolve_grid_path(path)
    raw = read_toml(p, "grid file")
    grid = expand_grid(raw, name=p.stem, base=p.resolve().parent)
    grid.path = p
    return grid
