"""Component registries: one :class:`Registry` per kind (defense, attack, model, dataset).

The built-ins are added to these registries exactly as a plugin's components are
(docs/design.md, "Plugins"): a registry is a ``dict`` from name to the component (a class or a
factory) and keeps, per name, a :class:`ComponentInfo` saying where it came from and how its code
is fingerprinted. Nothing here imports the concept packages, so they can build their registries
at import time.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tesseract_fl.errors import ConfigError

__all__ = [
    "BUILTIN",
    "ComponentInfo",
    "Registry",
    "all_components",
    "current_origin",
    "origin",
    "registries",
    "registry",
    "source_hash",
]

#: Origin of the components that ship with tesseract-fl.
BUILTIN = "built-in"

#: Where registrations made now come from: set while a plugin module is imported.
_ORIGIN: contextvars.ContextVar[str] = contextvars.ContextVar("tesseract_fl_origin", default="code")

_REGISTRIES: dict[str, Registry] = {}


@contextlib.contextmanager
def origin(label: str) -> Iterator[None]:
    """Tag every registration made inside the block with ``label`` (``"--plugin x.py"``)."""
    token = _ORIGIN.set(label)
    try:
        yield
    finally:
        _ORIGIN.reset(token)


def current_origin() -> str:
    """The origin that a registration made now is tagged with."""
    return _ORIGIN.get()


@dataclass(frozen=True)
class ComponentInfo:
    """One registered component: its kind and name, the object, where it came from, its
    declared version (or None) and a one-line description."""

    kind: str
    name: str
    obj: Any
    origin: str
    version: str | None = None
    description: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN

    @property
    def module(self) -> str:
        return str(getattr(self.obj, "__module__", "") or "")

    def fingerprint(self) -> str:
        """What identifies this component's code in a stored result: its declared version, else
        a hash of the source of the module that defines it (docs/design.md, "Fingerprints")."""
        if self.version is not None:
            return f"version {self.version}"
        return f"source {source_hash(self.obj)}"

    @property
    def revision(self) -> int | None:
        """A built-in's own numbers revision (its class attribute ``revision``, an integer >= 1),
        raised when a change alters the numbers of this component alone; None when it has none.
        Only built-ins have one: a plugin is fingerprinted by :meth:`fingerprint`."""
        if not self.builtin:
            return None
        rev = getattr(self.obj, "revision", None)
        if rev is None:
            return None
        if isinstance(rev, bool) or not isinstance(rev, int) or rev < 1:
            raise ConfigError(
                f"built-in {self.kind} {self.name!r}: revision must be an integer >= 1, got {rev!r}"
            )
        return rev

    def fingerprint_label(self) -> str:
        """How ``tesseract-fl plugins`` shows this component's fingerprint."""
        if not self.builtin:
            return self.fingerprint()
        rev = self.revision
        return "package version" if rev is None else f"package version, revision {rev}"


def source_hash(obj: Any) -> str:
    """SHA-256 (16 hex digits) of the source file of the module defining ``obj``; an object
    whose source cannot be read hashes its qualified name (and says so)."""
    path: str | None = None
    with contextlib.suppress(TypeError, OSError):
        path = inspect.getsourcefile(obj)
    if path is None:
        module = sys.modules.get(str(getattr(obj, "__module__", "")))
        path = getattr(module, "__file__", None)
    if path is not None and Path(path).is_file():
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    name = f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    return "unreadable:" + hashlib.sha256(name.encode()).hexdigest()[:16]


def constructor_defaults(obj: Any) -> dict[str, Any]:
    """Keyword parameters of a class's constructor (or a factory) with their defaults
    (``inspect.Parameter.empty`` shown as ``"required"``)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return {}
    out: dict[str, Any] = {}
    for p in sig.parameters.values():
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        out[p.name] = "required" if p.default is inspect.Parameter.empty else p.default
    return out


class Registry(dict[str, Any]):
    """Name -> component for one kind; :meth:`add` is the only way in (clashes are errors)."""

    def __init__(self, kind: str, noun: str) -> None:
        super().__init__()
        self.kind = kind
        self.noun = noun
        self.infos: dict[str, ComponentInfo] = {}
        _REGISTRIES[kind] = self

    def add(
        self,
        name: str,
        obj: Any,
        *,
        replace: bool = False,
        version: str | None = None,
        description: str = "",
        source: str | None = None,
        hidden_params: tuple[str, ...] = (),
    ) -> None:
        """Register ``obj`` as ``name`` (normalized to lower case).

        A name already taken by another object is a :class:`ConfigError` naming both, unless
        ``replace``; registering the same object twice (a module imported again) is a no-op.
        """
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{self.noun} name must be a non-empty string, got {name!r}")
        key = name.strip().lower()
        if not all(ch.isalnum() or ch in "_-." for ch in key) or key == "none":
            raise ConfigError(
                f"{self.noun} name {name!r} is not allowed: use letters, digits, '_', '-' or '.'"
                + (" ('none' means no attack)" if key == "none" else "")
            )
        if version is not None and (not isinstance(version, str) or not version.strip()):
            raise ConfigError(f"{self.noun} {key!r}: version must be a non-empty string")
        where = source if source is not None else current_origin()
        old = self.infos.get(key)
        if old is not None and not replace:
            same = old.obj is obj or (
                getattr(old.obj, "__qualname__", None) == getattr(obj, "__qualname__", 1)
                and old.module == str(getattr(obj, "__module__", ""))
                and "<lambda>" not in str(getattr(obj, "__qualname__", ""))
            )
            if not same:  # (the same class again, e.g. its module re-imported: updated)
                raise ConfigError(
                    f"{self.noun} {key!r} is already registered ({_describe(old.obj)}, from "
                    f"{old.origin}); pick another name, or pass replace=True to override it"
                )
        params = {k: v for k, v in constructor_defaults(obj).items() if k not in hidden_params}
        self[key] = obj
        self.infos[key] = ComponentInfo(
            kind=self.kind,
            name=key,
            obj=obj,
            origin=where,
            version=version,
            description=description or _first_line(obj),
            params=params,
        )

    def lookup(self, name: str, *, extra: tuple[str, ...] = ()) -> Any:
        """The component registered as ``name``; unknown names raise :class:`ConfigError` with
        the allowed names and the closest one."""
        key = str(name).strip().lower()
        if key in self:
            return self[key]
        allowed = [*extra, *sorted(self)]
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown {self.noun} {name!r}{hint}; allowed: {', '.join(allowed)}")


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _first_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def registries() -> dict[str, Registry]:
    """Every registry by kind (defense, attack, model, dataset) once their packages are
    imported."""
    import tesseract_fl.aggregators
    import tesseract_fl.attacks
    import tesseract_fl.data
    import tesseract_fl.models
    import tesseract_fl.preaggregators  # noqa: F401

    return dict(_REGISTRIES)


def registry(kind: str) -> Registry:
    """The registry of one kind (without importing the other packages when it exists: the
    built-ins register themselves while their package is being imported)."""
    reg = _REGISTRIES.get(kind)
    return reg if reg is not None else registries()[kind]


def all_components() -> list[ComponentInfo]:
    """Every registered component, sorted by kind and name."""
    return [reg.infos[n] for _, reg in sorted(registries().items()) for n in sorted(reg.infos)]
