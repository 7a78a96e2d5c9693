"""Experiment configuration: flat keys, TOML files, ``--set`` overrides (docs/design.md,
"Configuration keys").

Validation happens up front, before any data is loaded, and every error names the bad key and
the allowed values (scikit-learn style: fail early with a helpful message).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError

PARTITIONS: tuple[str, ...] = ("bias", "iid", "sequential", "dirichlet", "writers")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
BACKEND_CHOICES: tuple[str, ...] = ("auto", "loop", "threads", "vmap")
AGGREGATE_ONLY: tuple[str, ...] = ("all", "benign", "malicious")


@dataclass
class ExperimentConfig:
    """One experiment. Defaults are the paper's MNIST setting (Table 1)."""

    name: str = "experiment"
    """A label for the run (shown by ``show``; not part of the run id)."""
    dataset: str = "mnist"
    """A registered dataset (Configuration reference, "Names")."""
    model: str = "mnist_cnn"
    """A registered model: ``mnist_cnn`` is the paper's 266,060-parameter DNN,
    ``mnist_cnn_padded`` the authors' code's 506,060-parameter variant."""
    partition: str = "bias"
    """How samples are split over clients: ``bias`` (Fang et al.), ``iid``, ``sequential``,
    ``dirichlet`` or ``writers`` (FEMNIST)."""
    bias: float = 0.5
    """``bias`` partition: the probability that a sample goes to its label's client group."""
    alpha: float = 0.5
    """``dirichlet`` partition: the concentration."""
    clients: int = 100
    """``m``, the number of clients."""
    malicious: int = 20
    """``c``, the number of malicious clients (drawn by a seeded shuffle)."""
    c_max: int | None = None
    """Clients the server assumes malicious; unset means ``malicious`` (paper: c_max = c)."""
    rounds: int = 500
    """Global model updates."""
    batch_size: int = 32
    """Samples per client gradient."""
    lr: float = 0.01
    """The server's learning rate."""
    lr_schedule: str = "constant"
    """``constant``, or ``cifar`` (warm-up to ``lr`` at a quarter of the rounds, then a
    Gaussian decay)."""
    augment: str = "none"
    """Training-time augmentation of the clients' batches: ``none``, or ``crop_flip`` (CIFAR-10's
    standard random crop of the 4-pixel padded image and horizontal flip)."""
    client_optimizer: str = "sgd"
    """What a client sends: ``sgd``, its gradient (the paper's text, the default), or ``adam``,
    the step of an Adam optimizer created afresh every round (as the authors' Shakespeare
    script does): ``g / (|g| + 1e-8)`` per coordinate, nearly the gradient's sign; the server
    then steps by ``lr`` times the aggregate of those."""
    local_steps: int = 1
    """Local training steps per client and round: 1 (the paper) sends the gradient; ``K > 1``
    sends the pseudo-gradient ``(w - w_local) / lr`` of ``K`` local steps at ``lr`` (FedAvg with
    ``K`` steps when the defense is ``fedsgd``)."""
    defense: str = "tesseract"
    """A registered defense, or pre-aggregators before it (``clip+tesseract``, ``nnm+median``)."""
    defense_params: dict[str, Any] = field(default_factory=dict)
    """The defense's parameters: the ``[defense]`` table or ``--set defense.KEY=VALUE``."""
    attack: str = "none"
    """A registered attack, or ``none``."""
    attack_params: dict[str, Any] = field(default_factory=dict)
    """The attack's parameters: the ``[attack]`` table or ``--set attack.KEY=VALUE``."""
    malicious_ids: list[int] | None = None
    """Explicit attackers (default: the seeded choice, stored with the run)."""
    aggregate_only: str = "all"
    """``all``, ``benign`` or ``malicious``: the update from one group only (paper Figure 2)."""
    seed: int = 0
    """Seeds the partition, the attackers, the model and every random draw of the run."""
    eval_every: int = 10
    """Test-set evaluation interval in rounds (the final round is always evaluated)."""
    test_subset: int = 0
    """Evaluate on a fixed random subset of this many test samples (0: the whole test set)."""
    record_every: int = 10
    """Interval of the per-client records (flip-score, reputation, weight) in the store."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu`` or ``cuda``."""
    backend: str = "auto"
    """Gradient backend: ``auto`` (threads on CPU, vmap on CUDA), ``threads``, ``loop``,
    ``vmap``; all give the same gradients."""
    vmap_chunk: int = 0
    """Clients per vmap call (the ``vmap`` backend); 0: automatic, 10 on a CPU and all of a
    round's clients on CUDA (halved when a call runs out of GPU memory)."""
    data_dir: str | None = None
    """Dataset folder; default ``$TESSERACT_FL_DATA`` or ``~/.cache/tesseract-fl`` (not part of
    the run id)."""
    checkpoint_every: int = 25
    """Save a resumable checkpoint every this many rounds (0: never; not part of the run id)."""

    @property
    def resolved_c_max(self) -> int:
        """``c_max`` defaults to the true number of malicious clients (paper: c_max = c)."""
        return self.malicious if self.c_max is None else self.c_max

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_id(self) -> str:
        """Stable id: hash of everything that changes the numbers (not data_dir, device, backend,
        checkpointing)."""
        d = self.to_dict()
        for k in ("name", "data_dir", "device", "backend", "vmap_chunk", "checkpoint_every"):
            d.pop(k)
        # Keys added after results were first stored count only when set, so that the ids of
        # earlier runs (and the cache lookups against them) stay valid.
        for k, default in _OPTIONAL_DEFAULTS.items():
            if d.get(k) == default:
                d.pop(k)
        d["c_max"] = self.resolved_c_max
        # Parameters given at their default value do not change the numbers, so they do not
        # change the id: `defense = "tesseract"` and `[defense] mu_d = 0.99` are one run.
        d["defense_params"] = _non_default_params("defense", self.defense, self.defense_params)
        d["attack_params"] = _non_default_params("attack", self.attack, self.attack_params)
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "malicious_ids": None,
    "aggregate_only": "all",
    "augment": "none",
    "test_subset": 0,
    "client_optimizer": "sgd",
    "local_steps": 1,
}


def _non_default_params(kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` without the entries equal to the constructor's default for ``name``."""
    import inspect

    if kind == "defense":
        from tesseract_fl.aggregators import AGGREGATORS as registry
    else:
        from tesseract_fl.attacks import ATTACKS as registry
    cls = registry.get(name)
    if cls is None:
        return dict(params)
    defaults = {
        p.name: p.default
        for p in inspect.signature(cls).parameters.values()
        if p.default is not inspect.Parameter.empty
    }
    return {
        k: v
        for k, v in params.items()
        if k not in defaults or type(v) is not type(defaults[k]) or v != defaults[k]
    }


FIELDS: dict[str, dataclasses.Field[Any]] = {
    f.name: f for f in dataclasses.fields(ExperimentConfig)
}
#: What a client may send (``client_optimizer``; simulation/engine.py, ``adam_first_step``).
CLIENT_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")

# Keys a user writes; defense/attack parameters go under `defense.NAME` / `attack.NAME`.
USER_KEYS: tuple[str, ...] = tuple(
    k for k in FIELDS if k not in ("defense_params", "attack_params")
)


def _suggest(key: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(key: str, value: Any) -> Any:
    """Check/convert a value to the field's type; bools are not accepted as numbers."""
    f = FIELDS[key]
    typ = str(f.type)
    if key == "c_max" and value is None:
        return None
    if key == "malicious_ids":
        if value is None:
            return None
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"malicious_ids must be a list of client ids, got {value!r}")
        return sorted(value)
    if typ.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if typ.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if typ.startswith("str"):
        if value is None and "None" in typ:
            return None
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def parse_value(text: str) -> Any:
    """Parse a ``--set`` value as a TOML literal (number, bool, string, array), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except RecursionError:
        raise ConfigError(f"--set value nests too deeply: {text[:40]!r}...") from None
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings onto a raw config mapping (nested ``a.b=v`` allowed)."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, _, text = item.partition("=")
        key = key.strip()
        value = parse_value(text.strip())
        if "." in key:
            head, _, sub = key.partition(".")
            table = out.get(head)
            if isinstance(table, str):
                table = {"name": table}
            elif not isinstance(table, dict):
                table = {}
            table[sub] = value
            out[head] = table
        elif key in ("defense", "attack") and isinstance(value, dict):
            out[key] = dict(value)  # a whole table: `defense={name="tesseract", mu_d=0.9}`
        elif key in ("defense", "attack") and isinstance(out.get(key), dict):
            # Switching the defense/attack drops the previous one's parameters.
            out[key] = {"name": value}
        else:
            out[key] = value
    return out


def _split_component(raw: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``defense = "tesseract"`` or ``[defense] name = "tesseract"  mu_d = 0.99``."""
    if isinstance(raw, str):
        return raw, {}
    if isinstance(raw, dict):
        params = dict(raw)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"[{key}] table needs a string 'name' (e.g. {key} = \"tesseract\")")
        return name, params
    raise ConfigError(f"{key} must be a name or a table with a 'name', got {raw!r}")


def load_plugin_key(value: Any, base: str | Path | None, where: str) -> list[str]:
    """Load the plugins a ``plugins = [...]`` key names (paths relative to ``base``, the folder
    of the file that holds the key); their normalized specs."""
    from tesseract_fl.plugins import load_plugins

    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"{where}: plugins must be a list of module names or .py paths, got {value!r}"
        )
    return load_plugins(value, base=base, label=f"plugins key of {where}")


def build_config(data: dict[str, Any]) -> ExperimentConfig:
    """Validate a raw mapping (from TOML + overrides) and return a checked config. A
    ``plugins`` key is loaded first (relative paths from the working directory), so that the
    names it registers can be used."""
    from tesseract_fl.plugins import load_entry_points

    load_entry_points()
    data = dict(data)
    if "plugins" in data:
        load_plugin_key(data.pop("plugins"), None, "the config")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("defense", "attack"):
            name, params = _split_component(value, key)
            kwargs[key] = name
            kwargs[f"{key}_params"] = params
            continue
        if key not in USER_KEYS:
            raise ConfigError(
                f"unknown config key {key!r}{_suggest(key, USER_KEYS)}; "
                f"allowed keys: {', '.join(USER_KEYS)}"
            )
        kwargs[key] = _coerce(key, value)
    cfg = ExperimentConfig(**kwargs)
    validate(cfg)
    return cfg


def _choice(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{key} = {value!r} is not allowed{_suggest(value, allowed)}; "
            f"allowed values: {', '.join(allowed)}"
        )


def validate(cfg: ExperimentConfig) -> None:
    """Check ranges and names; raise ConfigError naming the key and the allowed values."""
    from tesseract_fl.aggregators import AGGREGATORS, make_aggregator, split_defense_name
    from tesseract_fl.attacks import ATTACKS, NEEDS_DEFENSE_STATE, make_attack, needs_root_gradient
    from tesseract_fl.data import DATASETS
    from tesseract_fl.data.augment import AUGMENTATIONS
    from tesseract_fl.models import MODELS
    from tesseract_fl.simulation.schedules import LR_SCHEDULES

    _choice("dataset", cfg.dataset, sorted(DATASETS))
    _choice("model", cfg.model, sorted(MODELS))
    _choice("partition", cfg.partition, PARTITIONS)
    _choice("lr_schedule", cfg.lr_schedule, LR_SCHEDULES)
    _choice("augment", cfg.augment, AUGMENTATIONS)
    _choice("client_optimizer", cfg.client_optimizer, CLIENT_OPTIMIZERS)
    if isinstance(cfg.local_steps, bool) or not isinstance(cfg.local_steps, int):
        raise ConfigError(f"local_steps must be an integer >= 1, got {cfg.local_steps!r}")
    if cfg.local_steps < 1:
        raise ConfigError(f"local_steps must be an integer >= 1, got {cfg.local_steps}")
    if "+" in cfg.defense:
        split_defense_name(cfg.defense)  # each part named, with the allowed names
    else:
        _choice("defense", cfg.defense, sorted(AGGREGATORS))
    _choice("attack", cfg.attack, ["none", *sorted(ATTACKS)])
    _choice("aggregate_only", cfg.aggregate_only, AGGREGATE_ONLY)
    _choice("device", cfg.device.split(":")[0], DEVICES)
    _choice("backend", cfg.backend, BACKEND_CHOICES)
    if cfg.clients < 1:
        raise ConfigError(f"clients must be >= 1, got {cfg.clients}")
    if not 0 <= cfg.malicious < cfg.clients:
        raise ConfigError(
            f"malicious must be in [0, clients) = [0, {cfg.clients}), got {cfg.malicious}"
        )
    c_max = cfg.resolved_c_max
    if not 0 <= 2 * c_max < cfg.clients:
        raise ConfigError(
            f"c_max must satisfy 0 <= 2*c_max < clients (= {cfg.clients}), got c_max = {c_max}"
        )
    for key in ("rounds", "batch_size", "eval_every", "record_every"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if cfg.vmap_chunk < 0:
        raise ConfigError(f"vmap_chunk must be >= 0 (0: automatic), got {cfg.vmap_chunk}")
    if cfg.test_subset < 0:
        raise ConfigError(
            f"test_subset must be >= 0 (0 evaluates on the whole test set), got {cfg.test_subset}"
        )
    if cfg.checkpoint_every < 0:
        raise ConfigError(
            f"checkpoint_every must be >= 0 (0 disables checkpoints), got {cfg.checkpoint_every}"
        )
    if not (math.isfinite(cfg.lr) and 0 < cfg.lr <= MAX_LR):
        raise ConfigError(f"lr must be a finite number in (0, {MAX_LR:g}], got {cfg.lr}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer in [0, 2**63 - 1], got {cfg.seed}")
    if cfg.batch_size > MAX_BATCH:
        raise ConfigError(f"batch_size must be in [1, {MAX_BATCH}], got {cfg.batch_size}")
    _check_device(cfg.device)
    if not 0.0 <= cfg.bias <= 1.0:
        raise ConfigError(f"bias must be in [0, 1], got {cfg.bias}")
    if not cfg.alpha > 0:
        raise ConfigError(f"alpha must be > 0, got {cfg.alpha}")
    if cfg.attack != "none" and cfg.malicious == 0:
        raise ConfigError(f"attack = {cfg.attack!r} needs malicious >= 1")
    if cfg.malicious_ids is not None:
        ids = cfg.malicious_ids
        if len(set(ids)) != len(ids) or any(not 0 <= i < cfg.clients for i in ids):
            raise ConfigError(
                f"malicious_ids must be distinct client ids in [0, {cfg.clients}), got {ids}"
            )
        if len(ids) != cfg.malicious:
            raise ConfigError(
                f"malicious_ids names {len(ids)} clients but malicious = {cfg.malicious}"
            )
    # Figure 2 modes aggregate one group only: the defense sees that group's size.
    rows = {"all": cfg.clients, "benign": cfg.clients - cfg.malicious, "malicious": cfg.malicious}
    agg_rows = rows[cfg.aggregate_only]
    if agg_rows < 1:
        raise ConfigError(f"aggregate_only = {cfg.aggregate_only!r} needs malicious >= 1")
    _check_memory(cfg)
    # Defense parameters are checked by building the defense once and aggregating a tiny random
    # [rows, 8] matrix: the rule's own m-versus-c_max checks fire here, before data loads.
    try:
        agg = make_aggregator(
            cfg.defense, num_clients=cfg.clients, c_max=c_max, **cfg.defense_params
        )
        _dry_run(agg, agg_rows, c_max)
    except ConfigError as exc:
        raise ConfigError(f"defense {cfg.defense!r}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid parameters for defense {cfg.defense!r}: {exc}") from None
    if cfg.attack == "none":
        if cfg.attack_params:
            raise ConfigError(
                f"attack = 'none' takes no parameters, got {sorted(cfg.attack_params)}"
            )
        return
    attack = make_attack(cfg.attack, **cfg.attack_params)
    if needs_root_gradient(attack) and not agg.needs_root_gradient:
        raise ConfigError(
            f"attack {cfg.attack!r} reads the server's root gradient; defense {cfg.defense!r} "
            "computes none (use defense = 'fltrust', or 'monna' with pivot = 'root')"
        )
    if cfg.attack in NEEDS_DEFENSE_STATE and not callable(getattr(agg, "public_state", None)):
        raise ConfigError(
            f"attack {cfg.attack!r} adapts to TESSERACT's flip-score cut-offs; defense "
            f"{cfg.defense!r} publishes none (use defense = 'tesseract')"
        )
    if cfg.attack in ("full_krum", "adaptive_krum") and cfg.clients - 2 * cfg.malicious - 1 < 1:
        raise ConfigError(
            f"attack {cfg.attack!r} needs clients - 2*malicious - 1 >= 1 (Fang et al.'s bound), "
            f"got clients={cfg.clients}, malicious={cfg.malicious}"
        )
    if cfg.attack in ("full_krum", "adaptive_krum") and cfg.clients - c_max - 2 < 1:
        raise ConfigError(f"attack {cfg.attack!r} tests Krum, which needs clients - c_max - 2 >= 1")


#: Largest learning rate accepted: beyond it the first server step overflows float32 weights.
MAX_LR = 1e6
#: Seeds are 63-bit (torch.manual_seed and NumPy's SeedSequence both take them).
MAX_SEED = 2**63 - 1
#: Largest client batch accepted (a batch is sampled from one client's partition).
MAX_BATCH = 65536


def _check_device(name: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; anything else is a ConfigError."""
    kind, sep, index = name.partition(":")
    if kind == "cuda" and sep and not (index.isdigit() and len(index) <= 4):
        raise ConfigError(f"device = {name!r}: the CUDA index must be a number (cuda:0)")
    if kind != "cuda" and sep:
        raise ConfigError(f"device = {name!r} takes no index; allowed: auto, cpu, cuda, cuda:N")


def machine_memory_bytes() -> int | None:
    """Physical memory of this machine (None where the OS does not say)."""
    import os

    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_memory(cfg: ExperimentConfig) -> None:
    """Refuse a run whose gradient matrix [clients, P] alone cannot fit in this machine's memory
    (before the defense dry run, which would try to allocate per-client matrices)."""
    from tesseract_fl.models import count_parameters, make_model

    total = machine_memory_bytes()
    if total is None:
        return
    P = count_parameters(make_model(cfg.model))
    need = cfg.clients * P * 4
    if need > total:
        raise ConfigError(
            f"clients = {cfg.clients} with model {cfg.model!r} ({P:,} parameters) needs a "
            f"{need / 2**30:.1f} GiB gradient matrix, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory; use fewer clients or a smaller model"
        )


def _dry_run(agg: Any, clients: int, c_max: int) -> None:
    """Aggregate a small seeded random matrix so that size checks fail at config time."""
    import warnings

    import torch

    from tesseract_fl.aggregators import AggregationContext

    gen = torch.Generator().manual_seed(0)
    G = torch.randn(clients, 8, generator=gen)
    ctx = AggregationContext(
        n_samples=torch.ones(clients), root_gradient=torch.randn(8, generator=gen)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are shown when the real run builds it
        agg.aggregate(G, torch.arange(clients), ctx)


def list_presets() -> list[str]:
    """Names of the bundled presets (TOML files in ``experiments/presets``)."""
    folder = resources.files("tesseract_fl.experiments") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """Raw mapping of a bundled preset."""
    names = list_presets()
    if name not in names:
        raise ConfigError(
            f"unknown preset {name!r}{_suggest(name, names)}; allowed values: {', '.join(names)}"
        )
    text = (resources.files("tesseract_fl.experiments") / "presets" / f"{name}.toml").read_text()
    data = tomllib.loads(text)
    data.setdefault("name", name)
    return data


def read_toml(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """Parse a TOML file, with a clear error naming ``what`` for a missing or invalid file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_bytes().decode("utf-8"))
    except RecursionError:
        raise ConfigError(f"{what} {str(p)!r} nests arrays or tables too deeply") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not UTF-8 text (TOML must be): {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {str(p)!r} is not valid TOML: {exc}") from None


def load_toml(path: str | Path) -> dict[str, Any]:
    """Raw mapping of a user's TOML config file (named after the file unless it sets a name);
    the plugins its ``plugins`` key names are loaded (paths relative to the file)."""
    data = read_toml(path)
    data.setdefault("name", Path(path).stem)
    if "plugins" in data:
        load_plugin_key(data.pop("plugins"), Path(path).resolve().parent, f"{str(path)!r}")
    return data


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | None = None,
) -> ExperimentConfig:
    """Preset, then config file (its keys win), then ``--set`` overrides; validated."""
    data: dict[str, Any] = {}
    if preset is not None:
        data.update(load_preset(preset))
    if config_file is not None:
        data.update(load_toml(config_file))
    data = apply_overrides(data, overrides or [])
    return build_config(data)
