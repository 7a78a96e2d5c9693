"""Run one experiment from a validated config and write it to the results store."""

from __future__ import annotations

import dataclasses
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tesseract_fl
from tesseract_fl.aggregators import make_aggregator
from tesseract_fl.attacks import make_attack
from tesseract_fl.data import Dataset, load_dataset, partition
from tesseract_fl.data.augment import black_pixel, make_augment
from tesseract_fl.errors import ConfigError, DatasetError, DivergedError
from tesseract_fl.experiments.checkpoints import (
    CHECKPOINT_FORMAT,
    checkpoint_path,
    load_checkpoint,
    remove_checkpoint,
    save_checkpoint,
)
from tesseract_fl.experiments.config import ExperimentConfig
from tesseract_fl.experiments.store import ClientRow, ResultsStore, RoundMetrics
from tesseract_fl.models import make_model
from tesseract_fl.plugins import code_fingerprint
from tesseract_fl.simulation.engine import (
    FederatedData,
    FedSGDSimulation,
    RoundResult,
    SimulationSpec,
)
from tesseract_fl.simulation.gradients import Backend, default_backend
from tesseract_fl.simulation.round import client_rows, round_metrics
from tesseract_fl.simulation.schedules import make_schedule
from tesseract_fl.tuning import tune_cpu
from tesseract_fl.validation import finite_or_none

#: Where runs go unless ``--store`` says otherwise: a git-ignored folder of the working
#: directory, so that trying things in a clone never changes the committed results store
#: (``results/store.sqlite``, written only when asked for by ``--store``).
DEFAULT_STORE = Path("runs") / "store.sqlite"
#: Seed of the test subset (``test_subset``): the same samples for every run.
_TEST_SUBSET_SEED = 20_240_601

ProgressFn = Callable[[int, int, dict[str, Any]], None]


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU; an unavailable CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but CUDA is not available; use device = 'cpu'")
    return dev


def versions(cfg: ExperimentConfig | None = None) -> dict[str, Any]:
    """Software versions recorded with every run (numbers depend on them); with ``cfg`` also
    ``code``, the fingerprint of the code that computes it (:func:`code_of`)."""
    out: dict[str, Any] = {
        "tesseract_fl": tesseract_fl.__version__,
        "torch": str(torch.__version__),  # plain str: TorchVersion would need unpickling code
        "numpy": str(np.__version__),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    if cfg is not None:
        out["code"] = code_of(cfg)
    return out


def components_of(cfg: ExperimentConfig) -> list[tuple[str, str]]:
    """The registered components a run uses, as ``(kind, name)``."""
    from tesseract_fl.aggregators import split_defense_name

    _, rule = split_defense_name(cfg.defense)
    used = [("dataset", cfg.dataset), ("model", cfg.model), ("defense", rule)]
    if cfg.attack != "none":
        used.append(("attack", cfg.attack))
    return used


def code_of(cfg: ExperimentConfig) -> dict[str, str]:
    """The fingerprint of the code behind ``cfg``'s numbers (docs/design.md, "Fingerprints"):
    the package version, and each plugin component's version or source hash."""
    return code_fingerprint(components_of(cfg))


def stored_code(stored_versions: dict[str, Any] | None) -> dict[str, str]:
    """The fingerprint a stored run was computed with; runs stored before fingerprints were
    recorded used built-ins only, so their package version is their fingerprint."""
    v = stored_versions or {}
    code = v.get("code")
    return dict(code) if isinstance(code, dict) else {"tesseract_fl": str(v.get("tesseract_fl"))}


def same_software(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether two ``versions`` records name the same software and code fingerprint (a record
    written before fingerprints were kept has its package version as its fingerprint)."""
    strip = {k: v for k, v in old.items() if k != "code"}
    return strip == {k: v for k, v in new.items() if k != "code"} and stored_code(
        old
    ) == stored_code(new)


def stale_reason(cfg: ExperimentConfig, row: dict[str, Any]) -> str | None:
    """Why the stored run ``row`` no longer matches the current code (None: it matches)."""
    old, new = stored_code(row.get("versions")), code_of(cfg)
    if old == new:
        return None
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "code changed: " + "; ".join(
        f"{k} {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in changed
    )


def malicious_ids(num_clients: int, num_malicious: int, seed: int) -> list[int]:
    """The attackers: the first ``c`` clients of a seeded shuffle (as in the authors' code)."""
    rng = np.random.default_rng([seed, 1])
    return sorted(int(i) for i in rng.permutation(num_clients)[:num_malicious])


def resolved_malicious_ids(cfg: ExperimentConfig) -> list[int]:
    """The config's explicit ``malicious_ids``, else the seeded choice of ``malicious`` clients."""
    if cfg.malicious_ids is not None:
        return sorted(cfg.malicious_ids)
    return malicious_ids(cfg.clients, cfg.malicious, cfg.seed)


def evaluation_indices(n_test: int, size: int) -> torch.Tensor | None:
    """Sorted indices of the ``test_subset`` evaluated (None: the whole test set).

    Drawn with a fixed seed, independent of the run's seed, so that every run of a preset (any
    seed, defense or attack) is evaluated on the same samples.
    """
    if size <= 0 or size >= n_test:
        return None
    rng = np.random.default_rng(_TEST_SUBSET_SEED)
    return torch.from_numpy(np.sort(rng.choice(n_test, size, replace=False)))


def split_clients(
    cfg: ExperimentConfig, ds: Dataset, root_size: int | None = None
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """The clients' training-index partitions and the server's root set (FLTrust), both seeded
    from ``cfg.seed``: the simulator and the Flower apps call this, so they split alike.

    ``root_size`` (None: no root set) samples are drawn uniformly from the training data first
    and kept out of every client's partition.
    """
    labels = ds.train_y.numpy()
    if len(labels) < cfg.clients:
        raise DatasetError(
            f"dataset {cfg.dataset!r} has {len(labels)} training samples to split among "
            f"{cfg.clients} clients, and every client needs at least one"
        )
    pool = np.arange(len(labels))
    root: np.ndarray | None = None
    if root_size is not None:
        if not 0 < root_size < len(labels) - cfg.clients:
            limit = len(labels) - cfg.clients
            raise ConfigError(f"defense.root_size must be in [1, {limit}), got {root_size}")
        root = np.random.default_rng([cfg.seed, 2]).choice(len(labels), root_size, replace=False)
        pool = np.setdiff1d(pool, root)
    parts = [
        pool[p]
        for p in partition(
            labels[pool],
            cfg.clients,
            cfg.partition,
            bias=cfg.bias,
            alpha=cfg.alpha,
            num_classes=ds.num_classes,
            groups=None if ds.train_groups is None else ds.train_groups.numpy()[pool],
            dataset=cfg.dataset,
            rng=np.random.default_rng([cfg.seed, 0]),
        )
    ]
    return parts, root


def root_size_of(aggregator: Any) -> int | None:
    """Size of the clean server root set the defense needs (FLTrust), else None."""
    if not aggregator.needs_root_gradient:
        return None
    return int(getattr(aggregator, "root_size", 100))


def check_model_fits(model: torch.nn.Module, cfg: ExperimentConfig, ds: Dataset) -> None:
    """One forward pass on two training samples: a model that cannot take the dataset's inputs,
    or does not output one logit per class, is a ConfigError before anything runs."""
    x = ds.train_x[:2]
    was_training = model.training
    model.eval()  # no batch-norm statistics or dropout draws change
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"model {cfg.model!r} does not fit dataset {cfg.dataset!r} (inputs of shape "
            f"{tuple(x.shape[1:])}): {first}"
        ) from None
    finally:
        model.train(was_training)
    if out.dim() != 2 or out.shape[1] != ds.num_classes:
        raise ConfigError(
            f"model {cfg.model!r} outputs shape {tuple(out.shape[1:])} per sample; dataset "
            f"{cfg.dataset!r} needs {ds.num_classes} logits"
        )


def build_simulation(cfg: ExperimentConfig) -> FedSGDSimulation:
    """Load data, partition it, build model, defense and simulator, all seeded from ``cfg.seed``."""
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        tune_cpu()  # the runner's explicit switch (tesseract_fl/tuning.py)
    backend: Backend = default_backend(device) if cfg.backend == "auto" else cfg.backend  # type: ignore[assignment]
    try:
        ds = load_dataset(cfg.dataset, cfg.data_dir)
    except DatasetError as exc:
        # Before anything else is built: the reader's message says what to place where.
        raise DatasetError(f"run {cfg.name!r} needs dataset {cfg.dataset!r}: {exc}") from exc
    c_max = cfg.resolved_c_max
    aggregator = make_aggregator(
        cfg.defense, num_clients=cfg.clients, c_max=c_max, **cfg.defense_params
    )
    # FLTrust: a clean root set drawn uniformly from the training data, disjoint from clients.
    parts, root = split_clients(cfg, ds, root_size_of(aggregator))
    largest = max(len(p) for p in parts)
    if cfg.batch_size > largest:
        raise ConfigError(
            f"batch_size = {cfg.batch_size} is larger than every client's local data (the "
            f"largest client of {cfg.dataset!r} holds {largest} samples); use batch_size <= "
            f"{largest}"
        )
    torch.manual_seed(cfg.seed)
    model = make_model(cfg.model, num_classes=ds.num_classes)
    check_model_fits(model, cfg, ds)
    attack = None if cfg.attack == "none" else make_attack(cfg.attack, **cfg.attack_params)
    test_idx = evaluation_indices(len(ds.test_y), cfg.test_subset)
    data = FederatedData(
        train_x=ds.train_x,
        train_y=ds.train_y,
        test_x=ds.test_x if test_idx is None else ds.test_x[test_idx],
        test_y=ds.test_y if test_idx is None else ds.test_y[test_idx],
        partitions=parts,
        num_classes=ds.num_classes,
        root_indices=root,
    )
    spec = SimulationSpec(
        model=model,
        data=data,
        aggregator=aggregator,
        malicious_ids=resolved_malicious_ids(cfg),
        c_max=c_max,
        batch_size=cfg.batch_size,
        lr_fn=make_schedule(cfg.lr_schedule, cfg.lr, cfg.rounds),
        attack=attack,
        backend=backend,
        vmap_chunk=cfg.vmap_chunk,
        device=device,
        seed=cfg.seed,
        aggregate_only=None if cfg.aggregate_only == "all" else cfg.aggregate_only,  # type: ignore[arg-type]
        augment=make_augment(cfg.augment, fill=black_pixel(cfg.dataset)),
        client_optimizer=cfg.client_optimizer,  # type: ignore[arg-type]
        local_steps=cfg.local_steps,
    )
    return FedSGDSimulation(spec)


def _client_rows(sim: FedSGDSimulation, res: RoundResult) -> list[ClientRow]:
    ids = sim.client_ids.tolist()
    return client_rows(ids, [bool(sim.malicious[c]) for c in ids], res.aggregate, res.flip_scores)


def _checkpoint_payload(
    cfg: ExperimentConfig,
    sim: FedSGDSimulation,
    done: int,
    acc: float | None,
    loss: float | None,
    train_seconds: float,
    seconds: float,
    attack_success: float | None = None,
) -> dict[str, Any]:
    """What :func:`run_experiment` saves after ``done`` rounds (format: checkpoints.py)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "run_id": cfg.run_id(),
        "round": done,
        "sim": sim.state_dict(),
        "runner": {
            "acc": acc,
            "loss": loss,
            "attack_success": attack_success,
            "train_seconds": train_seconds,
            "seconds": seconds,
        },
        "torch_rng": torch.get_rng_state(),
        "versions": versions(cfg),
        "execution": execution_settings(sim),
    }


def execution_settings(sim: FedSGDSimulation) -> dict[str, str]:
    """Settings outside the run id that still change the numbers: a resume must match them."""
    return {"backend": str(sim.backend), "device": str(sim.device)}


def _save_or_warn(path: Path, payload: dict[str, Any]) -> None:
    """Save a checkpoint; a failed save (disk full, permissions) warns but does not end the run:
    the rounds still reach the store, only a resume would start further back."""
    try:
        save_checkpoint(path, payload)
    except OSError as exc:
        warnings.warn(f"cannot write checkpoint {str(path)!r}: {exc}", RuntimeWarning, stacklevel=2)


def _try_resume(
    cfg: ExperimentConfig, sim: FedSGDSimulation, path: Path, rounds_stored: int
) -> dict[str, Any] | None:
    """Load the checkpoint at ``path`` into ``sim``; its payload, or None (with a warning) when
    it cannot be used. ``sim`` may be partly overwritten then: the caller rebuilds it."""
    try:
        ckpt = load_checkpoint(path)
        done = int(ckpt["round"])
        if ckpt["run_id"] != cfg.run_id():
            raise ValueError(f"it belongs to run {ckpt['run_id']!r}")
        if not 0 < done < cfg.rounds:
            raise ValueError(f"its round {done} is outside [1, {cfg.rounds})")
        if done > rounds_stored:
            raise ValueError(f"it is at round {done} but the store holds {rounds_stored} rounds")
        if not same_software(ckpt["versions"], versions(cfg)):
            raise ValueError(
                f"it was written by other software versions ({ckpt['versions']}); numbers "
                "would not match an uninterrupted run"
            )
        if ckpt["execution"] != execution_settings(sim):
            raise ValueError(
                f"it was written with {ckpt['execution']}, this run uses "
                f"{execution_settings(sim)}; numbers would not match an uninterrupted run"
            )
        sim.load_state_dict(ckpt["sim"])
        if sim.round != done:
            raise ValueError(f"its simulation is at round {sim.round}, not {done}")
        if ckpt.get("torch_rng") is not None:
            torch.set_rng_state(ckpt["torch_rng"])
    except Exception as exc:  # any unreadable/foreign file: restart, never crash
        warnings.warn(
            f"checkpoint {str(path)!r} cannot be used ({type(exc).__name__}: {exc}); "
            f"run {cfg.run_id()} restarts from round 0",
            RuntimeWarning,
            stacklevel=3,
        )
        remove_checkpoint(path)
        return None
    return ckpt


def run_experiment(
    cfg: ExperimentConfig,
    store_path: str | Path = DEFAULT_STORE,
    *,
    force: bool = False,
    progress: ProgressFn | None = None,
    reuse_stale: bool = False,
) -> RunSummary:
    """Run ``cfg`` to completion, writing every round to the store; return the summary.

    A finished run is reused only when the code that computed it is the current code (its
    fingerprint, :func:`code_of`); otherwise it is kept as ``<run id>~stale<n>`` and computed
    again, with a warning (the summary's ``replaced_stale``), unless ``reuse_stale``.

    A run already finished in the store is not repeated (its stored summary is returned with
    ``cached = True``) unless ``force``. An unfinished attempt of the same run (status running
    or failed) continues from its checkpoint (``<store dir>/checkpoints/<store name>/<run
    id>.pt``, written every ``checkpoint_every`` rounds) when there is a usable one, giving the
    same numbers as an uninterrupted run; otherwise, or with ``force``, it restarts from round
    0. On an exception or Ctrl-C the run is marked failed; the rounds written so far and the
    checkpoint stay. The summary's ``resumed_from`` is the round the run continued from (None:
    from scratch).

    One process at a time writes a run: while another live process runs the same run into the
    same store this raises :class:`~tesseract_fl.errors.RunBusyError` (an owner whose process
    is gone is taken over). A run marked finished whose rounds are not all stored is run
    again, with a warning.
    """
    run_id = cfg.run_id()
    store_path = Path(store_path)
    with ResultsStore(store_path) as store:
        existing = store.get_run(run_id)
        replaced: str | None = None
        reason = None if existing is None else stale_reason(cfg, existing)
        if existing and existing["status"] == "finished" and reason and not force:
            if not reuse_stale:
                replaced = store.mark_stale(run_id, reason)
                warnings.warn(
                    f"run {run_id}: the stored result is stale ({reason}); computing it again "
                    f"(the old attempt is kept as {replaced})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                existing = None
        if existing and existing["status"] == "finished" and not force:
            missing = store.missing_rounds(run_id, rounds_claimed(cfg, existing["summary"]))
            if not missing:
                return dataclasses.replace(
                    RunSummary.from_dict(existing["summary"] or {}),
                    cached=True,
                    store=str(store_path),
                    stale=reason or None,
                )
            # A store repaired, not trusted: the run is redone from round 0.
            warnings.warn(
                f"run {run_id} was marked finished in {str(store_path)!r} but {len(missing)} "
                f"of its {cfg.rounds} rounds are missing; running it again",
                RuntimeWarning,
                stacklevel=2,
            )
            store.fail_run(run_id, f"incomplete: {len(missing)} rounds missing")
            existing = store.get_run(run_id)
            force = True
        store.claim(run_id)
        try:
            summary = _run_claimed(cfg, store, store_path, existing, force, progress)
        finally:
            store.release(run_id)
        if replaced is not None:
            summary = dataclasses.replace(summary, replaced_stale=replaced)
        return summary


def rounds_claimed(cfg: ExperimentConfig, summary: dict[str, Any] | None) -> int:
    """How many rounds a finished run holds: all of them, or up to the one it diverged at."""
    at = (summary or {}).get("diverged_at")
    return cfg.rounds if at is None else int(at) + 1


@dataclass(frozen=True)
class RunSummary:
    """What :func:`run_experiment` returns and the store keeps (as a JSON object) for a run.

    ``final_accuracy``/``final_loss``: the last evaluation (at the round it diverged, if it
    did: ``diverged_at``); ``rounds_per_second``: rounds over the seconds spent in rounds (not
    evaluations); ``cached``: read from the store, not run; ``resumed_from``: the checkpoint's
    round it continued from; ``stale``: why a reused stored result's code differs
    (``reuse_stale``); ``replaced_stale``: the id the outdated stored attempt was kept under;
    ``final_attack_success``: a backdoor's attack success rate at the last evaluation.
    """

    run_id: str
    name: str
    dataset: str
    defense: str
    attack: str
    malicious: int
    rounds: int
    final_accuracy: float | None = None
    final_loss: float | None = None
    rounds_per_second: float | None = None
    seconds: float | None = None
    backend: str | None = None
    device: str | None = None
    store: str | None = None
    cached: bool = False
    resumed_from: int | None = None
    diverged_at: int | None = None
    stale: str | None = None
    replaced_stale: str | None = None
    final_attack_success: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the store keeps (``stale``, ``replaced_stale`` and
        ``final_attack_success`` only when set)."""
        d = dataclasses.asdict(self)
        for key in ("stale", "replaced_stale", "final_attack_success"):
            if d[key] is None:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """A stored summary (keys this version does not know are ignored; missing optional
        ones are None)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class _RunState:
    """Where a run stands: the next round, the last evaluation, the time spent so far."""

    start: int = 0
    resumed_from: int | None = None
    acc: float | None = None
    loss: float | None = None
    asr: float | None = None
    train_seconds: float = 0.0
    seconds_before: float = 0.0
    diverged_at: int | None = None


def _start_or_resume(
    cfg: ExperimentConfig,
    store: ResultsStore,
    ckpt_path: Path,
    existing: dict[str, Any] | None,
    force: bool,
) -> tuple[FedSGDSimulation, _RunState]:
    """The simulation and state to continue from: a usable checkpoint of an unfinished attempt
    (unless ``force``), else a fresh start recorded in the store."""
    run_id = cfg.run_id()
    sim = build_simulation(cfg)
    ckpt: dict[str, Any] | None = None
    if (
        existing is not None
        and existing["status"] in ("running", "failed")
        and not force
        and ckpt_path.is_file()
    ):
        ckpt = _try_resume(cfg, sim, ckpt_path, int(existing["rounds_done"]))
        if ckpt is None:
            sim = build_simulation(cfg)  # the failed load may have changed part of it
    if ckpt is not None:
        prev = ckpt["runner"]
        state = _RunState(
            start=int(ckpt["round"]),
            resumed_from=int(ckpt["round"]),
            acc=prev["acc"],
            loss=prev["loss"],
            asr=prev.get("attack_success"),
            train_seconds=float(prev["train_seconds"]),
            seconds_before=float(prev["seconds"]),
        )
        store.resume_run(run_id, state.start)
        return sim, state
    remove_checkpoint(ckpt_path)  # a stale one (e.g. with force) must not be resumed
    stored_cfg = cfg.to_dict()
    stored_cfg["resolved"] = {
        "c_max": cfg.resolved_c_max,
        "malicious_ids": sorted(int(i) for i in sim.client_ids[sim.malicious].tolist()),
    }
    store.start_run(run_id, cfg.name, stored_cfg, versions(cfg))
    return sim, _RunState()


def _diverged(store: ResultsStore, run_id: str, sim: FedSGDSimulation, r: int) -> RoundMetrics:
    """Round ``r`` diverged: a result, not a crash; the accuracy measured there is stored."""
    ev = sim.evaluate_model()
    metrics = RoundMetrics(
        lr=float(sim.lr_fn(r)), test_accuracy=ev.accuracy, test_loss=finite_or_none(ev.loss)
    )
    store.write_round(
        run_id, r, metrics, class_accuracy=ev.class_accuracy, attack_success=ev.attack_success
    )
    return metrics


def _run_claimed(
    cfg: ExperimentConfig,
    store: ResultsStore,
    store_path: Path,
    existing: dict[str, Any] | None,
    force: bool,
    progress: ProgressFn | None,
) -> RunSummary:
    """The body of :func:`run_experiment` once this process owns the run in the store: the
    round loop (a round, an evaluation when due, its records, a checkpoint when due)."""
    run_id = cfg.run_id()
    ckpt_path = checkpoint_path(store_path, run_id)
    sim, st = _start_or_resume(cfg, store, ckpt_path, existing, force)
    t0 = time.perf_counter()
    try:
        for r in range(st.start, cfg.rounds):
            t_round = time.perf_counter()
            last = r == cfg.rounds - 1
            recording = r % cfg.record_every == 0 or last
            try:
                res = sim.step(want_flip_scores=recording)
            except DivergedError:
                m = _diverged(store, run_id, sim, r)
                st.diverged_at, st.acc, st.loss = r, m.test_accuracy, m.test_loss
                break
            st.train_seconds += time.perf_counter() - t_round
            if (r + 1) % cfg.eval_every == 0 or last:
                ev = sim.evaluate_model()
                st.acc, st.loss, st.asr = ev.accuracy, ev.loss, ev.attack_success
                res.test_accuracy, res.test_loss = ev.accuracy, ev.loss
                res.class_accuracy = ev.class_accuracy
                res.attack_success = ev.attack_success
            store.write_round(
                run_id,
                r,
                round_metrics(
                    res.lr, res.train_loss, res.aggregate, res.test_accuracy, res.test_loss
                ),
                _client_rows(sim, res) if recording else [],
                attack=res.attack,
                class_accuracy=res.class_accuracy,
                attack_success=res.attack_success,
            )
            if cfg.checkpoint_every and (r + 1) % cfg.checkpoint_every == 0 and not last:
                seconds = st.seconds_before + time.perf_counter() - t0
                payload = _checkpoint_payload(
                    cfg, sim, r + 1, st.acc, st.loss, st.train_seconds, seconds, st.asr
                )
                _save_or_warn(ckpt_path, payload)
            if progress is not None:
                info = {"acc": st.acc, "loss": res.train_loss, "resumed_from": st.resumed_from}
                progress(r + 1, cfg.rounds, info)
    except BaseException as exc:
        store.fail_run(run_id, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        raise
    summary = _summary(cfg, sim, st, store_path, st.seconds_before + time.perf_counter() - t0)
    store.finish_run(run_id, summary.to_dict())
    remove_checkpoint(ckpt_path)
    return summary


def _summary(
    cfg: ExperimentConfig, sim: FedSGDSimulation, st: _RunState, store_path: Path, wall: float
) -> RunSummary:
    """The summary of a run that just finished (or diverged)."""
    return RunSummary(
        run_id=cfg.run_id(),
        name=cfg.name,
        dataset=cfg.dataset,
        defense=cfg.defense,
        attack=cfg.attack,
        malicious=cfg.malicious,
        rounds=cfg.rounds,
        final_accuracy=st.acc,
        final_loss=st.loss,
        rounds_per_second=cfg.rounds / st.train_seconds if st.train_seconds > 0 else None,
        seconds=wall,
        backend=sim.backend,
        device=str(sim.device),
        store=str(store_path),
        cached=False,
        resumed_from=st.resumed_from,
        diverged_at=st.diverged_at,
        final_attack_success=st.asr,
    )
