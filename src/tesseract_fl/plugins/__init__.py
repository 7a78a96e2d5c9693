"""Bring your own defense, attack, model and dataset (docs/design.md, "Plugins").

Registration (each usable as a decorator or called directly)::

    @tesseract_fl.register_defense("my_rule", version="1")
    class MyRule: ...

    tesseract_fl.register_model("tiny_mlp", lambda num_classes: TinyMLP(num_classes))

The built-ins are registered the same way, so a plugin component gets everything a built-in
gets: constructor-checked parameters, config keys, presets, grid axes, the store, the report and
the Flower strategy. Discovery, so that every process (grid workers included) sees the same
components: the entry-point group ``tesseract_fl.plugins``, ``--plugin MODULE_OR_FILE.py`` on the
command line, and ``plugins = [...]`` in config and grid files.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from tesseract_fl.errors import ConfigError
from tesseract_fl.plugins.registry import (
    BUILTIN,
    ComponentInfo,
    Registry,
    all_components,
    origin,
    registries,
    registry,
    source_hash,
)

__all__ = [
    "BUILTIN",
    "PLUGIN_GROUP",
    "ComponentInfo",
    "PluginError",
    "Registry",
    "all_components",
    "code_fingerprint",
    "load_entry_points",
    "load_plugin",
    "load_plugins",
    "loaded_plugins",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_model",
    "source_hash",
]

#: The entry-point group a plugin package lists its module under (in its pyproject.toml).
PLUGIN_GROUP = "tesseract_fl.plugins"

T = TypeVar("T")


class PluginError(ConfigError):
    """A plugin cannot be found or imported, or registers something invalid."""


# -- registration ------------------------------------------------------------------------------
def _registrar(
    kind: str,
    name: str | None,
    obj: T | None,
    check: Callable[[str, Any], None],
    **kwargs: Any,
) -> Any:
    """Register ``obj`` now, or return a decorator that registers what it decorates."""

    def add(target: T) -> T:
        key = name if name is not None else getattr(target, "name", None)
        if not isinstance(key, str) or not key:
            raise PluginError(
                f"{kind} {target!r} needs a name: register_{kind}('my_name', ...) or a class "
                "attribute `name`"
            )
        check(key, target)
        registry(kind).add(key, target, **kwargs)
        if kind in ("defense", "attack") and not getattr(target, "name", None):
            target.name = key.strip().lower()  # type: ignore[attr-defined]  # what records show
        if kind == "defense" and not hasattr(target, "needs_root_gradient"):
            target.needs_root_gradient = False  # type: ignore[attr-defined]  # no FLTrust root set
        return target

    return add if obj is None else add(obj)


def _check_defense(name: str, obj: Any) -> None:
    if not isinstance(obj, type) or not callable(getattr(obj, "aggregate", None)):
        raise PluginError(
            f"defense {name!r} must be a class with an `aggregate(G, ctx) -> Aggregate` method "
            f"(see tesseract_fl.aggregators.Aggregator), got {obj!r}"
        )


def _check_attack(name: str, obj: Any) -> None:
    model = callable(getattr(obj, "poison", None))
    data = callable(getattr(obj, "poison_labels", None))
    backdoor = callable(getattr(obj, "poison_batch", None))
    if not isinstance(obj, type) or not (model or data or backdoor):
        raise PluginError(
            f"attack {name!r} must be a class with `poison(G_honest, ctx) -> Poison` (a model "
            "attack), `poison_labels(y, num_classes)` (a data attack) or `poison_batch(x, y, "
            "high)` with `stamp_global` and `target` (a backdoor), see tesseract_fl.attacks; "
            f"got {obj!r}"
        )


def _check_callable(kind: str, what: str) -> Callable[[str, Any], None]:
    def check(name: str, obj: Any) -> None:
        if not callable(obj):
            raise PluginError(f"{kind} {name!r} must be {what}, got {obj!r}")

    return check


def register_defense(
    name: str | None = None,
    cls: Any = None,
    *,
    replace: bool = False,
    version: str | None = None,
    description: str = "",
) -> Any:
    """Register an aggregation rule class as defense ``name`` (default: its ``name`` attribute).

    The class implements ``aggregate(G, ctx) -> Aggregate`` (and ``state_dict`` /
    ``load_state_dict`` when it keeps state across rounds); its constructor's keyword
    parameters are the config's ``[defense]`` keys, and ``num_clients`` / ``c_max`` are passed
    when the constructor takes them. ``version`` is what fingerprints its results (without it
    the hash of its module's source does).
    """
    return _registrar(
        "defense",
        name,
        cls,
        _check_defense,
        replace=replace,
        version=version,
        description=description,
        hidden_params=("num_clients", "c_max"),
    )


def register_attack(
    name: str | None = None,
    cls: Any = None,
    *,
    replace: bool = False,
    version: str | None = None,
    description: str = "",
) -> Any:
    """Register a poisoning attack class as attack ``name``: a model attack
    (``poison(G_honest, ctx) -> Poison``) or a data attack (``poison_labels``); its
    constructor's keyword parameters are the config's ``[attack]`` keys."""
    return _registrar(
        "attack",
        name,
        cls,
        _check_attack,
        replace=replace,
        version=version,
        description=description,
    )


def register_model(
    name: str,
    factory: Any = None,
    *,
    replace: bool = False,
    version: str | None = None,
    description: str = "",
) -> Any:
    """Register a model factory: ``factory(num_classes) -> nn.Module`` (an ``nn.Module``
    subclass whose constructor takes ``num_classes`` is one)."""
    return _registrar(
        "model",
        name,
        factory,
        _check_callable("model", "a factory num_classes -> nn.Module"),
        replace=replace,
        version=version,
        description=description,
    )


def register_dataset(
    name: str,
    loader: Any = None,
    *,
    replace: bool = False,
    version: str | None = None,
    description: str = "",
) -> Any:
    """Register a dataset loader: ``loader(data_dir: Path) -> tesseract_fl.data.Dataset``
    (train/test tensors, number of classes, optional ``train_groups`` such as writers);
    ``data_dir`` is the data root (``--data-dir``, ``$TESSERACT_FL_DATA`` or the default),
    which a loader that needs no files ignores. What it returns is checked before use."""
    return _registrar(
        "dataset",
        name,
        loader,
        _check_callable("dataset", "a loader data_dir -> Dataset"),
        replace=replace,
        version=version,
        description=description,
    )


# -- discovery ---------------------------------------------------------------------------------
#: Plugins loaded in this process, in order: spec -> (origin label, components it registered).
_LOADED: dict[str, tuple[str, list[ComponentInfo]]] = {}
_ENTRY_POINTS_DONE = False


def _snapshot() -> set[tuple[str, str, int]]:
    return {(c.kind, c.name, id(c.obj)) for c in all_components()}


def _registered_since(before: set[tuple[str, str, int]]) -> list[ComponentInfo]:
    return [c for c in all_components() if (c.kind, c.name, id(c.obj)) not in before]


def _import_file(path: Path) -> None:
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
    mod_name = f"tesseract_fl_plugin_{path.stem.replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # classes defined there pickle by this name (grid workers)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or "\\" in spec


def normalize_spec(spec: str, base: str | Path | None = None) -> str:
    """A plugin spec as every process can load it: a file path made absolute (relative to
    ``base``, the folder of the file that names it, else the working directory), a module
    name as given."""
    spec = str(spec).strip()
    if not spec:
        raise PluginError("a plugin spec must be a module name or a path to a .py file")
    if not _is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    if not path.is_absolute():
        path = (Path(base) if base is not None else Path.cwd()) / path
    return str(path.resolve())


def load_plugin(spec: str, *, base: str | Path | None = None, label: str = "--plugin") -> str:
    """Import a plugin (a module name or a ``.py`` file) once; what it registers is tagged with
    where it came from. Returns the normalized spec. Import failures are :class:`PluginError`
    with the plugin's own traceback summarized."""
    key = normalize_spec(spec, base)
    if key in _LOADED:
        return key
    where = f"{label} {key}"
    before = _snapshot()
    try:
        with origin(where):
            if _is_file_spec(key):
                path = Path(key)
                if not path.is_file():
                    raise PluginError(f"plugin file {key!r} does not exist")
                _import_file(path)
            else:
                importlib.import_module(key)
    except ConfigError as exc:
        if isinstance(exc, PluginError):
            raise
        raise PluginError(f"plugin {key!r}: {exc}") from exc
    except ModuleNotFoundError as exc:
        if exc.name == key or key.startswith(f"{exc.name}."):
            raise PluginError(
                f"plugin module {key!r} cannot be imported: no module named {exc.name!r} (install "
                "its package, or give the path to a .py file)"
            ) from exc
        raise PluginError(_import_failure(key, exc)) from exc
    except Exception as exc:
        raise PluginError(_import_failure(key, exc)) from exc
    _LOADED[key] = (where, _registered_since(before))
    return key


def _import_failure(key: str, exc: BaseException) -> str:
    tb = traceback.extract_tb(exc.__traceback__)
    here = next((f for f in reversed(tb) if "tesseract_fl/plugins" not in f.filename), None)
    at = f" (at {here.filename}:{here.lineno})" if here is not None else ""
    return f"plugin {key!r} failed to import: {type(exc).__name__}: {exc}{at}"


def load_plugins(
    specs: Iterable[str], *, base: str | Path | None = None, label: str = "--plugin"
) -> list[str]:
    """:func:`load_plugin` for each spec (entry points first); the normalized specs."""
    load_entry_points()
    return [load_plugin(s, base=base, label=label) for s in specs]


def load_entry_points() -> None:
    """Import every module listed under the ``tesseract_fl.plugins`` entry-point group, once
    per process (a broken one is a :class:`PluginError` naming its package)."""
    global _ENTRY_POINTS_DONE
    if _ENTRY_POINTS_DONE:
        return
    _ENTRY_POINTS_DONE = True
    for ep in sorted(entry_points(group=PLUGIN_GROUP), key=lambda e: e.name):
        dist = getattr(getattr(ep, "dist", None), "name", None)
        label = f"entry point {ep.name}" + (f" ({dist})" if dist else "")
        key = f"entry-point:{ep.name}={ep.value}"
        if key in _LOADED:
            continue
        before = _snapshot()
        try:
            with origin(label):
                ep.load()
        except Exception as exc:
            _ENTRY_POINTS_DONE = False  # a fixed package can be tried again
            raise PluginError(
                f"{label}: {ep.value!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        _LOADED[key] = (label, _registered_since(before))


def loaded_plugins() -> list[str]:
    """The specs of the plugins loaded in this process (entry points excluded: every process
    loads those itself), in load order: what a worker process loads to see the same
    components."""
    return [k for k in _LOADED if not k.startswith("entry-point:")]


# -- fingerprints ------------------------------------------------------------------------------
def code_fingerprint(components: Iterable[tuple[str, str]]) -> dict[str, str]:
    """What identifies the code behind a result: the package version (it covers every
    built-in), per built-in component ``(kind, name)`` used that has a numbers revision
    ``"revision <n>"``, and per plugin component used its declared version or the hash of its
    module's source (docs/design.md, "Fingerprints")."""
    from tesseract_fl import __version__

    regs = registries()
    out = {"tesseract_fl": __version__}
    for kind, name in components:
        info = regs[kind].infos.get(name)
        if info is None:
            continue
        if not info.builtin:
            out[f"{kind}:{name}"] = info.fingerprint()
        elif (rev := info.revision) is not None:
            out[f"{kind}:{name}"] = f"revision {rev}"
    return out
