"""One registry per axis (datasets, partitioners, model families, codecs, algorithms,
aggregators): built-ins, import paths and entry points, resolved the same way.

A config names an implementation in one of three ways, tried in this order:

* ``module:attribute``: imported from the environment (``mypkg.codecs:SignCodec``);
* a registered name: every built-in module of the axis package registers its classes when
  imported (a class that sets ``name`` and subclasses the axis base), so a new built-in is one
  module; plug-ins imported any other way register the same way;
* an entry point of the group ``fedkd_mpi.<axis>`` (``[project.entry-points."fedkd_mpi.codecs"]
  sign = "mypkg.codecs:SignCodec"``).

Every failure is a :class:`PluginError`: one line naming the config field, what went wrong
and what would be valid.
"""

from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Any, ClassVar

from fedkd_mpi.config import ConfigError


class PluginError(ConfigError):
    """A named implementation cannot be found, imported or used (one line for the user)."""


class Registry:
    """Implementations of one axis by name."""

    def __init__(self, axis: str, package: str) -> None:
        self.axis = axis  # e.g. "codecs"
        self.package = package  # e.g. "fedkd_mpi.codecs": scanned for built-ins
        self.group = f"fedkd_mpi.{axis}"
        self.classes: dict[str, type] = {}
        self._scanned = False
        self._eps: list | None = None

    def add(self, cls: type) -> None:
        """Register ``cls`` under ``cls.name`` (the first registration of a name wins)."""
        self.classes.setdefault(cls.name, cls)

    def _scan(self) -> None:
        if self._scanned:
            return
        self._scanned = True
        pkg = importlib.import_module(self.package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            if not mod.name.startswith("_"):
                importlib.import_module(f"{self.package}.{mod.name}")

    def builtin_names(self) -> list[str]:
        self._scan()
        return sorted(n for n, c in self.classes.items() if c.__module__.startswith("fedkd_mpi."))

    def _entry_points(self) -> list:
        if self._eps is None:  # installed distributions do not change during a run
            self._eps = list(entry_points(group=self.group))
        return self._eps

    def entry_point_names(self) -> list[str]:
        return sorted({ep.name for ep in self._entry_points()})

    def names(self) -> list[str]:
        return sorted({*self.builtin_names(), *self.entry_point_names()})

    def get(self, spec: str, field: str, base: type) -> type[Any]:
        """The class named by ``spec`` for config field ``field``; PluginError if unusable."""
        if not isinstance(spec, str) or not spec:
            raise PluginError(f"config error: '{field}': expected a name or module:attribute, "
                              f"got {spec!r}")
        if ":" in spec:
            obj = _import_path(spec, field)
        else:
            self._scan()
            obj = self.classes.get(spec)
            if obj is None:
                obj = self._entry_point(spec, field)
            elif obj.__module__.startswith("fedkd_mpi.") and spec in self.entry_point_names():
                raise PluginError(f"config error: '{field}': '{spec}' is both a built-in "
                                  f"{self.axis[:-1].replace('_', ' ')} and an entry point of "
                                  f"{self.group}; rename the entry point")
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"config error: '{field}': {spec} is {_what(obj)}, not a "
                              f"subclass of {base.__module__}.{base.__name__}")
        if not isinstance(getattr(obj, "name", None), str):
            raise PluginError(f"config error: '{field}': {spec} has no string class attribute "
                              "'name'")
        return obj

    def _entry_point(self, name: str, field: str) -> object:
        for ep in self._entry_points():
            if ep.name == name:
                try:
                    return ep.load()
                except Exception as exc:  # any import failure of a plug-in: one line
                    raise PluginError(f"config error: '{field}': entry point '{name}' "
                                      f"({ep.value}) failed to load: {type(exc).__name__}: "
                                      f"{exc}") from None
        raise PluginError(f"config error: '{field}': unknown {self.axis[:-1].replace('_', ' ')} "
                          f"'{name}' (valid: {', '.join(self.names())}, or module:attribute)")


class Registered:
    """Mixin of every axis base class: a subclass that sets ``name`` registers itself."""

    registry: ClassVar[Registry]
    name: ClassVar[str]

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "name" in cls.__dict__ and "registry" not in cls.__dict__:
            cls.registry.add(cls)


def _import_path(spec: str, field: str) -> object:
    mod_name, _, attr = spec.partition(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as exc:  # ImportError, or anything the plug-in raises on import
        raise PluginError(f"config error: '{field}': cannot import '{mod_name}' "
                          f"({type(exc).__name__}: {exc})") from None
    obj: object = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise PluginError(f"config error: '{field}': module '{mod_name}' has no attribute "
                              f"'{attr}'")
        obj = getattr(obj, part)
    return obj


def _what(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"a {type(obj).__name__}"


def plugin_settings(cls: type, cfg: Any) -> Any:
    """A plug-in's settings: ``cfg.plugins[cls.name]`` validated by ``cls.Settings`` (a
    pydantic model); None when the class declares no ``Settings``."""
    model = getattr(cls, "Settings", None)
    if model is None:
        return None
    from pydantic import ValidationError

    given = cfg.plugins.get(cls.name, {})
    known = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
    unknown = sorted(str(k) for k in (given if isinstance(given, dict) else {}) if k not in known)
    if unknown:  # also where the plug-in's model would ignore it: a typo is never silent
        raise PluginError(f"config error: 'plugins.{cls.name}.{unknown[0]}': not a setting of "
                          f"'{cls.name}' (its settings: {', '.join(sorted(known)) or 'none'})")
    try:
        return model.model_validate(given)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(p) for p in ("plugins", cls.name, *e["loc"]))
        raise PluginError(f"config error: '{loc}': {e['msg']}") from None
