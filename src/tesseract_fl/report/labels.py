"""Display names for datasets, attacks and defenses, spelled as in the paper."""

from __future__ import annotations

__all__ = ["attack_label", "dataset_label", "defense_label"]

ATTACK_LABELS: dict[str, str] = {
    "none": "None",
    "full_krum": "Full-Krum",
    "full_trim": "Full-Trim",
    "adaptive_krum": "Adaptive-Krum",
    "adaptive_trim": "Adaptive-Trim",
    "label_flip": "Label flipping",
    "targeted_label_flip": "Targeted label flipping",
    "alie": "ALIE",
    "ipm": "IPM",
    "min_max": "Min-Max",
    "min_sum": "Min-Sum",
    "sign_flip": "Sign flipping",
    "gaussian": "Gaussian",
    "badnets": "BadNets",
    "model_replacement": "Model replacement",
    "dba": "DBA",
    "mimic": "Mimic",
    "fang_fltrust": "Fang-FLTrust",
}

DEFENSE_LABELS: dict[str, str] = {
    "fedsgd": "FedSGD",
    "tesseract": "TESSERACT",
    "faba": "FABA",
    "foolsgold": "FoolsGold",
    "fltrust": "FLTrust",
    "krum": "Krum",
    "bulyan": "Bulyan",
    "trimmed_mean": "Trim",
    "median": "Median",
    "geomed": "GeoMed",
    "centered_clipping": "CClip",
    "meamed": "Meamed",
    "dnc": "DnC",
    "monna": "MoNNA",
    "caf": "CAF",
    "flame": "FLAME",
}

DATASET_LABELS: dict[str, str] = {
    "mnist": "MNIST",
    "fmnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "shakespeare": "Shakespeare",
    "femnist": "FEMNIST",
    "breast_cancer": "Breast Cancer",
    "chmnist": "Ch-MNIST",
}


def attack_label(name: str) -> str:
    """The paper's name of an attack (the registry name where the paper has none)."""
    return ATTACK_LABELS.get(name, name)


def defense_label(name: str) -> str:
    """The paper's name of a defense (Table 2 calls trimmed mean "Trim"); a composed name keeps
    its pre-aggregators: ``clip+tesseract`` -> ``clip+TESSERACT``; TESSERACT's filter in front of
    a rule (``tesseract>median``) reads ``TESSERACT>Median``."""
    if ">" in str(name):
        return ">".join(defense_label(part) for part in str(name).split(">"))
    *pres, rule = str(name).split("+")
    return "+".join([*pres, DEFENSE_LABELS.get(rule, rule)])


def dataset_label(name: str) -> str:
    """A dataset's display name."""
    return DATASET_LABELS.get(name, name)
