"""The plugin API: registration, discovery, fingerprints and the end-to-end path a researcher
takes with the example plugin (examples/plugin) through the CLI, grids and the report."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import tesseract_fl
from tesseract_fl.aggregators import AGGREGATORS, make_aggregator
from tesseract_fl.attacks import ATTACKS
from tesseract_fl.data import DATASETS, Dataset, load_dataset
from tesseract_fl.errors import ConfigError, DatasetError
from tesseract_fl.experiments.config import resolve_config
from tesseract_fl.experiments.runner import run_experiment
from tesseract_fl.experiments.store import ResultsStore
from tesseract_fl.models import MODELS, make_model
from tesseract_fl.plugins import all_components, load_entry_points, load_plugin

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"


class _Half:
    """A toy rule: half the mean."""

    name = "half_mean"

    def aggregate(self, G: Any, client_ids: Any = None, ctx: Any = None) -> Any:
        from tesseract_fl.aggregators import Aggregate

        m = G.shape[0]
        return Aggregate(G.mean(dim=0) * 0.5, torch.full((m,), 1.0 / m, dtype=torch.float64))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _forget(kind_registry: Any, name: str) -> None:
    kind_registry.pop(name, None)
    kind_registry.infos.pop(name, None)


def test_registration_as_decorator_and_call_with_clash_errors() -> None:
    try:
        assert tesseract_fl.register_defense()(_Half) is _Half  # name from the class
        assert AGGREGATORS["half_mean"] is _Half
        assert AGGREGATORS.infos["half_mean"].origin == "code"
        agg = make_aggregator("half_mean", num_clients=4, c_max=1)
        assert torch.equal(agg.aggregate(torch.ones(4, 3)).update, torch.full((3,), 0.5))
        tesseract_fl.register_defense("half_mean", _Half)  # the same class again: fine
        with pytest.raises(ConfigError, match=r"already registered.*replace=True"):
            tesseract_fl.register_defense("half_mean", type("Other", (_Half,), {}))
        with pytest.raises(ConfigError, match="already registered"):
            tesseract_fl.register_defense("tesseract", type("Mine", (_Half,), {}))
        with pytest.raises(ConfigError, match="aggregate"):
            tesseract_fl.register_defense("not_a_rule", object)
        with pytest.raises(ConfigError, match="poison"):
            tesseract_fl.register_attack("not_an_attack", _Half)
        with pytest.raises(ConfigError, match="not allowed"):
            tesseract_fl.register_model("bad name", lambda n: torch.nn.Linear(2, n))
        with pytest.raises(ConfigError, match="did you mean 'half_mean'"):
            make_aggregator("half_meen", num_clients=4, c_max=1)
    finally:
        _forget(AGGREGATORS, "half_mean")


def test_builtins_are_registered_like_plugins() -> None:
    kinds = {(c.kind, c.name): c for c in all_components()}
    for kind, name in (
        ("defense", "tesseract"),
        ("attack", "full_trim"),
        ("model", "mnist_cnn"),
        ("dataset", "mnist"),
    ):
        assert kinds[(kind, name)].builtin
    assert kinds[("defense", "tesseract")].params["mu_d"] == 0.99
    assert "num_clients" not in kinds[("defense", "krum")].params  # filled by the round
    with pytest.raises(ConfigError, match="did you mean 'mnist_cnn'"):
        make_model("mnist_cn")
    with pytest.raises(DatasetError, match="did you mean 'mnist'"):
        load_dataset("mnsit")


def test_model_and_dataset_plugins_are_checked() -> None:
    tesseract_fl.register_model("not_a_module_test", lambda n: "oops")
    tesseract_fl.register_dataset(
        "bad_labels_test",
        lambda d: Dataset(
            "bad",
            torch.zeros(4, 2),
            torch.tensor([0, 1, 2, 5]),
            torch.zeros(2, 2),
            torch.tensor([0, 1]),
            3,
            "test",
        ),
    )
    tesseract_fl.register_dataset("not_a_dataset_test", lambda d: {"x": 1})
    try:
        with pytest.raises(ConfigError, match=r"not a torch\.nn\.Module"):
            make_model("not_a_module_test")
        with pytest.raises(DatasetError, match=r"train_y must lie in \[0, 3\)"):
            load_dataset("bad_labels_test")
        with pytest.raises(DatasetError, match=r"not a tesseract_fl\.data\.Dataset"):
            load_dataset("not_a_dataset_test")
    finally:
        _forget(MODELS, "not_a_module_test")
        _forget(DATASETS, "bad_labels_test")
        _forget(DATASETS, "not_a_dataset_test")


def test_plugin_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_plugin(str(tmp_path / "nosuch.py"))
    with pytest.raises(ConfigError, match="no module named 'no_such_plugin_mod'"):
        load_plugin("no_such_plugin_mod")
    broken = tmp_path / "broken_plugin.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match=r"failed to import: RuntimeError: boom \(at .*broken"):
        load_plugin(str(broken))


def test_entry_point_plugins_are_discovered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package listing a module under the ``tesseract_fl.plugins`` group is imported."""
    import tesseract_fl.plugins as plugins

    (tmp_path / "ep_plugin_mod.py").write_text(
        "import tesseract_fl, torch\n"
        "tesseract_fl.register_model('ep_model_test', lambda n: torch.nn.Linear(3, n))\n"
    )
    dist = tmp_path / "ep_plugin_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[tesseract_fl.plugins]\nmine = ep_plugin_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_ENTRY_POINTS_DONE", False)
    try:
        load_entry_points()
        info = MODELS.infos["ep_model_test"]
        assert info.origin == "entry point mine (ep-plugin-pkg)"
        assert isinstance(make_model("ep_model_test", 4), torch.nn.Linear)
    finally:
        _forget(MODELS, "ep_model_test")


def _cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tesseract_fl.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_example_plugin_end_to_end(tmp_path: Path) -> None:
    """plugins lists the four components; a run uses all four; a --jobs 2 grid puts the plugin
    defense beside two built-ins; the report tables them; editing the defense's source makes
    the same run recompute (the old result kept as stale), --reuse-stale keeps it."""
    work = tmp_path / "plugin"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    plugin = work / "src" / "tesseract_fl_example_plugin" / "__init__.py"
    (work / "short.toml").write_text(
        (work / "digits.toml").read_text().replace("rounds = 100", "rounds = 12")
    )
    (work / "short-grid.toml").write_text(
        (work / "grid.toml").read_text().replace('"digits.toml"', '"short.toml"')
    )
    env = {**os.environ, "COLUMNS": "200"}
    store = tmp_path / "s.sqlite"

    listed = _cli("plugins", "--plugin", str(plugin), cwd=work, env=env)
    assert listed.returncode == 0, listed.stderr
    for kind, name in (
        ("defense", "centered_clip"),
        ("attack", "random_direction"),
        ("model", "digits_mlp"),
        ("dataset", "digits"),
    ):
        line = next(ln for ln in listed.stdout.splitlines() if f" {name} " in ln)
        assert kind in line and "--plugin" in line

    run_args = ("run", "--config", "short.toml", "--store", str(store), "--json", "--quiet")
    first = _cli(*run_args, cwd=work, env=env)
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["cached"] is False and summary["defense"] == "centered_clip"
    assert summary["attack"] == "random_direction" and summary["dataset"] == "digits"
    again = json.loads(_cli(*run_args, cwd=work, env=env).stdout)
    assert again["cached"] is True

    grid = _cli("grid", "short-grid.toml", "--jobs", "2", "--store", str(store), cwd=work, env=env)
    assert grid.returncode == 0, grid.stderr + grid.stdout
    report = _cli(
        "report",
        "--grid",
        "short-grid.toml",
        "--store",
        str(store),
        "--out",
        str(tmp_path / "rep"),
        cwd=work,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Table 2:" not in md  # no paper grid given: no empty paper tables
    assert md.startswith("# tesseract-fl report\n") and "## Coverage" not in md
    header = next(ln for ln in md.splitlines() if ln.startswith("| attack |"))
    assert "centered_clip" in header and "TESSERACT" in header and "FedSGD" in header
    rows = [ln for ln in md.splitlines() if ln.startswith(("| None |", "| random_direction |"))]
    assert len(rows) == 2 and all("missing" not in r and r.count("(n=1)") == 3 for r in rows)
    assert (tmp_path / "rep" / "figures" / "robustness-digits-robustness.png").is_file()

    # Edit the defense's source (its fingerprint is the module's hash): the run recomputes.
    plugin.write_text(plugin.read_text() + "\n# edited: tau's meaning unchanged\n")
    recomputed = _cli(*run_args, cwd=work, env=env)
    assert recomputed.returncode == 0, recomputed.stderr
    new = json.loads(recomputed.stdout)
    assert new["cached"] is False and new["replaced_stale"] == f"{summary['run_id']}~stale1"
    assert "stale" in recomputed.stderr
    assert new["final_accuracy"] == summary["final_accuracy"]  # same code in effect
    with sqlite3.connect(store) as c:
        status = c.execute(
            "SELECT status FROM runs WHERE run_id = ?", (new["replaced_stale"],)
        ).fetchone()
    assert status == ("stale",)
    plugin.write_text(plugin.read_text() + "# edited again\n")
    kept = json.loads(_cli(*run_args, "--reuse-stale", cwd=work, env=env).stdout)
    assert kept["cached"] is True and "code changed" in kept["stale"]


def test_store_schema_1_is_migrated_and_keeps_its_runs(tmp_path: Path, tiny_data_dir: Path) -> None:
    cfg = resolve_config(
        "mnist-quick",
        overrides=[f'data_dir="{tiny_data_dir}"', "rounds=3", "clients=10", "malicious=2"],
    )
    store = tmp_path / "old.sqlite"
    first = run_experiment(cfg, store)
    with sqlite3.connect(store) as c:  # make it a schema-1 store, as committed stores are
        c.execute("PRAGMA foreign_keys=OFF")
        sql = c.execute("SELECT sql FROM sqlite_master WHERE name='runs'").fetchone()[0]
        c.execute("ALTER TABLE runs RENAME TO runs_new")
        c.execute(sql.replace(", 'stale'", ""))
        c.execute("INSERT INTO runs SELECT * FROM runs_new")
        c.execute("DROP TABLE runs_new")
        c.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
        # a run stored before fingerprints were recorded
        c.execute("UPDATE runs SET versions = json_remove(versions, '$.code')")
    with ResultsStore(store) as s:
        assert s.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            "2",
        )
        assert len(s.metrics(first.run_id)) == 3
    cached = run_experiment(cfg, store)  # its package version is its fingerprint: reused
    assert cached.cached is True and cached.final_accuracy == first.final_accuracy


def test_flower_strategy_builds_a_plugin_defense_by_name(example_plugin_free: None) -> None:
    pytest.importorskip("flwr")
    from tesseract_fl.flower import RobustStrategy

    load_plugin(str(EXAMPLE / "src" / "tesseract_fl_example_plugin" / "__init__.py"))
    strategy = RobustStrategy("centered_clip", c_max=1, defense_params={"tau": 0.5})
    inner = strategy.defense.aggregator
    rule = getattr(inner, "rule", inner)  # behind the default clip+ safeguard
    assert type(rule).__name__ == "CenteredClip" and rule.tau == 0.5
    assert strategy.defense_name == "clip+centered_clip"
    assert "random_direction" in ATTACKS


def test_readme_plugin_skeleton_runs(tmp_path: Path, tiny_data_dir: Path) -> None:
    """The "Extend tesseract-fl" page's code, as written there, registers a defense that runs
    (a name attribute is filled in from the registered name)."""
    import re

    text = (ROOT / "docs" / "extending.md").read_text()
    section = text[text.index("# Extend tesseract-fl") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    path = tmp_path / "readme_plugin.py"
    path.write_text(code.group(1))
    try:
        load_plugin(str(path))
        cfg = resolve_config(
            "mnist-quick",
            overrides=[f'data_dir="{tiny_data_dir}"', "defense=my_rule", "rounds=2"],
        )
        summary = run_experiment(cfg, tmp_path / "s.sqlite")
        assert summary.defense == "my_rule" and summary.final_accuracy is not None
        assert AGGREGATORS["my_rule"].name == "my_rule"
    finally:
        _forget(AGGREGATORS, "my_rule")


def test_checkpoint_from_before_fingerprints_still_resumes(
    tmp_path: Path, tiny_data_dir: Path
) -> None:
    """A checkpoint whose versions carry no code fingerprint (written before they were kept)
    resumes under the same package version: its fingerprint is that version."""
    import warnings

    from tesseract_fl.experiments.checkpoints import (
        checkpoint_path,
        load_checkpoint,
        save_checkpoint,
    )

    cfg = resolve_config(
        "mnist-quick",
        overrides=[f'data_dir="{tiny_data_dir}"', "rounds=6", "checkpoint_every=2"],
    )
    store = tmp_path / "s.sqlite"

    def stop(done: int, total: int, info: dict[str, Any]) -> None:
        if done == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_experiment(cfg, store, progress=stop)
    path = checkpoint_path(store, cfg.run_id())
    payload = load_checkpoint(path)
    payload["versions"].pop("code")
    save_checkpoint(path, payload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "cannot be used" warning
        resumed = run_experiment(cfg, store)
    assert resumed.resumed_from == 4
    fresh = run_experiment(cfg, tmp_path / "fresh.sqlite")
    assert resumed.final_accuracy == fresh.final_accuracy


def test_builtin_revision_makes_only_its_own_runs_stale(
    tmp_path: Path, tiny_data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A built-in whose numbers change alone raises its ``revision``: the runs that used it are
    recomputed, every other stored run stays valid (docs/design.md, "Fingerprints")."""
    from tesseract_fl.attacks import MinSum, SignFlip
    from tesseract_fl.experiments.runner import code_of

    base = [f'data_dir="{tiny_data_dir}"', "rounds=2", "clients=10", "malicious=2"]
    cfg_a = resolve_config("mnist-quick", overrides=[*base, "attack=min_sum"])
    cfg_b = resolve_config("mnist-quick", overrides=[*base, "attack=sign_flip"])
    assert code_of(cfg_a) == {"tesseract_fl": tesseract_fl.__version__}  # no revision yet
    store = tmp_path / "s.sqlite"
    first_a, first_b = run_experiment(cfg_a, store), run_experiment(cfg_b, store)

    monkeypatch.setattr(MinSum, "revision", 2, raising=False)
    assert code_of(cfg_a) == {
        "tesseract_fl": tesseract_fl.__version__,
        "attack:min_sum": "revision 2",
    }
    assert code_of(cfg_b) == {"tesseract_fl": tesseract_fl.__version__}
    again_b = run_experiment(cfg_b, store)
    assert again_b.cached is True and again_b.final_accuracy == first_b.final_accuracy
    with pytest.warns(RuntimeWarning, match=r"attack:min_sum \(absent\) -> revision 2"):
        again_a = run_experiment(cfg_a, store)
    assert again_a.cached is False and again_a.replaced_stale == f"{first_a.run_id}~stale1"
    assert again_a.final_accuracy == first_a.final_accuracy  # same code underneath here
    assert run_experiment(cfg_a, store).cached is True  # stored under revision 2 now
    assert ATTACKS.infos["min_sum"].fingerprint_label() == "package version, revision 2"
    assert ATTACKS.infos["alie"].fingerprint_label() == "package version"

    monkeypatch.setattr(SignFlip, "revision", 0, raising=False)
    with pytest.raises(ConfigError, match="revision must be an integer >= 1"):
        code_of(cfg_b)
