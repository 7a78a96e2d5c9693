"""The FedSGD round loop: batches, per-client gradients, attack, aggregation, server step."""

from tesseract_fl.simulation.engine import (
    FederatedData,
    FedSGDSimulation,
    RoundResult,
    SimulationSpec,
    apply_update,
    evaluate,
)
from tesseract_fl.simulation.gradients import BACKENDS, client_gradients, default_backend
from tesseract_fl.simulation.sampler import RoundRobinSampler
from tesseract_fl.simulation.schedules import LR_SCHEDULES, make_schedule

__all__ = [
    "BACKENDS",
    "LR_SCHEDULES",
    "FedSGDSimulation",
    "FederatedData",
    "RoundResult",
    "RoundRobinSampler",
    "SimulationSpec",
    "apply_update",
    "client_gradients",
    "default_backend",
    "evaluate",
    "make_schedule",
]
