"""The FedSGD round loop: batches, per-client gradients, attack, aggregation, server step."""

from tesseract_fl.simulation.engine import FedSGDSimulation, RoundResult, apply_update, evaluate
from tesseract_fl.simulation.gradients import BACKENDS, client_gradients, default_backend
from tesseract_fl.simulation.sampler import RoundRobinSampler
from tesseract_fl.simulation.schedules import LR_SCHEDULES, make_schedule

__all__ = [
    "BACKENDS",
    "LR_SCHEDULES",
    "FedSGDSimulation",
    "RoundResult",
    "RoundRobinSampler",
    "apply_update",
    "client_gradients",
    "default_backend",
    "evaluate",
    "make_schedule",
]
