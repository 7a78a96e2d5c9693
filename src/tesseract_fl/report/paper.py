"""The paper's printed numbers (Tables 2 and 3), loaded from ``paper_values.toml``.

They are shown beside our results and compared with them in the report; nothing else in
tesseract-fl reads them, so a paper number can never leak into a computation.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError

__all__ = ["PaperTable2", "PaperTable3", "PaperValues", "load_paper_values"]

#: Groups of Table 3 (the paper's rows n_ben and n_mal).
GROUPS: tuple[str, ...] = ("benign", "malicious")


@dataclass(frozen=True)
class PaperTable2:
    """Paper Table 2: test accuracy (%) or, for Shakespeare, test loss at c/m = 0.2."""

    source: str
    datasets: tuple[str, ...]
    dataset_labels: dict[str, str]
    metric: dict[str, str]
    rows: tuple[tuple[str, str], ...]
    values: dict[tuple[str, str, str], float]

    def value(self, attack: str, defense: str, dataset: str) -> float | None:
        """The printed number of one cell, or None where the paper has no such cell."""
        return self.values.get((attack, defense, dataset))


@dataclass(frozen=True)
class PaperTable3:
    """Paper Table 3: fraction of benign / malicious clients with weight above 1e-4."""

    source: str
    dataset: str
    attacks: tuple[str, ...]
    defenses: tuple[str, ...]
    values: dict[tuple[str, str, str], float]

    def value(self, defense: str, group: str, attack: str) -> float | None:
        """The printed fraction, or None where the paper prints "-" (n_mal without attack)."""
        return self.values.get((defense, group, attack))


@dataclass(frozen=True)
class PaperValues:
    """Everything the report compares against, with the paper it comes from."""

    title: str
    authors: str
    table2: PaperTable2
    table3: PaperTable3


def _table(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"paper values: missing table [{key}]")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"paper values: {where} must be a number, got {value!r}")
    return float(value)


def _parse_table2(raw: dict[str, Any]) -> PaperTable2:
    datasets = tuple(raw["datasets"])
    rows: list[tuple[str, str]] = []
    values: dict[tuple[str, str, str], float] = {}
    by_attack = _table(raw, "values")
    for attack in raw["attacks"]:
        for defense, cells in _table(by_attack, attack).items():
            rows.append((attack, defense))
            for dataset, v in cells.items():
                if dataset not in datasets:
                    raise ConfigError(f"paper values: table2 {attack}/{defense}: {dataset!r}?")
                values[(attack, defense, dataset)] = _number(v, f"table2 {attack}/{defense}")
    return PaperTable2(
        source=str(raw["source"]),
        datasets=datasets,
        dataset_labels=dict(_table(raw, "dataset_labels")),
        metric=dict(_table(raw, "metric")),
        rows=tuple(rows),
        values=values,
    )


def _parse_table3(raw: dict[str, Any]) -> PaperTable3:
    attacks = tuple(raw["attacks"])
    values: dict[tuple[str, str, str], float] = {}
    by_defense = _table(raw, "values")
    for defense in raw["defenses"]:
        for group, cells in _table(by_defense, defense).items():
            if group not in GROUPS:
                raise ConfigError(f"paper values: table3 {defense}: group {group!r}?")
            for attack, v in cells.items():
                if attack not in attacks:
                    raise ConfigError(f"paper values: table3 {defense}/{group}: {attack!r}?")
                values[(defense, group, attack)] = _number(v, f"table3 {defense}/{group}")
    return PaperTable3(
        source=str(raw["source"]),
        dataset=str(raw["dataset"]),
        attacks=attacks,
        defenses=tuple(raw["defenses"]),
        values=values,
    )


def parse_paper_values(text: str) -> PaperValues:
    """Parse the TOML text of a paper-values file (format of ``paper_values.toml``)."""
    try:
        raw = tomllib.loads(text)
        source = _table(raw, "source")
        return PaperValues(
            title=str(source["title"]),
            authors=str(source["authors"]),
            table2=_parse_table2(_table(raw, "table2")),
            table3=_parse_table3(_table(raw, "table3")),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"paper values are malformed: {exc!r}") from None


@cache
def _bundled() -> PaperValues:
    text = (resources.files("tesseract_fl.report") / "paper_values.toml").read_text()
    return parse_paper_values(text)


def load_paper_values(path: str | Path | None = None) -> PaperValues:
    """The bundled paper values (paper Tables 2 and 3), or those of another file ``path``."""
    if path is None:
        return _bundled()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"paper values file {str(p)!r} does not exist")
    return parse_paper_values(p.read_text())
