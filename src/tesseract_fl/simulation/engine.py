"""Synchronous FedSGD rounds (docs/design.md, "The FedSGD round"; paper Sec. 2 and Algorithm 1).

One round: every client draws its next round-robin batch (augmented when the run augments, e.g.
CIFAR-10's crop + flip; a data-poisoning attack relabels the malicious clients' batches),
computes its gradient at the global model, a model-poisoning attack (if any) replaces the
malicious rows, the defense aggregates the ``[m, P]`` matrix, and the server takes one SGD step
``theta <- theta - lr_t * update``. With ``aggregate_only`` (paper Figure 2) only the benign or
only the malicious rows are aggregated, while everyone's flip-score is kept.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tesseract_fl.aggregators.base import Aggregate, AggregationContext, Aggregator, Diagnostics
from tesseract_fl.attacks.backdoor import BackdoorAttack, attack_success_rate
from tesseract_fl.attacks.base import AttackContext, DataAttack, DefenseView, ModelAttack, Poison
from tesseract_fl.errors import ConfigError, DivergedError, UpdateError
from tesseract_fl.simulation.flat import flat_slices
from tesseract_fl.simulation.gradients import (
    Backend,
    client_gradients,
    default_vmap_chunk,
    num_params,
    worker_pool,
)
from tesseract_fl.simulation.round import (
    NonFiniteUpdateError,
    aggregate_round,
    every_flip_score,
    next_direction,
)
from tesseract_fl.simulation.sampler import RoundRobinSampler

AggregateOnly = Literal["benign", "malicious"]


@dataclass
class RoundResult:
    """What one round produced: losses, optional test metrics, and the defense's record."""

    round: int
    lr: float
    train_loss: float
    aggregate: Aggregate
    test_accuracy: float | None = None
    test_loss: float | None = None
    #: Accuracy on each class's test samples, at evaluation rounds (else empty).
    class_accuracy: tuple[float, ...] = ()
    #: A backdoor's attack success rate at evaluation rounds (else None).
    attack_success: float | None = None
    attack: dict[str, float] = field(default_factory=dict)
    flip_scores: Tensor | None = None


def apply_update(model: nn.Module, update: Tensor, lr: float) -> None:
    """Server SGD step on the flattened trainable parameters: ``theta <- theta - lr * update``."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = sum(p.numel() for p in params)
    if total != update.numel():
        raise UpdateError(f"update has {update.numel()} entries, model has {total} parameters")
    with torch.no_grad():
        for p, sl in zip(params, flat_slices(p.numel() for p in params), strict=True):
            p.add_(update[sl].view_as(p), alpha=-lr)


def params_finite(model: nn.Module) -> bool:
    """Whether every trainable parameter of ``model`` is finite."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.requires_grad)


@dataclass(frozen=True)
class Evaluation:
    """A test-set evaluation: accuracy (0-1), mean cross-entropy, and the accuracy on each
    class's test samples (NaN for a class with none): overall accuracy hides a targeted attack
    such as label flipping 7 -> 1, the source class's accuracy shows it; a backdoor leaves
    accuracy intact, its attack success rate shows it."""

    accuracy: float
    loss: float
    class_accuracy: tuple[float, ...]
    #: A backdoor attack's success rate on the triggered test set (None without a backdoor).
    attack_success: float | None = None


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: Tensor, y: Tensor, num_classes: int, batch_size: int = 256
) -> Evaluation:
    """Evaluate ``model`` on ``(x, y)`` with batched forwards in eval mode.

    Batches of a few hundred keep activations in cache (``python -m benchmarks engine``).
    """
    was_training = model.training
    model.eval()
    correct = 0
    loss_sum = 0.0
    per_class = torch.zeros(num_classes, dtype=torch.long)
    seen = torch.zeros(num_classes, dtype=torch.long)
    for start in range(0, x.shape[0], batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        hit = logits.argmax(dim=1) == target
        correct += int(hit.sum())
        t = target.detach().cpu().flatten()
        seen += torch.bincount(t, minlength=num_classes)[:num_classes]
        per_class += torch.bincount(t[hit.detach().cpu().flatten()], minlength=num_classes)[
            :num_classes
        ]
    model.train(was_training)
    n = max(1, x.shape[0])
    by_class = tuple(
        float(c) / float(k) if k > 0 else math.nan
        for c, k in zip(per_class.tolist(), seen.tolist(), strict=True)
    )
    return Evaluation(accuracy=correct / n, loss=loss_sum / n, class_accuracy=by_class)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 256) -> tuple[float, float]:
    """Test accuracy (0-1) and mean cross-entropy (:func:`evaluate_model` without classes)."""
    num_classes = int(y.max()) + 1 if y.numel() else 1
    ev = evaluate_model(model, x, y, num_classes, batch_size)
    return ev.accuracy, ev.loss


@dataclass(frozen=True)
class FederatedData:
    """The tensors of a simulated federation: training set (indexed by the clients'
    ``partitions``), test set, ``num_classes`` (default: from ``train_y``) and FLTrust's clean
    ``root_indices`` (training rows kept out of every partition)."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    partitions: list[np.ndarray]
    num_classes: int | None = None
    root_indices: np.ndarray | None = None


@dataclass
class SimulationSpec:
    """Everything a :class:`FedSGDSimulation` is built from (docs/design.md, "The FedSGD round").

    ``malicious_ids``: the attackers' client ids; ``c_max``: what the server assumes (passed to
    the attack's context); ``lr_fn(round) -> lr``: the server schedule; ``backend`` /
    ``vmap_chunk``: how the clients' gradients are computed (same numbers for loop and threads;
    ``vmap_chunk = 0``: :func:`~.gradients.default_vmap_chunk`);
    ``seed``: the attack's generator (and, derived from it, the augmentation's);
    ``aggregate_only``: Figure 2's modes (aggregate only the benign or only the malicious rows,
    everyone's flip-score kept); ``augment``: training-time augmentation of the batches.
    """

    model: nn.Module
    data: FederatedData
    aggregator: Aggregator
    malicious_ids: list[int]
    c_max: int
    batch_size: int
    lr_fn: Callable[[int], float]
    attack: ModelAttack | DataAttack | BackdoorAttack | None = None
    backend: Backend = "loop"
    vmap_chunk: int = 0
    device: torch.device | str = "cpu"
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.cross_entropy
    seed: int = 0
    aggregate_only: AggregateOnly | None = None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None
    #: ``sgd``: clients send gradients (the paper); ``adam``: a fresh Adam's first step.
    client_optimizer: Literal["sgd", "adam"] = "sgd"
    #: Local training steps per client and round (1: the paper's FedSGD gradient).
    local_steps: int = 1


#: Adam's epsilon (torch.optim.Adam's default).
ADAM_EPS = 1e-8


def adam_first_step(G: Tensor, eps: float = ADAM_EPS) -> Tensor:
    """The direction of the first step of an Adam optimizer created afresh, per row of ``G``
    (in place): with zero moments, ``m_hat = g`` and ``v_hat = g^2`` after bias correction, so
    Adam moves by ``lr * g / (|g| + eps)`` whatever its betas. (torch.optim.Adam computes the same
    quantity with its own rounding; the results agree to a few ulps.)"""
    return G.div_(G.abs().add_(eps))


class FedSGDSimulation:
    """In-process federated simulation of ``m`` clients of which ``malicious_ids`` are attackers.

    State lives here (model, sampler cursors, round counter); the defense keeps its own state and
    the attack is a pure function of the round's benign gradients plus its context.
    """

    def __init__(self, spec: SimulationSpec) -> None:
        data = spec.data
        self.device = torch.device(spec.device)
        self.model = spec.model.to(self.device)
        self.train_x = data.train_x.to(self.device)
        self.train_y = data.train_y.to(self.device)
        self.test_x = data.test_x.to(self.device)
        self.test_y = data.test_y.to(self.device)
        self.sampler = RoundRobinSampler(data.partitions, spec.batch_size)
        self.num_clients = len(data.partitions)
        self.aggregator = spec.aggregator
        self.malicious = torch.zeros(self.num_clients, dtype=torch.bool)
        if spec.malicious_ids:
            self.malicious[torch.as_tensor(spec.malicious_ids, dtype=torch.long)] = True
        self.c_max = spec.c_max
        self.lr_fn = spec.lr_fn
        self.backend: Backend = spec.backend
        self.vmap_chunk = spec.vmap_chunk or default_vmap_chunk(self.device, len(data.partitions))
        # A backdoor's trigger value: the training inputs' largest value (a white pixel).
        self.trigger_high = float(self.train_x.amax()) if self.train_x.numel() else 0.0
        self.attack = spec.attack
        self.num_classes = (
            int(data.num_classes) if data.num_classes is not None else int(data.train_y.max()) + 1
        )
        if spec.aggregate_only not in (None, "benign", "malicious"):
            raise ConfigError(
                f"aggregate_only must be 'benign', 'malicious' or None, got {spec.aggregate_only!r}"
            )
        self.aggregate_only = spec.aggregate_only
        self.defense_view = DefenseView(spec.aggregator)
        # Sign of the last global update (the flip-score reference s_g); None before round 1.
        self.s_g: Tensor | None = None
        self.loss_fn = spec.loss_fn
        self.round = 0
        self.num_params = num_params(self.model)
        self.client_ids = torch.arange(self.num_clients)
        self.n_samples = torch.as_tensor(self.sampler.n_samples, dtype=torch.float32)
        self.rng = torch.Generator().manual_seed(spec.seed)
        # Training-time augmentation of the clients' batches (e.g. CIFAR crop + flip), drawn
        # from its own generator so that it changes no other random stream of the run.
        self.augment = spec.augment
        if spec.client_optimizer not in ("sgd", "adam"):
            raise ConfigError(
                f"client_optimizer must be 'sgd' or 'adam', got {spec.client_optimizer!r}"
            )
        self.client_optimizer = spec.client_optimizer
        if isinstance(spec.local_steps, bool) or not isinstance(spec.local_steps, int):
            raise ConfigError(f"local_steps must be an integer >= 1, got {spec.local_steps!r}")
        if spec.local_steps < 1:
            raise ConfigError(f"local_steps must be an integer >= 1, got {spec.local_steps}")
        self.local_steps = spec.local_steps
        self._work: list[nn.Module] = []  # the local-training workers' copies of the model
        self.augment_rng = torch.Generator().manual_seed(
            int(np.random.SeedSequence([spec.seed, 5]).generate_state(1)[0])
        )
        self._G = torch.empty(self.num_clients, self.num_params, device=self.device)
        # FLTrust's clean root set on the server (kept out of the clients' partitions).
        self.root_sampler: RoundRobinSampler | None = None
        if spec.aggregator.needs_root_gradient:
            if data.root_indices is None or len(data.root_indices) == 0:
                raise UpdateError(f"defense {spec.aggregator.name!r} needs a server root set")
            self.root_sampler = RoundRobinSampler([data.root_indices], spec.batch_size)

    @property
    def attack(self) -> ModelAttack | DataAttack | BackdoorAttack | None:
        """The malicious clients' attack: a data-poisoning attack relabels their batches, a
        backdoor stamps its trigger on them (and, with ``poison``, also rescales their rows), a
        model-poisoning one replaces their rows of the gradient matrix."""
        return self._attack

    @attack.setter
    def attack(self, attack: ModelAttack | DataAttack | BackdoorAttack | None) -> None:
        backdoor = attack if isinstance(attack, BackdoorAttack) else None
        data = attack if backdoor is None and isinstance(attack, DataAttack) else None
        model = attack if data is None and isinstance(attack, ModelAttack) else None
        if attack is not None and model is None and data is None and backdoor is None:
            raise ConfigError(
                f"attack {attack!r} has none of poison(), poison_labels() or poison_batch()"
            )
        if backdoor is not None and not self.train_x.is_floating_point():
            raise ConfigError(
                f"backdoor attack {backdoor.name!r} needs real-valued inputs; this dataset's "
                "inputs are token ids"
            )
        self._attack, self.data_attack, self.model_attack = attack, data, model
        self.backdoor = backdoor

    def root_gradient(self) -> Tensor:
        """Server gradient g_0 on the next root batch at the current global model (FLTrust)."""
        assert self.root_sampler is not None
        idx = torch.from_numpy(self.root_sampler.next_batches()).to(self.device)
        G0, _ = client_gradients(
            self.model, self.train_x[idx], self.train_y[idx], self.loss_fn, backend="loop"
        )
        return G0[0]

    def _next_batches(self) -> tuple[Tensor, Tensor]:
        """Every client's next local batch ``x [m, B, ...]``, ``y [m, B]``: augmented, and
        poisoned for the malicious clients by a data-poisoning or backdoor attack."""
        idx = torch.from_numpy(self.sampler.next_batches()).to(self.device)
        x = self.train_x[idx]
        y = self.train_y[idx]
        if self.augment is not None:
            x = self.augment(x.flatten(0, 1), self.augment_rng).view_as(x)
        if self.data_attack is not None and bool(self.malicious.any()):
            mal = self.malicious.to(self.device)
            y[mal] = self.data_attack.poison_labels(y[mal], self.num_classes)
        if self.backdoor is not None and bool(self.malicious.any()):
            mal = self.malicious.to(self.device)
            x[mal], y[mal] = self.backdoor.poison_batch(x[mal], y[mal], self.trigger_high)
        return x, y

    def compute_gradients(self) -> tuple[Tensor, Tensor]:
        """Every client's row of the round: its gradient at the current global model on its next
        local batch (the paper), or with ``local_steps > 1`` its local-training pseudo-gradient
        (:meth:`local_training`). The losses are at the global model."""
        if self.local_steps > 1:
            return self.local_training()
        x, y = self._next_batches()
        self.model.train()
        G, losses = self._client_gradients(x, y)
        if self.client_optimizer == "adam":
            adam_first_step(G)  # what each client sends (attackers see these honest rows)
        return G, losses

    def _client_gradients(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """:func:`client_gradients` on this round's batches; a vmap call that runs out of GPU
        memory is retried on the same batches with half as many clients per call (kept for the
        rest of the run), so an automatic chunk that is too large costs a warning, not the run."""
        while True:
            try:
                return client_gradients(
                    self.model,
                    x,
                    y,
                    self.loss_fn,
                    backend=self.backend,
                    chunk_size=self.vmap_chunk,
                    out=self._G,
                )
            except torch.cuda.OutOfMemoryError:
                if self.backend != "vmap" or self.vmap_chunk <= 1:
                    raise
                self.vmap_chunk = max(1, self.vmap_chunk // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                warnings.warn(
                    f"vmap ran out of GPU memory; retrying with {self.vmap_chunk} clients per "
                    "call (set vmap_chunk to choose)",
                    RuntimeWarning,
                    stacklevel=2,
                )

    def local_training(self) -> tuple[Tensor, Tensor]:
        """``local_steps`` steps of local training per client from the global model ``w``, on its
        next ``local_steps`` batches, with the round's learning rate ``lr`` (plain SGD, or a
        fresh Adam with ``client_optimizer = "adam"``); each client's row is the pseudo-gradient
        ``(w - w_local) / lr``, so the server step ``w - lr * mean(rows)`` is FedAvg's mean of
        the local models. An extension of the paper's one-step setting (docs/design.md, "The
        FedSGD round"). Clients train on worker threads, each single-threaded on its own copy
        of the model (as many workers as torch threads with the ``threads`` backend, one
        otherwise): every client's numbers are the same whatever the number of workers."""
        batches = [self._next_batches() for _ in range(self.local_steps)]
        lr = float(self.lr_fn(self.round))
        threads = self.backend == "threads" and self.device.type == "cpu"
        workers = max(1, min(torch.get_num_threads() if threads else 1, self.num_clients))
        while len(self._work) < workers:
            self._work.append(copy.deepcopy(self.model))
        params = [p for p in self.model.parameters() if p.requires_grad]
        w0 = torch.cat([p.detach().reshape(-1) for p in params])
        losses = torch.empty(self.num_clients)
        bounds = [round(k * self.num_clients / workers) for k in range(workers + 1)]
        pool = worker_pool(workers)
        futures = [
            pool.submit(
                self._train_clients,
                self._work[k],
                range(bounds[k], bounds[k + 1]),
                batches,
                lr,
                w0,
                losses,
            )
            for k in range(workers)
        ]
        for f in futures:
            f.result()
        return self._G, losses

    def _train_clients(
        self,
        work: nn.Module,
        clients: range,
        batches: list[tuple[Tensor, Tensor]],
        lr: float,
        w0: Tensor,
        losses: Tensor,
    ) -> None:
        """One worker's clients: local training on ``work`` (torch single-threaded here)."""
        torch.set_num_threads(1)
        params = [p for p in self.model.parameters() if p.requires_grad]
        wparams = [p for p in work.parameters() if p.requires_grad]
        work.train()
        with torch.enable_grad():
            for i in clients:
                with torch.no_grad():
                    for p, q in zip(wparams, params, strict=True):
                        p.copy_(q)
                opt: torch.optim.Optimizer = (
                    torch.optim.Adam(wparams, lr=lr)
                    if self.client_optimizer == "adam"
                    else torch.optim.SGD(wparams, lr=lr)
                )
                for k, (x, y) in enumerate(batches):
                    opt.zero_grad(set_to_none=True)
                    loss = self.loss_fn(work(x[i]), y[i])
                    loss.backward()
                    opt.step()
                    if k == 0:
                        losses[i] = float(loss.detach())
                with torch.no_grad():
                    w_local = torch.cat([p.detach().reshape(-1) for p in wparams])
                    self._G[i] = (w0 - w_local) / lr

    def poison(self, G: Tensor, root_gradient: Tensor | None = None) -> dict[str, float]:
        """Replace the malicious rows of ``G`` in place with the model-poisoning attack's rows
        (``root_gradient``: the server's root gradient of the round, known to the attackers).

        A wrong shape is a bug in the attack (:class:`UpdateError`); NaN/Inf values are not: a
        malicious client may send them, and the aggregators exclude such rows (hostile-row
        policy, docs/reliability.md). The round still fails if the aggregated update is not finite.
        """
        ctx = AttackContext(
            malicious=self.malicious.clone(),
            c_max=self.c_max,
            round=self.round,
            generator=self.rng,
            defense=self.defense_view,
            root_gradient=None if root_gradient is None else root_gradient.clone(),
        )
        assert self.model_attack is not None
        out = self.model_attack.poison(G, ctx)
        rows = out.rows if isinstance(out, Poison) else out
        c = int(self.malicious.sum())
        if not isinstance(rows, Tensor) or tuple(rows.shape) != (c, self.num_params):
            shape = tuple(rows.shape) if isinstance(rows, Tensor) else type(rows).__name__
            raise UpdateError(
                f"round {self.round}: attack {self.attack!r} returned {shape}, "
                f"expected ({c}, {self.num_params})"
            )
        G[self.malicious.to(G.device)] = rows.to(device=G.device, dtype=G.dtype)
        return dict(out.record) if isinstance(out, Poison) else {}

    def step(self, *, want_flip_scores: bool = False) -> RoundResult:
        """Run one synchronous FedSGD round and return its record.

        ``want_flip_scores``: also compute every client's flip-score against the previous global
        update's sign when the defense does not report them (always done with ``aggregate_only``).
        """
        G, losses = self.compute_gradients()
        benign = losses[~self.malicious] if bool((~self.malicious).any()) else losses
        if benign.numel() and not bool(torch.isfinite(benign).any()):
            raise DivergedError(self.round, "every benign client's loss is non-finite")
        attack_record: dict[str, float] = {}
        root = None if self.root_sampler is None else self.root_gradient()
        if self.model_attack is not None and bool(self.malicious.any()):
            attack_record = self.poison(G, root)
        rows = None
        if self.aggregate_only is not None:
            rows = self.malicious if self.aggregate_only == "malicious" else ~self.malicious
            if not bool(rows.any()):
                raise ConfigError(
                    f"aggregate_only = {self.aggregate_only!r} but that group is empty"
                )
        sel = slice(None) if rows is None else rows.to(G.device)
        ids = self.client_ids if rows is None else self.client_ids[rows]
        ctx_agg = AggregationContext(
            n_samples=self.n_samples if rows is None else self.n_samples[rows],
            root_gradient=root,
        )
        try:
            out = aggregate_round(
                self.aggregator,
                G if rows is None else G[sel],
                ids,
                ctx_agg,
                s_g=self.s_g,
                want_flip_scores=want_flip_scores and rows is None,
            )
        except NonFiniteUpdateError as exc:
            raise DivergedError(self.round, str(exc)) from None
        agg, fs = out.aggregate, out.flip_scores
        if rows is not None:
            # Figure 2's modes: weights over every client, and everyone's flip-score
            agg = self._widen(agg, rows)
            fs = every_flip_score(G, self.s_g)
        lr = float(self.lr_fn(self.round))
        apply_update(self.model, agg.update, lr)
        if not params_finite(self.model):
            raise DivergedError(self.round, "the server step made parameters non-finite")
        self.s_g = next_direction(agg.update)
        benign_loss = losses[~self.malicious] if bool((~self.malicious).any()) else losses
        result = RoundResult(
            round=self.round,
            lr=lr,
            train_loss=float(benign_loss.mean()),
            aggregate=agg,
            attack=attack_record,
            flip_scores=fs,
        )
        self.round += 1
        return result

    def _widen(self, agg: Aggregate, rows: Tensor) -> Aggregate:
        """An aggregate over a subset of clients, with weights (0 for the others) and the
        defense's reputations (when it keeps them) over all clients."""
        weights = torch.zeros(self.num_clients, dtype=agg.weights.dtype)
        weights[rows] = agg.weights.detach().cpu()
        rep = self.defense_view.public_state().get("reputation")
        diagnostics = Diagnostics(
            fs_low=agg.diagnostics.fs_low,
            fs_high=agg.diagnostics.fs_high,
            reputation=rep if isinstance(rep, Tensor) and rep.numel() == self.num_clients else None,
        )
        return Aggregate(update=agg.update, weights=weights, diagnostics=diagnostics)

    def evaluate(self) -> tuple[float, float]:
        """Test accuracy and loss of the current global model."""
        ev = self.evaluate_model()
        return ev.accuracy, ev.loss

    def evaluate_model(self) -> Evaluation:
        """Test accuracy, loss and per-class accuracy of the current global model, and a
        backdoor's attack success rate when the attack is one."""
        ev = evaluate_model(self.model, self.test_x, self.test_y, self.num_classes)
        if self.backdoor is None:
            return ev
        asr = attack_success_rate(
            self.model, self.test_x, self.test_y, self.backdoor, self.trigger_high
        )
        return replace(ev, attack_success=asr)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: model, sampler cursors, round, defense state, RNG."""
        return {
            "round": self.round,
            "model": self.model.state_dict(),
            "sampler": self.sampler.state_dict(),
            "root_sampler": None if self.root_sampler is None else self.root_sampler.state_dict(),
            "aggregator": self.aggregator.state_dict(),
            "rng": self.rng.get_state(),
            "augment_rng": self.augment_rng.get_state(),
            "s_g": self.s_g,
            # a stateful attack's state (Mimic's chosen client); None for the stateless ones
            "attack": self._attack_state(),
        }

    def _attack_state(self) -> dict[str, Any] | None:
        fn = getattr(self._attack, "state_dict", None)
        return fn() if callable(fn) else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        self.model.load_state_dict(state["model"])
        self.sampler.load_state_dict(state["sampler"])
        if self.root_sampler is not None and state.get("root_sampler") is not None:
            self.root_sampler.load_state_dict(state["root_sampler"])
        self.aggregator.load_state_dict(state["aggregator"])
        self.rng.set_state(state["rng"])
        if state.get("augment_rng") is not None:
            self.augment_rng.set_state(state["augment_rng"])
        self.s_g = state.get("s_g")
        attack_state = state.get("attack")
        load = getattr(self._attack, "load_state_dict", None)
        if attack_state is not None and callable(load):
            load(attack_state)
