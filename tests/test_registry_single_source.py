"""The structure registry is the one description of a model used by measure, check, Telemetry and the
NaN guard, and `token_moments` is the one moment statistic.

A nanoGPT-style model, described once with ``deepscalelm.register``, must work in all consumers; the
old implementations of the three moment statistics are kept here as references (old vs new on
random tensors).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepscalelm
from deepscalelm import DSLMError, ModelConfig, structure
from deepscalelm.diagnostics import Telemetry, check, stream_moments
from deepscalelm.measure import moments
from deepscalelm.measure.stats import token_moments
from deepscalelm.train.guard import locate_nonfinite, residual_layers
from deepscalelm.validate import protocol

torch.set_num_threads(1)


# ------------------------------------------------------------------------ old statistics (references)
def old_measure_moments(x):
    x = x.detach().to(torch.float64)
    mean = x.mean()
    var = float((x * x).mean() - mean * mean)
    B, L, d = x.shape
    if L < 2 or var <= 0.0:
        return float(mean), var, math.nan
    cov = torch.cov(x.transpose(0, 1).reshape(L, B * d))
    return float(mean), var, float((cov.sum() - cov.diagonal().sum()) / (L * (L - 1))) / var


def old_stream_moments(x):
    x = x.detach()
    finite = bool(torch.isfinite(x).all())
    x = x.to(torch.float64)
    B, L, d = x.shape
    mean = x.mean()
    var = float((x * x).mean() - mean * mean)
    if L < 2 or not finite or not var > 0.0 or B * d < 2:
        return float(mean), var, math.nan, finite
    n = B * d
    xc = x.transpose(0, 1).reshape(L, n)
    xc = xc - xc.mean(dim=1, keepdim=True)
    total = float((xc.sum(dim=0) ** 2).sum()) / (n - 1)
    diag = float((xc * xc).sum()) / (n - 1)
    return float(mean), var, (total - diag) / (L * (L - 1)) / var, finite


def _old_offdiag(m):
    n, samples = m.shape
    c = m - m.mean(dim=1, keepdim=True)
    return ((float((c.sum(dim=0) ** 2).sum()) / (samples - 1)) - float((c * c).sum()) / (samples - 1)) / (n * (n - 1))


def old_protocol_measure(y, hidden=False):
    y = y.detach()
    runs, length, d = y.shape
    mean = float(y.mean())
    out = {"mean": mean, "var": float((y * y).mean()) - mean * mean}
    if length > 1:
        out["cov"] = _old_offdiag(y.permute(1, 0, 2).reshape(length, runs * d))
    if hidden and d > 1:
        out["hidden_cov"] = _old_offdiag(y.permute(2, 0, 1).reshape(d, runs * length))
    return out


def _tensors():
    g = torch.Generator().manual_seed(3)
    for B, L, d, r, mu in [(4, 8, 16, 0.0, 0.0), (2, 5, 3, 0.6, 1.5), (8, 16, 32, 0.3, -0.2), (1, 2, 2, 0.9, 0.0)]:
        yield (mu + math.sqrt(r) * torch.randn(B, 1, d, generator=g)
               + math.sqrt(1 - r) * torch.randn(B, L, d, generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_one_statistic_matches_the_three_old_ones(dtype):
    for x in _tensors():
        x = x.to(dtype)
        assert stream_moments(x) == old_stream_moments(x)  # same formula: bit-identical
        assert protocol.measure(x, hidden=True) == old_protocol_measure(x, hidden=True)  # same, in x's dtype
        # measure.moments used torch.cov's L x L matrix; the sum-of-columns form agrees to rounding
        assert moments(x) == pytest.approx(old_measure_moments(x), rel=1e-12, abs=1e-15)
        m = token_moments(x)
        assert m.corr * m.var == pytest.approx(m.cov, rel=1e-12)
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    x[0, 1, 2] = math.inf
    assert stream_moments(x)[3] is False and math.isnan(stream_moments(x)[2]) and math.isnan(moments(x)[2])
    assert math.isnan(token_moments(torch.randn(2, 1, 3)).cov)
    with pytest.raises(ValueError, match=r"\[batch, length, width\]"):
        token_moments(torch.zeros(3, 4))


# ------------------------------------------------------------------------------ a nanoGPT-style model
class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(d, 3 * d)
        self.c_proj = nn.Linear(d, d)
        self.probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.c_attn(x).split(d, dim=2)
        q, k, v = (t.view(B, L, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.n_head)
        att = att.masked_fill(~torch.ones(L, L, dtype=torch.bool).tril(), float("-inf")).softmax(-1)
        self.probs = att.detach()
        return self.c_proj((att @ v).transpose(1, 2).reshape(B, L, d))


class MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.c_fc, self.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(d), CausalSelfAttention(d, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(d), MLP(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, n_layer: int = 3, d: int = 16, n_head: int = 4, vocab: int = 32, seq: int = 16) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(wte=nn.Embedding(vocab, d), wpe=nn.Embedding(seq, d),
                                              drop=nn.Dropout(0.0),
                                              h=nn.ModuleList(Block(d, n_head) for _ in range(n_layer)),
                                              ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.drop(t.wte(ids) + t.wpe.weight[: ids.shape[1]])
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


@pytest.fixture
def nanogpt():
    deepscalelm.register(NanoGPT, family="nanogpt", blocks="transformer.h", qkv="attn.c_attn",
                         attn_out="attn.c_proj", mlp_in="mlp.c_fc", mlp_out="mlp.c_proj", attn_norm="ln_1",
                         mlp_norm="ln_2", tok_emb="transformer.wte", pos_emb="transformer.wpe",
                         final_norm="transformer.ln_f", head="lm_head", stream_in="transformer.drop", norm="pre")
    torch.manual_seed(0)
    yield NanoGPT().eval()
    structure._BY_CLASS.pop(NanoGPT, None)


IDS = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(1))
NAMES = ["transformer.drop", "transformer.h.0", "transformer.h.1", "transformer.h.2", "transformer.ln_f"]


def _streams(model: NanoGPT) -> list[torch.Tensor]:
    t = model.transformer
    with torch.no_grad():
        x = [t.drop(t.wte(IDS) + t.wpe.weight[:12])]
        for block in t.h:
            x.append(block(x[-1]))
        return x + [t.ln_f(x[-1])]


def test_registered_nanogpt_in_measure(nanogpt):
    traj = deepscalelm.measure(nanogpt, IDS)
    keys = [r.key for r in traj]
    assert keys == [("", 0, "embedding"), ("", 1, "layer"), ("", 2, "layer"), ("", 3, "layer"), ("", 3, "final_norm")]
    for rec, x in zip(traj, _streams(nanogpt), strict=True):
        assert (rec.mean, rec.var, rec.corr) == moments(x)
    h = _streams(nanogpt)[-1]
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(0))
    assert (traj[-1].grad_var, traj[-1].grad_corr) == moments(g)[1:]  # the paper seed is d(loss)/dh
    assert all(r.grad_var > 0 for r in traj) and traj.meta["family"] == "nanogpt"
    loss = deepscalelm.measure(nanogpt, IDS, protocol="loss")
    assert [r.key for r in loss] == keys and math.isfinite(loss[0].grad_var)


def test_registered_nanogpt_in_check_and_telemetry(nanogpt, tmp_path):
    rep = check(nanogpt, IDS, protocol="paper")
    assert rep.meta["preset"] == "nanogpt" and [r["name"] for r in rep.rows] == NAMES
    for row, x in zip(rep.rows, _streams(nanogpt), strict=True):
        assert (row["mean"], row["var"], row["corr"]) == moments(x)
    traj = deepscalelm.measure(nanogpt, IDS)
    assert [r["grad_var"] for r in rep.rows] == pytest.approx([r.grad_var for r in traj], rel=1e-12)
    assert len(rep.attention) == 3  # the fused c_attn, heads from the module's n_head
    nanogpt(IDS)
    for entry, block in zip(rep.attention, nanogpt.transformer.h, strict=True):
        p = block.attn.probs.double()
        want = (-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).mean(dim=(0, 2))
        assert entry["entropy"] == pytest.approx(want.tolist(), rel=1e-4)
    tel = Telemetry(nanogpt, every=1, path=tmp_path / "t.jsonl")
    with tel.step(0):
        F.cross_entropy(nanogpt(IDS)[:, :-1].reshape(-1, 32), IDS[:, 1:].reshape(-1)).backward()
    tel.close()
    line = json.loads((tmp_path / "t.jsonl").read_text().splitlines()[0])
    assert [r["name"] for r in line["rows"]] == NAMES and tel.preset == "nanogpt"


def test_registered_nanogpt_in_the_nan_guard(nanogpt):
    assert [n for n, _ in residual_layers(nanogpt)] == NAMES[1:4]
    with torch.no_grad():
        nanogpt.transformer.h[1].mlp.c_fc.weight.fill_(1e38)  # finite weight, overflowing activation
    assert locate_nonfinite(nanogpt, lambda: nanogpt(IDS)) == "first non-finite activation: output of transformer.h.1"


def test_one_registration_drives_every_consumer(nanogpt):
    structure.register(NanoGPT, dataclasses_replace(structure.find_structure(nanogpt), stream_in=None,
                                                     final_norm=None))
    assert [r.key for r in deepscalelm.measure(nanogpt, IDS)] == [("", i, "layer") for i in (1, 2, 3)]
    assert [r["name"] for r in check(nanogpt, IDS, protocol="paper").rows] == NAMES[1:4]
    structure._BY_CLASS.pop(NanoGPT)  # unregistered, its names fit the GPT-2 layout: all consumers agree
    assert deepscalelm.measure(nanogpt, IDS).meta["family"] == "gpt2"
    assert check(nanogpt, IDS, protocol="paper").meta["preset"] == "gpt2"
    assert [n for n, _ in residual_layers(nanogpt)] == NAMES[1:4]
    nanogpt.transformer["blocks"] = nanogpt.transformer.pop("h")  # now no registered layout fits
    with pytest.raises(DSLMError, match="supported families: .*gpt2.*deepscalelm.register"):
        deepscalelm.measure(nanogpt, IDS)
    assert residual_layers(nanogpt) == []
    with pytest.raises(DSLMError, match="cannot tell which modules"):
        check(nanogpt, IDS)


def dataclasses_replace(s, **kw):
    import dataclasses

    return dataclasses.replace(s, **kw)


@pytest.mark.parametrize("arch", ["decoder", "encoder-decoder"])
def test_own_models_measure_and_check_read_the_same_sites(arch):
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=32, n_heads=4, seq_len=16, vocab_size=64, dropout=0.0,
                      attn_dropout=0.0, position="rope" if arch == "decoder" else "learned")
    model = deepscalelm.build_model(cfg)
    batch = IDS if arch == "decoder" else (IDS, IDS)
    sites = [s for res in structure.stacks_of(model) for s in res.sites]
    traj = deepscalelm.measure(model, batch)
    rep = check(model, batch, protocol="paper")
    assert [r.key for r in traj] == [s.key for s in sites]
    assert [r["name"] for r in rep.rows] == [s.name for s in sites]
    assert [(r.var, r.corr) for r in traj] == [(r["var"], r["corr"]) for r in rep.rows]
    assert [n for n, _ in residual_layers(model)] == [layer.name for res in structure.stacks_of(model)
                                                      for layer in res.layers]


# ------------------------------------------------------------------- Hugging Face families from the registry
def _hf(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=64,
                  max_position_embeddings=32, attn_implementation="eager")
    if name == "roberta":
        return transformers.RobertaForMaskedLM(transformers.RobertaConfig(**common, pad_token_id=1)).eval()
    if name == "mistral":
        return transformers.MistralForCausalLM(transformers.MistralConfig(**common, num_key_value_heads=2)).eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, num_key_value_heads=2)).eval()


@pytest.mark.parametrize("name", ["roberta", "mistral", "qwen2"])
def test_hf_families_beyond_the_old_presets(name):
    model = _hf(name)
    ids = torch.randint(2, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    rep = check(model, ids, protocol="paper")
    base = "roberta.encoder.layer" if name == "roberta" else "model.layers"
    assert rep.meta["preset"] == name
    assert [r["name"] for r in rep.rows] == [f"{base}.0", f"{base}.1"] + ([] if name == "roberta" else ["model.norm"])
    with torch.no_grad():
        probs = model(ids, output_attentions=True).attentions
    for entry, p in zip(rep.attention, probs, strict=True):  # rotary (Mistral, Qwen2) and GQA from the registry
        p = p.double()
        want = (-(p * torch.log(p.clamp_min(1e-300))).sum(-1)).mean(dim=(0, 2))
        assert entry["entropy"] == pytest.approx(want.tolist(), rel=1e-4)
    traj = deepscalelm.measure(model, ids)
    assert [r.var for r in traj] == [r["var"] for r in rep.rows] and traj.meta["family"] == name
    assert [n for n, _ in residual_layers(model)] == [f"{base}.0", f"{base}.1"]
