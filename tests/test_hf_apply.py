"""`deepscalelm.apply` on Hugging Face GPT-2 / BERT / RoBERTa and a registered nanoGPT-style module.

Tiny random models (4 layers, width 32) built from configs; nothing is downloaded. The folded stock
model is compared with an explicit lam/beta forward of the same (unfolded) weights, the saved
checkpoint with its stock reload, and the predicted moments with a measurement.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deepscalelm
from deepscalelm import ModelConfig
from deepscalelm.errors import DSLMError
from deepscalelm.fold import _initialise, stream_scales
from deepscalelm.structure import resolve
from deepscalelm.theory.schemes import get_scheme

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


def gpt2(n_layer: int = 4, d: int = 32, **kw) -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=n_layer, n_embd=d, n_head=4, vocab_size=256, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, **kw)
    return transformers.GPT2LMHeadModel(cfg).eval()


def bert(n_layer: int = 4, d: int = 32, cls=None, **kw) -> nn.Module:
    cfg = transformers.BertConfig(num_hidden_layers=n_layer, hidden_size=d, num_attention_heads=4,
                                  intermediate_size=4 * d, vocab_size=256, max_position_embeddings=64, **kw)
    return (cls or transformers.BertForMaskedLM)(cfg).eval()


def roberta() -> nn.Module:
    cfg = transformers.RobertaConfig(num_hidden_layers=4, hidden_size=32, num_attention_heads=4,
                                     intermediate_size=128, vocab_size=256, max_position_embeddings=66)
    return transformers.RobertaForMaskedLM(cfg).eval()


def ids(n: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).norm() / b.norm())  # relative Frobenius difference


# ------------------------------------------------------------- explicit lam/beta implementations
def gpt2_explicit(model: nn.Module, x_ids: torch.Tensor, merges: list[tuple[float, float]]) -> torch.Tensor:
    """GPT-2 with x <- lam x + beta F(LN(x)) per block, from the model's own modules."""
    t = model.transformer
    x = t.wte(x_ids) + t.wpe(torch.arange(x_ids.shape[1]))
    it = iter(merges)
    for block in t.h:
        lam, beta = next(it)
        x = lam * x + beta * block.attn(block.ln_1(x))[0]
        lam, beta = next(it)
        x = lam * x + beta * block.mlp(block.ln_2(x))
    return model.lm_head(t.ln_f(x))


def bert_explicit(model: nn.Module, x_ids: torch.Tensor, merges: list[tuple[float, float]]) -> torch.Tensor:
    """BERT with x <- LN(lam x + beta F(x)) per block, from the model's own modules."""
    b = model.bert
    x = b.embeddings(input_ids=x_ids)
    it = iter(merges)
    for layer in b.encoder.layer:
        lam, beta = next(it)
        a = layer.attention.output.dense(layer.attention.self(x)[0])
        x = layer.attention.output.LayerNorm(lam * x + beta * a)
        lam, beta = next(it)
        f = layer.output.dense(layer.intermediate(x))
        x = layer.output.LayerNorm(lam * x + beta * f)
    return model.cls(x)


def _merges(model: nn.Module, scheme: str = "dslm") -> list[tuple[float, float]]:
    cfg = ModelConfig.from_hf(model.config, scheme=scheme)
    return [get_scheme(cfg).merge(f"layers.{i}.{b}") for i in range(cfg.n_layers) for b in ("attn", "ffn")]


def _unfolded(model: nn.Module, scheme: str = "dslm", seed: int = 0) -> nn.Module:
    """The scheme's weights without the folding, with the tied head's scale on the final norm."""
    cfg = ModelConfig.from_hf(model.config, scheme=scheme)
    res = resolve(model)
    sch = get_scheme(cfg)
    _initialise(model, res, sch, seed)
    mods = dict(model.named_modules())
    with torch.no_grad():
        mods[res.parts.get("head_norm") or res.parts["final_norm"]].weight.fill_(sch.scales["head_scale"])
        if "emb_norm" in res.parts:
            total = sum(sch.var(f"{r}.weight") for r in ("tok_emb", "pos_emb", "type_emb") if r in res.parts)
            mods[res.parts["emb_norm"]].weight.fill_(math.sqrt(total))
    return model


def test_explicit_forwards_match_stock_at_unit_merges():
    g, b, x = gpt2(), bert(), ids()
    assert rel(gpt2_explicit(g, x, [(1.0, 1.0)] * 8), g(x).logits) < 1e-6
    assert rel(bert_explicit(b, x, [(1.0, 1.0)] * 8), b(x).logits) < 1e-6


@pytest.mark.parametrize("family", ["gpt2", "bert"])
def test_folded_equals_explicit_lambda_beta(family):
    make, explicit = (gpt2, gpt2_explicit) if family == "gpt2" else (bert, bert_explicit)
    x = ids()
    folded = deepscalelm.apply(make(), "dslm", seed=3)
    reference = _unfolded(make(), "dslm", seed=3)
    merges = _merges(reference)
    assert any(abs(lam - 1) > 0.05 for lam, _ in merges)  # the fold has something to do
    want = explicit(reference, x, merges)
    got = folded(x).logits
    assert rel(got, want) < 1e-5, rel(got, want)
    # without the fold the stock forward is a different function
    assert rel(reference(x).logits, want) > 1e-2


def test_folded_gpt2_stream_carries_known_scale():
    """Pre-LN: the stock stream after block j equals the explicit stream divided by c_j."""
    x = ids()
    folded = deepscalelm.apply(gpt2(), "dslm", seed=1)
    reference = _unfolded(gpt2(), "dslm", seed=1)
    scales = stream_scales(resolve(folded), get_scheme(ModelConfig.from_hf(folded.config, scheme="dslm")))
    hs = folded(x, output_hidden_states=True).hidden_states  # embedding, after layers 1..N-1, after ln_f
    merges = _merges(reference)
    t, h = reference.transformer, reference.transformer.wte(x) + reference.transformer.wpe(torch.arange(16))
    for i, block in enumerate(t.h[:-1]):
        (l1, b1), (l2, b2) = merges[2 * i], merges[2 * i + 1]
        h = l1 * h + b1 * block.attn(block.ln_1(h))[0]
        h = l2 * h + b2 * block.mlp(block.ln_2(h))
        assert rel(hs[i + 1] * scales[2 * i + 1], h) < 1e-5


@pytest.mark.parametrize("make", [gpt2, bert, roberta])
def test_save_pretrained_round_trip(make, tmp_path):
    model = deepscalelm.apply(make(), "dslm", seed=0)
    model.save_pretrained(tmp_path)
    cls = getattr(transformers, type(model).__name__)
    again = cls.from_pretrained(tmp_path).eval()
    x = ids()
    assert type(again) is type(model)
    assert rel(again(x).logits, model(x).logits) <= 1e-5
    assert again.config.deepscalelm_scheme["scheme"] == "dslm"


def test_untied_head_gets_its_own_variance(tmp_path):
    model = deepscalelm.apply(gpt2(tie_word_embeddings=False), seed=0)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert model.lm_head.weight.var().item() == pytest.approx(1 / 32, rel=0.1)
    assert model.transformer.ln_f.weight[0].item() == 1.0  # no head scale to carry
    model.save_pretrained(tmp_path)
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert rel(again(ids()).logits, model(ids()).logits) <= 1e-5


def test_apply_twice_equals_once_and_forgets_the_old_weights():
    a = deepscalelm.apply(gpt2(), seed=5)
    b = gpt2()
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(3.0)
    b = deepscalelm.apply(deepscalelm.apply(b, seed=5), seed=5)
    for (n, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), n
    c = deepscalelm.apply(gpt2(), seed=6)
    assert not torch.equal(a.transformer.h[0].attn.c_attn.weight, c.transformer.h[0].attn.c_attn.weight)


@pytest.mark.parametrize("make", [gpt2, bert])
def test_meta_device_model_is_materialised(make):
    with torch.device("meta"):
        meta = make()
    out = deepscalelm.apply(meta, seed=2)
    want = deepscalelm.apply(make(), seed=2)
    assert not any(t.is_meta for t in (*out.parameters(), *out.buffers()))
    x = ids()
    assert rel(out.eval()(x).logits, want(x).logits) == 0.0


def test_variances_follow_the_scheme():
    model = deepscalelm.apply(gpt2(n_layer=4, d=64), seed=0)
    sch = get_scheme(ModelConfig.from_hf(model.config, scheme="dslm"))
    w = model.transformer.h[1].attn.c_attn.weight  # Conv1D [in, 3d]: q | k | v along columns
    q, k, v = w.chunk(3, dim=1)
    assert q.var().item() == pytest.approx(sch.var("layers.1.attn.q.weight"), rel=0.1)
    assert v.var().item() == pytest.approx(sch.var("layers.1.attn.v.weight"), rel=0.1)
    assert model.transformer.h[1].attn.c_attn.bias.abs().max() == 0
    assert model.transformer.wte.weight.var().item() == pytest.approx(sch.var("tok_emb.weight"), rel=0.1)
    assert model.transformer.ln_f.weight[0].item() == pytest.approx(sch.scales["head_scale"])


def test_bert_variants_with_pooler_and_classifier():
    model = deepscalelm.apply(bert(cls=transformers.BertForSequenceClassification), seed=0)
    w = model.classifier.weight
    assert w.var().item() == pytest.approx(1 / w.shape[1], rel=0.5)
    assert model.bert.pooler.dense.weight.var().item() == pytest.approx(1 / 32, rel=0.2)
    base = deepscalelm.apply(bert(cls=transformers.BertModel), seed=0)
    assert base(ids()).last_hidden_state.var().item() == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------------------------------------ bad input
def test_unknown_architecture_names_families_and_register():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)

    with pytest.raises(DSLMError, match=r"supported families: .*gpt2.*deepscalelm.register\(Odd"):
        deepscalelm.apply(Odd())


def test_deepnet_on_pre_norm_is_refused_and_allowed_on_post_norm():
    with pytest.raises(ValueError, match="Post-LN only"):
        deepscalelm.apply(gpt2(), "deepnet")
    model = deepscalelm.apply(bert(), "deepnet")
    assert model(ids()).logits.isfinite().all()


def test_scheme_options_are_checked():
    with pytest.raises(ValueError, match=r"\['k'\] do not apply to scheme 'xavier'"):
        deepscalelm.apply(gpt2(), "xavier", k=2.0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        deepscalelm.apply(gpt2(), "mup")
    with pytest.raises(ValueError, match="k / N"):
        deepscalelm.apply(gpt2(), "dslm", k=100.0)


def test_from_hf_fields_and_refusals():
    c = ModelConfig.from_hf(gpt2().config)
    assert (c.arch, c.norm, c.n_layers, c.d_model, c.scheme, c.ln_eps) == ("decoder", "pre", 4, 32, "gpt2", 1e-5)
    b = ModelConfig.from_hf(bert().config.to_dict())  # a config.json dict works too
    assert (b.arch, b.norm, b.n_token_types, b.ln_eps, b.scheme) == ("encoder", "post", 2, 1e-12, "normal")
    assert ModelConfig.from_hf(roberta().config).seq_len == 64
    with pytest.raises(ValueError, match="'t5' needs the theory of RMSNorm, relative position bias"):
        ModelConfig.from_hf({"model_type": "t5"})
    with pytest.raises(ValueError, match="unsupported model_type 'xlnet'"):
        ModelConfig.from_hf({"model_type": "xlnet"})
    with pytest.raises(ValueError, match="unknown ModelConfig field"):
        ModelConfig.from_hf(gpt2().config, kk=1)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        ModelConfig.from_hf({**gpt2().config.to_dict(), "scale_attn_by_inverse_layer_idx": True})


def test_llama_structure_names_the_gated_mlp():
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=256))
    res = resolve(llama)
    assert res.parts["final_norm"] == "model.norm" and res.layers[1].parts["mlp_gate"] == "model.layers.1.mlp.gate_proj"


# -------------------------------------------------------------------- a user-described module
class NanoBlock(nn.Module):
    """nanoGPT's block (fused nn.Linear c_attn), with explicit lam/beta merges for the reference."""

    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.n_head, self.merges = n_head, ((1.0, 1.0), (1.0, 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (t.view(B, L, self.n_head, d // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, L, d)
        (l1, b1), (l2, b2) = self.merges
        x = l1 * x + b1 * self.attn.c_proj(y)
        return l2 * x + b2 * self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(nn.Module):
    def __init__(self, n_layer: int = 4, d: int = 32, vocab: int = 256, block_size: int = 64) -> None:
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block_size, d),
            h=nn.ModuleList(NanoBlock(d, 4) for _ in range(n_layer)), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.shape[1]))
        for block in t.h:
            x = block(x)
        return self.lm_head(t.ln_f(x))


NANO = ModelConfig(arch="decoder", n_layers=4, d_model=32, n_heads=4, seq_len=64, vocab_size=256,
                   activation="gelu", dropout=0.0, attn_dropout=0.0)


@pytest.fixture
def registered_nanogpt():
    from deepscalelm import structure

    deepscalelm.register(NanoGPT, blocks="transformer.h", qkv="attn.c_attn", attn_out="attn.c_proj",
                         mlp_in="mlp.c_fc", mlp_out="mlp.c_proj", attn_norm="ln_1", mlp_norm="ln_2",
                         tok_emb="transformer.wte", pos_emb="transformer.wpe", final_norm="transformer.ln_f",
                         head="lm_head", norm="pre")
    yield
    structure._BY_CLASS.pop(NanoGPT)


def test_registered_nanogpt_folds_like_explicit_merges(registered_nanogpt):
    x = ids()
    folded = deepscalelm.apply(NanoGPT(), "dslm", seed=4, config=NANO)
    reference = NanoGPT()
    sch = get_scheme(NANO)
    _initialise(reference, resolve(reference), sch, 4)
    with torch.no_grad():
        reference.transformer.ln_f.weight.fill_(sch.scales["head_scale"])
    for i, block in enumerate(reference.transformer.h):
        block.merges = (sch.merge(f"layers.{i}.attn"), sch.merge(f"layers.{i}.ffn"))
    assert rel(folded(x), reference(x)) < 1e-5
    q = folded.transformer.h[0].attn.c_attn.weight[:32]  # nn.Linear [3d, in]: q is the first d rows
    assert q.var().item() == pytest.approx(1 / 32, rel=0.15)


def test_registered_module_needs_a_config_and_right_paths(registered_nanogpt):
    with pytest.raises(DSLMError, match="pass config=deepscalelm.ModelConfig"):
        deepscalelm.apply(NanoGPT())
    with pytest.raises(ValueError, match="n_layers=12 but NanoGPT has 4 layers"):
        deepscalelm.apply(NanoGPT(), config=NANO.replace(n_layers=12))
    deepscalelm.register(NanoGPT, blocks="transformer.h", qkv="attn.c_attn", attn_out="attn.proj",
                         mlp_in="mlp.c_fc", mlp_out="mlp.c_proj")
    with pytest.raises(DSLMError, match="has no attn_out module 'attn.proj'; closest: transformer.h.0.attn.c_"):
        deepscalelm.apply(NanoGPT(), config=NANO)


# -------------------------------------------------------------------- predicted vs measured
def _stream_moments(model: nn.Module, x: torch.Tensor, seed_scale: float = 1.0) -> list[tuple[float, float, float]]:
    """(var, corr, grad_var) of each layer's output (after its last merge), the paper's protocol.

    The gradient is seeded as loss = sum(h * G) / seed_scale, G iid N(0, 1), h the base model's final
    hidden state (GPT-2: after ln_f, whose gain carries the tied head's scale: pass it as seed_scale).
    """
    from deepscalelm.measure.stats import moments

    outs: list[torch.Tensor] = []
    mods = dict(model.named_modules())
    layer_names = [layer.name for layer in resolve(model).layers]
    hooks = [mods[n].register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
             for n in layer_names]
    base = getattr(model, model.base_model_prefix)
    h = base(x).last_hidden_state
    for hk in hooks:
        hk.remove()
    g = torch.randn(h.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((h * g).sum() / seed_scale, outs)
    return [(*moments(o)[1:], moments(gr)[1]) for o, gr in zip(outs, grads, strict=True)]


# width: BERT's shared token-type row makes a third of the embedding correlation one row's draw, which
# at width 64 moves the measured correlation by +-0.09 from draw to draw (seeds 0-2); at width 256 the
# three draws sit 0.033-0.047 below the prediction (median over the 8 layers)
@pytest.mark.parametrize("family,scheme,d", [("gpt2", "dslm", 64), ("gpt2", None, 64), ("bert", "dslm", 256)])
def test_prediction_matches_measurement(family, scheme, d):
    """After apply, and for GPT-2's own default init (scheme None: predicted as our "gpt2" scheme).

    Train mode (dropout 0.1), 8 layers, the paper's bars: median forward-variance error <= 10% (in
    the scheme's units: the folded stream times c_j), median correlation error <= 0.05, median
    gradient-variance error <= 20% (the paper's unit Gaussian gradient at the final hidden state).
    """
    torch.manual_seed(0)
    B, L, n = 16, 64, 8
    model = (gpt2 if family == "gpt2" else bert)(n_layer=n, d=d)
    if scheme is None:
        scheme = "gpt2"
    else:
        model = deepscalelm.apply(model, scheme, seed=0)
    model.train()
    x = ids(B, L, seed=1)
    counts = torch.zeros(B, 256).scatter_add_(1, x, torch.ones(B, L))
    p_same = float((counts * (counts - 1)).sum(1).mean() / (L * (L - 1)))
    cfg = ModelConfig.from_hf(model.config, scheme=scheme, seq_len=L, same_token_prob=p_same)
    sch = get_scheme(cfg)
    pred = {r.key: r for r in deepscalelm.predict(cfg, sch)}
    scales = stream_scales(resolve(model), sch)
    seed_scale = sch.scales["head_scale"] if family == "gpt2" else 1.0  # GPT-2's ln_f gain
    measured = _stream_moments(model, x, seed_scale)
    var_err, corr_err, gvar_err = [], [], []
    for i in range(n):
        var, corr, gvar = measured[i]
        p = pred[("", i + 1, "ffn")]
        c = scales[2 * i + 1]  # the folded stream is x / c, its gradient c * dL/dx
        var_err.append(abs(var * c ** 2 / p.var - 1))
        corr_err.append(abs(corr - p.corr))
        gvar_err.append(abs(gvar / c ** 2 / p.grad_var - 1))
    assert statistics.median(var_err) <= 0.10, var_err
    assert statistics.median(gvar_err) <= 0.20, gvar_err
    assert statistics.median(corr_err) <= 0.05, corr_err


def _own_gpt_from(hf: nn.Module, cfg: ModelConfig) -> nn.Module:
    """deepscalelm's GPT with the folded HF GPT-2's weights unfolded and its merges set."""
    own = deepscalelm.build_model(cfg).eval()
    sch = get_scheme(cfg)
    t = hf.transformer
    factors = iter(deepscalelm.fold.fold_factors(resolve(hf), sch))
    with torch.no_grad():
        own.tok_emb.weight.copy_(t.wte.weight)
        own.pos_emb.weight.copy_(t.wpe.weight)
        for layer, block in zip(own.layers, t.h, strict=True):
            for w, part in zip("qkv", block.attn.c_attn.weight.chunk(3, dim=1), strict=True):
                getattr(layer.attn, w).weight.copy_(part.T)  # Conv1D [in, out] -> Linear [out, in]
            layer.attn.o.weight.copy_(block.attn.c_proj.weight.T / next(factors))
            layer.ffn.fc1.weight.copy_(block.mlp.c_fc.weight.T)
            layer.ffn.fc2.weight.copy_(block.mlp.c_proj.weight.T / next(factors))
    return own


def test_applied_gpt2_computes_deepscalelms_own_model():
    """The stock GPT-2 after apply is deepscalelm's GPT (lam/beta merges) with the same weights."""
    hf = deepscalelm.apply(gpt2(activation_function="gelu"), "dslm", seed=0)
    cfg = ModelConfig.from_hf(hf.config, scheme="dslm")
    own = _own_gpt_from(hf, cfg)
    x = ids()
    assert rel(hf(x).logits, own(x)) < 1e-5


@pytest.mark.slow  # a fresh interpreter importing torch and transformers: ~5-15 s
def test_checkpoint_reloads_without_deepscalelm(tmp_path):
    """A fresh interpreter that cannot import deepscalelm reloads the checkpoint to the same logits."""
    import subprocess
    import sys

    model = deepscalelm.apply(gpt2(), "dslm", seed=0)
    model.save_pretrained(tmp_path / "ckpt")
    x = ids()
    torch.save({"ids": x, "logits": model(x).logits.detach()}, tmp_path / "want.pt")
    script = (
        "import sys; sys.modules['deepscalelm'] = None\n"
        "import torch, transformers\n"
        f"want = torch.load({str(tmp_path / 'want.pt')!r})\n"
        f"m = transformers.GPT2LMHeadModel.from_pretrained({str(tmp_path / 'ckpt')!r}).eval()\n"
        "got = m(want['ids']).logits.detach()\n"
        "print(float((got - want['logits']).norm() / want['logits'].norm()))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={"PATH": "", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) <= 1e-5


def test_scheme_gpt2_reproduces_the_hf_default_init():
    """from_hf's GPT-2 scheme is Hugging Face's own init: N(0, 0.02^2), c_proj / sqrt(2 n_layer)."""
    hf = gpt2(n_layer=8, d=64)
    ours = deepscalelm.apply(gpt2(n_layer=8, d=64), "gpt2", seed=0)
    for name in ("transformer.h.3.attn.c_proj.weight", "transformer.h.3.mlp.c_fc.weight", "transformer.wte.weight"):
        want, got = hf.get_parameter(name).std().item(), ours.get_parameter(name).std().item()
        assert got == pytest.approx(want, rel=0.05), name
    assert ours.get_parameter("transformer.h.3.attn.c_proj.weight").std().item() == pytest.approx(0.02 / 4, rel=0.05)


def test_applied_bert_matches_deepscalelms_own_encoder():
    """BERT after apply is deepscalelm's Post-LN encoder with the same weights, but for the embedding
    LayerNorm (per-token normalisation of the summed embedding): per-layer moments agree closely."""

    hf = deepscalelm.apply(bert(n_layer=4, d=64), "dslm", seed=0)
    cfg_hf = ModelConfig.from_hf(hf.config, scheme="dslm")
    own = deepscalelm.build_model(cfg_hf).eval()
    factors = iter(deepscalelm.fold.fold_factors(resolve(hf), get_scheme(cfg_hf)))
    e = hf.bert.embeddings
    with torch.no_grad():
        own.tok_emb.weight.copy_(e.word_embeddings.weight)
        own.pos_emb.weight.copy_(e.position_embeddings.weight)
        own.type_emb.weight.copy_(e.token_type_embeddings.weight)
        for layer, blk in zip(own.layers, hf.bert.encoder.layer, strict=True):
            s = blk.attention.self
            for w, lin in zip("qkv", (s.query, s.key, s.value), strict=True):
                getattr(layer.attn, w).weight.copy_(lin.weight)
            layer.attn.o.weight.copy_(blk.attention.output.dense.weight / next(factors))
            layer.ffn.fc1.weight.copy_(blk.intermediate.dense.weight)
            layer.ffn.fc2.weight.copy_(blk.output.dense.weight / next(factors))
    x = ids(16, 64, seed=2)  # eval mode: no dropout on either side
    theirs = [m[:2] for m in _stream_moments(hf.eval(), x)]
    ours = [(r.var, r.corr) for r in deepscalelm.measure(own, x) if r.block == "ffn"]
    for (v1, c1), (v2, c2) in zip(theirs, ours, strict=True):
        assert abs(v1 - v2) < 0.02 and abs(c1 - c2) < 0.01, (theirs, ours)
