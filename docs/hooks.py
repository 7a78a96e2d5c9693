"""MkDocs hook: the reference pages generated from the code, so nothing is written twice.

Generated at build time (never committed): one page per registered defense and attack (its
module's formula and citation through mkdocstrings, its parameters from the registry, its
hostile-input behaviour from the defense's declared flags, a runnable snippet), the configuration
reference (``ExperimentConfig``'s fields and the registered names) and the CLI reference (each
subcommand's ``--help``). ``tests/test_docs_site.py`` runs every generated snippet.
"""

from __future__ import annotations

import argparse
import textwrap
from typing import Any

from mkdocs.structure.files import File, Files

from tesseract_fl.plugins.registry import _first_line

#: Clients, assumed-malicious count and gradient length of the snippets (small, so they run in
#: the test suite in milliseconds; Bulyan needs m >= 4 c_max + 3).
M, C, P = 12, 2, 1000


def _fence(code: str, lang: str = "python") -> str:
    return f"```{lang}\n{code.rstrip()}\n```\n"


def defense_snippet(name: str) -> str:
    """Python that builds defense ``name`` and aggregates a round with two flipped clients."""
    from tesseract_fl.aggregators import make_aggregator

    agg = make_aggregator(name, num_clients=M, c_max=C)
    ctx = ""
    if getattr(agg, "needs_root_gradient", False):
        ctx = (
            "\n# FLTrust scores every client against the server's own gradient on its root set:\n"
            "ctx = AggregationContext(root_gradient=G[C:].mean(0))\n"
        )
    call = "defense.aggregate(G, ctx=ctx)" if ctx else "defense.aggregate(G)"
    imports = "from tesseract_fl.aggregators import make_aggregator\n"
    if ctx:
        imports += "from tesseract_fl.aggregators.base import AggregationContext\n"
    return (
        f"import torch\n\n{imports}\n"
        f"M, C, P = {M}, {C}, {P}  # clients, assumed malicious, gradient length\n"
        "G = torch.randn(M, P, generator=torch.Generator().manual_seed(0))\n"
        "G[:C] *= -4  # two clients send flipped, scaled gradients\n"
        f'defense = make_aggregator("{name}", num_clients=M, c_max=C)\n'
        f"{ctx}"
        f"result = {call}\n"
        "print(result.update.shape, result.weights.round(decimals=3))\n"
        "assert result.update.shape == (P,) and torch.isfinite(result.update).all()\n"
    )


def attack_snippet(name: str) -> str:
    """Python that builds attack ``name`` and applies it to one round's gradients or labels."""
    from tesseract_fl.attacks import (
        NEEDS_DEFENSE_STATE,
        is_backdoor,
        is_data_attack,
        make_attack,
        needs_root_gradient,
    )

    head = (
        "import torch\n\nfrom tesseract_fl.attacks import make_attack\n"
        "from tesseract_fl.attacks.base import AttackContext\n\n"
    )
    if is_backdoor(make_attack(name)):
        return (
            "import torch\n\nfrom tesseract_fl.attacks import make_attack\n\n"
            f'attack = make_attack("{name}")\n'
            "# two malicious clients' batches of 8 images [c, B, C, H, W] and their labels\n"
            "x = torch.zeros(2, 8, 1, 28, 28)\n"
            "y = torch.ones(2, 8, dtype=torch.long)\n"
            "px, py = attack.poison_batch(x, y, high=1.0)  # high: the trigger's pixel value\n"
            "print(py[0].tolist(), int(px[0, 0].sum()))  # relabelled samples, trigger pixels\n"
            "# the attack success rate stamps the global trigger on test images:\n"
            "print(int(attack.stamp_global(x[0], high=1.0)[0].sum()))\n"
        )
    if is_data_attack(make_attack(name)):
        return (
            "import torch\n\nfrom tesseract_fl.attacks import make_attack\n\n"
            f'attack = make_attack("{name}")\n'
            "y = torch.arange(10)  # a malicious client's labels\n"
            "print(attack.poison_labels(y, num_classes=10))\n"
        )
    defense = ""
    if name in NEEDS_DEFENSE_STATE:
        head += "from tesseract_fl.aggregators import make_aggregator\n"
        head += "from tesseract_fl.attacks.base import DefenseView\n\n"
        defense = (
            "# Adaptive attacks read the defense's public state (TESSERACT's cut-offs):\n"
            'tesseract = make_aggregator("tesseract", num_clients=M, c_max=C)\n'
            "view = DefenseView(tesseract)\n"
        )
    root = ""
    if needs_root_gradient(make_attack(name)):
        root = (
            "# It reads the server's root-set gradient (full knowledge of FLTrust's round):\n"
            "g0 = G[C:].mean(0)\n"
        )
    return (
        f"{head}"
        f"M, C, P = {M}, {C}, {P}\n"
        "G = torch.randn(M, P, generator=torch.Generator().manual_seed(0))  # honest gradients\n"
        "malicious = torch.zeros(M, dtype=torch.bool)\n"
        "malicious[:C] = True\n"
        f"{defense}{root}"
        f'attack = make_attack("{name}")\n'
        "ctx = AttackContext(\n"
        "    malicious=malicious, c_max=C, generator=torch.Generator().manual_seed(1)"
        + (", defense=view" if defense else "")
        + (", root_gradient=g0" if root else "")
        + "\n)\n"
        "poison = attack.poison(G, ctx)\n"
        "G[malicious] = poison.rows  # what the server receives\n"
        "print(poison.rows.shape, poison.record)\n"
    )


def _params_table(params: dict[str, Any]) -> str:
    if not params:
        return "No parameters.\n"
    rows = ["| parameter | default |", "|---|---|"]
    rows += [f"| `{k}` | `{v!r}` |" for k, v in params.items()]
    return "\n".join(rows) + "\n"


def _hostile_md(cls: type) -> str:
    """What the shared hostile-input policy does around this defense (docs/reliability.md)."""
    lines = [
        "Applied by the `Defense` base around the rule, as for every defense: rows with a NaN or "
        "an infinity are excluded (weight 0, listed in `diagnostics.excluded`), the rule sees "
        "the finite rows only with `c_max` reduced to what they can hold "
        "(`diagnostics.c_max_effective`), and client ids must be distinct and in range.",
    ]
    if getattr(cls, "runs_without_finite_rows", False):
        lines.append(
            "When every row is excluded the rule still runs, so its state (reputations, "
            "history) advances for the round."
        )
    else:
        lines.append("When every row is excluded the update is zero.")
    if getattr(cls, "needs_root_gradient", False):
        lines.append(
            "It needs `ctx.root_gradient`: a missing or non-finite root gradient is an error."
        )
    from tesseract_fl.aggregators.base import Defense

    if getattr(cls, "state_dict", None) not in (None, getattr(Defense, "state_dict", None)):
        lines.append(
            "Its state (`state_dict` / `load_state_dict`) is saved in every checkpoint, so a "
            "resumed run continues with the same state."
        )
    else:
        lines.append("It keeps no state between rounds.")
    return " ".join(lines) + "\n"


def component_page(info: Any) -> str:
    """The page of one registered defense or attack."""
    obj = info.obj
    module = getattr(obj, "__module__", "")
    qual = f"{module}.{getattr(obj, '__qualname__', '')}"
    snippet = defense_snippet(info.name) if info.kind == "defense" else attack_snippet(info.name)
    parts = [
        f"# `{info.name}`\n",
        f"{info.description}\n",
        f'Config: `{info.kind} = "{info.name}"`, parameters under `[{info.kind}]`. '
        f"Class `{qual}`.\n",
        "## Formula and source\n",
        f"::: {module}\n    options:\n      members: false\n      show_root_heading: false\n",
        "## Parameters\n",
        _params_table(info.params),
        f"::: {qual}\n    options:\n      show_root_heading: true\n      members: false\n"
        "      merge_init_into_class: true\n      show_source: false\n",
    ]
    if info.kind == "defense":
        parts += ["## Hostile input\n", _hostile_md(obj)]
    parts += ["## Try it\n", _fence(snippet)]
    return "\n".join(parts)


def pre_snippet(name: str) -> str:
    """Python that puts pre-aggregator ``name`` before the coordinate-wise median."""
    return defense_snippet(f"{name}+median")


def pre_page(name: str, cls: type) -> str:
    """The page of one pre-aggregator (``NAME+RULE``)."""
    from tesseract_fl.plugins.registry import constructor_defaults

    params = {k: v for k, v in constructor_defaults(cls).items() if k != "c_max"}
    return "\n".join(
        [
            f"# `{name}+RULE` (pre-aggregator)\n",
            f'Config: `defense = "{name}+RULE"` (e.g. `{name}+median`, `{name}+tesseract`); '
            f"its parameters under `[defense]` as `{name}.KEY`. Class "
            f"`{cls.__module__}.{cls.__qualname__}`.\n",
            "## Formula and source\n",
            f"::: {cls.__module__}\n    options:\n      members: false\n"
            "      show_root_heading: false\n",
            "## Parameters\n",
            _params_table(params),
            "## Hostile input\n",
            "The pre-aggregator receives the whole matrix, rows holding a NaN or an infinity "
            "included, and handles them as its module docstring above says; the rule behind "
            "it then excludes every non-finite row it receives under the shared policy, and "
            "the weights are reported per client. The hostile-input tests run it in front of "
            "a rule under NaN, infinite, huge and duplicate rows.\n",
            "## Try it\n",
            _fence(pre_snippet(name)),
        ]
    )


def _index(kind: str, infos: list[Any]) -> str:
    title = {"defense": "Defenses", "attack": "Attacks"}[kind]
    rows = [f"# {title}\n", "| name | what it is |", "|---|---|"]
    rows += [f"| [`{i.name}`]({i.name}.md) | {i.description} |" for i in infos]
    extra = ""
    if kind == "defense":
        extra = (
            '\nPre-aggregators compose with any rule by name (`defense = "nnm+median"`):\n\n'
            "| name | what it is |\n|---|---|\n"
            + "".join(
                f"| [`{n}+RULE`](pre-{n}.md) | {_first_line(c)} |\n"
                for n, c in sorted(_pre_aggregators().items())
            )
        )
    return "\n".join(rows) + "\n" + extra


def config_page() -> str:
    """Every config key (from ``ExperimentConfig``) and every registered name."""
    from tesseract_fl.experiments.config import (
        AGGREGATE_ONLY,
        BACKEND_CHOICES,
        DEVICES,
        PARTITIONS,
        list_presets,
    )
    from tesseract_fl.plugins import registries

    names = {kind: sorted(reg.infos) for kind, reg in registries().items()}
    choices = {
        "dataset": names["dataset"],
        "model": names["model"],
        "defense": names["defense"],
        "attack": ["none", *names["attack"]],
        "partition": list(PARTITIONS),
        "aggregate_only": list(AGGREGATE_ONLY),
        "device": list(DEVICES),
        "backend": list(BACKEND_CHOICES),
    }
    rows = ["| key | allowed values |", "|---|---|"]
    rows += [f"| `{k}` | {', '.join(f'`{v}`' for v in vs)} |" for k, vs in choices.items()]
    return "\n".join(
        [
            "# Configuration reference\n",
            "A config is flat keys in a TOML file (`run --config FILE`), a preset "
            "(`run --preset NAME`) or `--set key=value` overrides, in that order; a defense's or "
            "an attack's parameters go under `[defense]` / `[attack]`. Unknown keys and values "
            "are errors that name the key and the allowed values. `tesseract-fl presets NAME` "
            "prints a preset as a file `--config` reads back.\n",
            "## Names\n",
            "\n".join(rows) + "\n",
            f"Presets: {', '.join(f'`{p}`' for p in list_presets())}.\n",
            "## Keys\n",
            "Defaults are the paper's MNIST setting (Table 1).\n",
            "::: tesseract_fl.experiments.config.ExperimentConfig\n    options:\n"
            "      show_root_heading: false\n      show_source: false\n"
            "      members_order: source\n      filters: ['!^_', '!resolved_c_max', '!run_id', "
            "'!to_dict', '!from_dict']\n      show_attribute_values: true\n"
            "      summary: false\n",
        ]
    )


def cli_page() -> str:
    """``--help`` of ``tesseract-fl`` and of each subcommand, at 80 columns."""
    import os

    from tesseract_fl.cli import build_parser

    os.environ["COLUMNS"] = "80"
    parser = build_parser()
    parts = ["# CLI reference\n", _fence(parser.format_help(), "text")]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        parts += [f"## `tesseract-fl {name}`\n", _fence(p.format_help(), "text")]
    return "\n".join(parts)


def generated_pages() -> dict[str, str]:
    """Path under docs/ -> Markdown of every generated page."""
    from tesseract_fl.plugins import registries

    regs = registries()
    pages: dict[str, str] = {
        "reference/config.md": config_page(),
        "reference/cli.md": cli_page(),
    }
    for kind, folder in (("defense", "defenses"), ("attack", "attacks")):
        infos = [regs[kind].infos[n] for n in sorted(regs[kind].infos)]
        pages[f"{folder}/index.md"] = _index(kind, infos)
        for info in infos:
            pages[f"{folder}/{info.name}.md"] = component_page(info)
    for name, cls in _pre_aggregators().items():
        pages[f"defenses/pre-{name}.md"] = pre_page(name, cls)
    return pages


def _pre_aggregators() -> dict[str, type]:
    from tesseract_fl.preaggregators import PRE_AGGREGATORS

    return dict(PRE_AGGREGATORS)


def on_files(files: Files, config: Any) -> Files:
    for path, text in generated_pages().items():
        files.append(File.generated(config, path, content=textwrap.dedent(text)))
    return files


__all__ = ["attack_snippet", "defense_snippet", "generated_pages", "pre_snippet"]
