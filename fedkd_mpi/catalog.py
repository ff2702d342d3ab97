"""``fedkd-mpi plugins``: every name registered on every axis, where it comes from and where
its settings live (a built-in config section, or ``plugins.<name>`` with its fields)."""

from __future__ import annotations

from typing import Any

#: (axis, config field, base class path)
AXES = (
    ("datasets", "data.name", "fedkd_mpi.data.base:Dataset"),
    ("partitioners", "data.partition", "fedkd_mpi.data.base:Partitioner"),
    ("models", "model.kind", "fedkd_mpi.models.base:ModelFamily"),
    ("algorithms", "algorithm", "fedkd_mpi.algorithms.base:Algorithm"),
    ("codecs", "fedkd.codec / fedavg.codec", "fedkd_mpi.codecs.base:Codec"),
    ("aggregators", "train.aggregation", "fedkd_mpi.aggregators.base:Aggregator"),
)


def _base(path: str) -> type:
    import importlib

    mod, attr = path.split(":")
    return getattr(importlib.import_module(mod), attr)


def _settings(cls: type) -> str:
    from fedkd_mpi.config import Config

    section = getattr(cls, "section", None) or (cls.name if cls.name in Config.model_fields
                                                 else None)
    if isinstance(section, str) and section:
        return f"section '{section}:'"
    model: Any = getattr(cls, "Settings", None)
    if model is None:
        return "- (or keys of data: / train:, e.g. data.dirichlet_alpha, train.trim_fraction)"
    fields = ", ".join(f"{n}={f.default!r}" for n, f in model.model_fields.items())
    return f"plugins.{cls.name}: {fields or '(none)'}"


def rows() -> list[list[str]]:
    """[axis, name, origin, settings] for every registered implementation."""
    out = []
    for axis, field, path in AXES:
        base = _base(path)
        registry = base.registry
        eps = set(registry.entry_point_names())
        for name in registry.names():
            try:
                cls = registry.get(name, field, base)
            except Exception as exc:  # a broken plug-in is listed with its one line
                out.append([axis, name, "entry point (broken)", str(exc).splitlines()[0]])
                continue
            origin = ("built-in" if cls.__module__.startswith("fedkd_mpi.") and name not in eps
                      else f"entry point {cls.__module__}:{cls.__qualname__}")
            out.append([axis, name, origin, _settings(cls)])
    return out


def main() -> int:
    from tabulate import tabulate

    print(tabulate(rows(), headers=["axis", "name", "origin", "settings"], tablefmt="simple",
                   disable_numparse=True))
    print("(any axis also takes module:attribute; settings of plugins.<name> are checked "
          "against the implementation's Settings model)")
    return 0
