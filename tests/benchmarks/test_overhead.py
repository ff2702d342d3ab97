"""benchmarks/overhead.py compares like with like: its bare PyTorch loop ends a local round with
the same bits as the package's ``local_train``, and its bare evaluation predicts what the
package's evaluation predicts (the benchmark's ratios rest on that)."""

from __future__ import annotations

import importlib.util

import torch

from ..conftest import ROOT, TINY


def _bench():
    spec = importlib.util.spec_from_file_location("overhead", ROOT / "benchmarks" / "overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bare_loop_is_the_packages_computation():
    ob = _bench()
    cfg, fed, alg, shared, fresh = ob.build(str(TINY), ["train.local_steps=3"])
    after = []
    for train in (ob.package_train, ob.bare_train):
        client = fresh()
        before = ob.weights(client, shared)
        train(cfg, alg, client, shared)
        after.append(ob.weights(client, shared))
        assert not ob.same_bits(before, after[-1])  # it trained
    assert ob.same_bits(*after)
    client = fresh()
    metrics = ob.package_eval(cfg, fed, alg, client, shared)
    preds = ob.bare_eval(cfg, client, shared)
    y = client.data.test_y
    for cols, pred in zip(metrics, preds, strict=True):
        role = next(k for k in cols if k.endswith("_accuracy"))
        assert cols[role] == float((pred == y).to(torch.float64).mean())
