"""Everything ``fedkd-mpi validate`` checks beyond the schema, and rank 0 checks before any
rank starts: each named implementation (built-in or plug-in) resolves, is the right type and
does what its interface promises on a real example.

* dataset (``data.name``): loads, labels integer and in range, at least two classes, its input
  kind accepted by the model family; the partition gives every client training examples;
* model family (``model.kind``): its own check (pretrained folders: config.json against the
  weights), both models build and return logits of the right width and what the algorithm's
  enabled losses need (``fedkd.hidden_loss``: hidden states);
* codec (the algorithm's codec field): encodes a probe update into a payload whose body has
  the declared dtype and exactly ``body_nbytes(meta)`` bytes, and decodes it to the shapes;
* aggregator (``train.aggregation``): combines two probe updates into the right shapes.

Every failure is a :class:`~fedkd_mpi.config.ConfigError`: one line naming the config field.
"""

from __future__ import annotations

import numpy as np
import torch

from fedkd_mpi.config import Config, ConfigError


def preflight(cfg: Config) -> None:
    """Run every check (ConfigError on the first failure)."""
    from fedkd_mpi.aggregators import aggregator_of
    from fedkd_mpi.algorithms import build_algorithm
    from fedkd_mpi.codecs.base import codec_class
    from fedkd_mpi.data import DataError, check_data, dataset_of, partitioner_of
    from fedkd_mpi.data.federated import _features
    from fedkd_mpi.models import ModelOutputError, family_of, probe
    from fedkd_mpi.runtime.budget import check_budget
    from fedkd_mpi.runtime.observers import check_tensorboard, load_callbacks

    # every name first, in the order of the config's sections
    used: list[type] = [type(dataset_of(cfg.data)), type(partitioner_of(cfg.data))]
    family = family_of(cfg)
    alg = build_algorithm(cfg)
    if alg.codec_field is not None:
        used.append(codec_class(alg.codec_name, alg.codec_field))
    aggregator = aggregator_of(cfg)
    _check_plugin_sections(cfg, [*used, type(family), type(alg), type(aggregator)])
    load_callbacks(cfg)
    check_tensorboard(cfg)
    family.check()
    try:
        corpus = check_data(cfg.data, cfg.seed)
    except DataError as exc:
        raise ConfigError(str(exc)) from None
    if corpus.input_kind not in family.input_kinds:
        raise ConfigError(f"config error: 'model.kind': family '{family.name}' takes "
                          f"{' or '.join(family.input_kinds)} inputs; data.name "
                          f"'{cfg.data.name}' gives {corpus.input_kind}")
    classes = len(corpus.class_names)
    if cfg.data.metric == "f1" and classes != 2:
        raise ConfigError(f"config error: 'data.metric': f1 (of the positive class) needs a "
                          f"binary task; data.name '{cfg.data.name}' has {classes} classes "
                          "(use accuracy or macro_f1)")
    x = _features(corpus, np.arange(min(2, len(corpus.labels))), cfg.data)
    check_budget(cfg, family, alg, classes, x)  # estimated from the config: before any build
    shapes = {}
    models = {}
    for role in dict.fromkeys(r for r in (alg.private_role, alg.shared_role, "mentor",
                                          "mentee") if r):
        freeze = (cfg.model.freeze_embeddings if role == alg.shared_role
                  else cfg.model.freeze_private_embeddings)
        try:
            models[role] = family.build(role, classes, 0, freeze)
            shapes[role] = probe(models[role], x)
        except ModelOutputError as exc:
            raise ConfigError(f"config error: 'model.kind': the {role} of '{cfg.model.kind}' "
                              f"{exc}") from None
        except ConfigError:
            raise
        except Exception as exc:  # a plug-in family failing to build: one line
            raise ConfigError(f"config error: 'model.kind': building the {role} of "
                              f"'{cfg.model.kind}' failed: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
        if shapes[role].num_classes != classes:
            raise ConfigError(f"config error: 'model.kind': the {role} returns "
                              f"{shapes[role].num_classes} logits per example for "
                              f"{classes} classes")
    alg.check_models(shapes)
    if alg.shared_role is None:
        return
    shared = models[alg.shared_role]
    from fedkd_mpi.tensors import TensorSpec

    specs = [TensorSpec(n, tuple(p.shape)) for n, p in shared.named_parameters()
             if p.requires_grad]
    alg.bind(specs, {})
    _check_codec(alg, cfg)
    _check_aggregator(aggregator, alg.wire_specs)


def _check_plugin_sections(cfg: Config, used: list[type]) -> None:
    """Every ``plugins.<name>`` section names an implementation this run uses or one that is
    registered on some axis (a sweep may vary the choice): a misspelled section is never
    silently ignored."""
    from fedkd_mpi.codecs.base import Codec  # a codec-less run (local) still knows codecs

    known = {str(getattr(c, "name", "")) for c in used}
    for registry in {id(c.registry): c.registry for c in [*used, Codec]
                     if hasattr(c, "registry")}.values():
        known.update(registry.names())
    for key in cfg.plugins:
        for c in used:  # this run's implementation of that name reads no plugins.<name>
            if getattr(c, "name", None) == key and getattr(c, "Settings", None) is None:
                where = getattr(c, "section", None)
                raise ConfigError(f"config error: 'plugins.{key}': '{key}' takes no plugins "
                                  "settings" + (f" (its settings are the '{where}:' section)"
                                                if where else "") + "; remove the section")
        if key not in known:
            raise ConfigError(f"config error: 'plugins.{key}': no registered implementation is "
                              f"named '{key}' (registered: {', '.join(sorted(known - {''}))})"
                              "; fix the name or remove the section")


def _probe_update(specs, scale: float, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(s.shape, generator=gen) for s in specs]


def _check_codec(alg, cfg: Config) -> None:
    codec, field = alg.codec, alg.codec_field
    name = alg.codec_name
    specs = alg.wire_specs
    try:
        payload = codec.encode(_probe_update(specs, 1e-3, 0), 0, codec.new_state(0))
        body = np.asarray(payload.body)
        meta = np.asarray(payload.meta)
        if meta.shape != (len(specs),):
            raise ValueError(f"meta has shape {meta.shape}, expected ({len(specs)},)")
        if body.dtype != np.dtype(codec.wire_dtype):
            raise ValueError(f"payload body is {body.dtype}, wire_dtype says "
                             f"{np.dtype(codec.wire_dtype)}")
        declared = int(codec.body_nbytes(meta))
        if declared != body.nbytes:
            raise ValueError(f"body_nbytes(meta) declares {declared} bytes, the payload holds "
                             f"{body.nbytes}")
        _check_tensors("decode", codec.decode(payload), specs)
    except Exception as exc:
        raise ConfigError(f"config error: '{field}': codec '{name}' failed its probe: "
                          f"{type(exc).__name__}: {exc}") from None


def _check_tensors(what: str, out: object, specs) -> None:
    """ValueError naming the first tensor that is not a float32 torch tensor of its spec's
    shape (and the cause: a numpy array, a missing or extra tensor)."""
    out = list(out)  # type: ignore[call-overload]
    if len(out) != len(specs):
        raise ValueError(f"{what} returned {len(out)} tensors, expected {len(specs)}")
    for t, s in zip(out, specs, strict=True):
        if isinstance(t, np.ndarray):
            raise ValueError(f"{what} returned a numpy array for tensor {s.name}, expected a "
                             "torch tensor (torch.from_numpy)")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{what} returned {type(t).__name__} for tensor {s.name}, expected "
                             "a torch tensor")
        if tuple(t.shape) != tuple(s.shape):
            raise ValueError(f"{what} returned shape {tuple(t.shape)} for tensor {s.name}, "
                             f"expected {tuple(s.shape)}")
        if t.dtype != torch.float32:
            raise ValueError(f"{what} returned {t.dtype} for tensor {s.name}, expected "
                             "torch.float32")


def _check_aggregator(aggregator, specs) -> None:
    ups = [_probe_update(specs, 1.0, s) for s in (1, 2, 3)]  # 3: what a median needs
    try:
        _check_tensors("aggregate", aggregator.aggregate(ups, np.array([10, 20, 30])), specs)
    except Exception as exc:
        raise ConfigError(f"config error: 'train.aggregation': aggregator "
                          f"'{aggregator.name}' failed its probe: {type(exc).__name__}: "
                          f"{exc}") from None
