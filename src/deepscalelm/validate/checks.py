"""One Monte-Carlo check per component and grid point (the paper's component-check protocol), and the grids.

A check samples the input (the paper's Gaussian input model), builds the layer with fresh weights for every run (the
moments are expectations over inputs *and* weights, the paper's moment definitions), runs it forward, back-propagates
loss = sum(out * G) with a structured random G, measures the moments (`protocol.measure`) and
returns rows ``(quantity, actual, predicted, pred_var)``; ``pred_var`` (a predicted variance) is
given for quantities that may be ~0 (means, covariances), see `protocol.calc_err`.

Grids: ``authors`` (the full grids of the paper's component-check protocol, a long benchmark), ``quick`` (a reduced
subset for ``dslm validate --quick``), ``test`` (seconds, for the test-suite) and ``random`` (independent random
points drawn from the same ranges with their own seed, at CPU-sized d and L).
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from typing import Any

from ..theory.attention import Attention, Softmax
from ..theory.moments import Grad, Signal
from .protocol import measure, sample_field

Row = tuple[str, float, float, "float | None"]

# the paper's component-check protocol value lists
_S3 = [0.3162, 1.0, 3.1623]
_R3 = [0.0, 1 / 3, 2 / 3]
_R5 = [0.0, 0.2, 0.4, 0.6, 0.8]
_SOFT_S = [0.01, 0.0316, 0.1, 0.3162, 1.0]
_SOFT_G = [0.3162, 0.5623, 1.0, 1.7783, 3.1623]
_SOFT_L = [300, 720, 1732, 4161, 10000]

# cap on runs * d_in * d_out weight entries drawn at once (memory); above it weights are shared by
# groups of runs
_MAX_WEIGHT_ENTRIES = 4_000_000


def _torch():
    import torch

    return torch


def _weights(runs: int, d_in: int, d_out: int, std: float, gen: Any, dtype: Any) -> Any:
    """(runs, d_in, d_out) weights; runs share a draw in groups when memory would be too large."""
    torch = _torch()
    draws = max(1, min(runs, _MAX_WEIGHT_ENTRIES // max(1, d_in * d_out)))
    w = torch.randn(draws, d_in, d_out, generator=gen, dtype=dtype) * std
    if draws == runs:
        return w
    idx = torch.arange(runs) % draws
    return w[idx]


def _std_rows(prefix: str, m: dict[str, float], pred: Signal | Grad, with_mean: bool = True) -> list[Row]:
    rows: list[Row] = []
    var = pred.var if pred.var > 0 else 1.0
    if with_mean and isinstance(pred, Signal):
        rows.append((f"{prefix} mean", m["mean"], pred.mean, var))
    rows.append((f"{prefix} var", m["var"], pred.var, None))
    if "cov" in m:
        rows.append((f"{prefix} cov", m["cov"], pred.cov, var))
    return rows


def _backprop(x: Any, y: Any, grad: Any) -> Any:
    (y * grad).sum().backward()
    return x.grad


# ------------------------------------------------------------------------------------- checks
def check_linear(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    from ..theory.components import Linear

    torch = _torch()
    runs, L, di, do = pt["runs"], pt["L"], pt["d_in"], pt["d_out"]
    x = sample_field(runs, L, di, pt["mu"], pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    w = _weights(runs, di, do, pt["mw"] / math.sqrt(di), gen, dtype)
    y = torch.bmm(x, w)
    g = sample_field(runs, L, do, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    comp = Linear(di, do, pt["mw"] ** 2 / di)
    xs = Signal(pt["mu"], pt["sx"] ** 2, pt["rx"])
    return (_std_rows("x", measure(y), comp.forward(xs))
            + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"]))))


def check_dropout(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    from ..theory.components import Dropout

    torch = _torch()
    runs, L, d, p = pt["runs"], pt["L"], pt["d"], pt["p"]
    x = sample_field(runs, L, d, pt["mu"], pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    keep = (torch.rand(runs, L, d, generator=gen, dtype=dtype) >= p).to(dtype) / (1.0 - p)
    y = x * keep
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    comp = Dropout(p)
    xs = Signal(pt["mu"], pt["sx"] ** 2, pt["rx"])
    return (_std_rows("x", measure(y), comp.forward(xs))
            + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"]))))


def _check_act(name: str, pt: dict, gen: Any, dtype: Any) -> list[Row]:
    from ..theory import components as C

    torch = _torch()
    runs, L, d = pt["runs"], pt["L"], pt["d"]
    x = sample_field(runs, L, d, 0.0, pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    comp: C.ReLU | C.SiLU | C.GeLU
    if name == "relu":
        y, comp = torch.relu(x), C.ReLU()
    elif name == "silu":
        y, comp = torch.nn.functional.silu(x), C.SiLU()
    else:
        y, comp = torch.nn.functional.gelu(x), C.GeLU()
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    return (_std_rows("x", measure(y), comp.forward(xs))
            + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"]))))


def check_relu(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_act("relu", pt, gen, dtype)


def check_gelu(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_act("gelu", pt, gen, dtype)


def check_silu(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_act("silu", pt, gen, dtype)


def check_rmsnorm(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    """x / sqrt(mean(x^2)) over the d hidden units of each token (no affine part)."""
    from ..theory.components import RMSNorm

    torch = _torch()
    runs, L, d = pt["runs"], pt["L"], pt["d"]
    x = sample_field(runs, L, d, pt["mu"], pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    y = x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True))
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    comp = RMSNorm(d)
    xs = Signal(pt["mu"], pt["sx"] ** 2, pt["rx"])
    return (_std_rows("x", measure(y), comp.forward(xs))
            + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"]))))


def _check_gated_ffn(act: str, pt: dict, gen: Any, dtype: Any) -> list[Row]:
    """The gated FFN block W2(act(x W1) * (x W3)) -> dropout, fresh weights per run.

    The input is what the block reads in a model, a norm output: Gaussian tokens rescaled to the
    fixed norm sqrt(d) * sx (an RMSNorm output times sx), whose token correlation is
    `RMSNorm._corr` of the sampled one. (A Gaussian input with a fluctuating norm would raise
    E[act(a)^2 b^2] by about 1 + 2/d, since a and b share the norm of x.)
    """
    from ..theory.blocks import FFNBlock
    from ..theory.components import RMSNorm

    torch = _torch()
    F = torch.nn.functional
    runs, L, d, f, p = pt["runs"], pt["L"], pt["d"], pt["d_ff"], pt["p"]
    x = sample_field(runs, L, d, 0.0, 1.0, pt["rx"], gen, dtype)
    x = (x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True)) * pt["sx"]).requires_grad_(True)
    w1 = _weights(runs, d, f, pt["m1"] / math.sqrt(d), gen, dtype)
    w3 = _weights(runs, d, f, pt["m3"] / math.sqrt(d), gen, dtype)
    w2 = _weights(runs, f, d, pt["m2"] / math.sqrt(f), gen, dtype)
    a, b = torch.bmm(x, w1), torch.bmm(x, w3)
    h = (F.silu(a) if act == "swiglu" else F.gelu(a)) * b
    y = torch.bmm(h, w2)
    if p > 0:
        y = y * (torch.rand(y.shape, generator=gen, dtype=dtype) >= p).to(dtype) / (1.0 - p)
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    comp = FFNBlock(d, f, pt["m1"] ** 2 / d, pt["m2"] ** 2 / f, act, p, w3_var=pt["m3"] ** 2 / d)
    xs = Signal(0.0, pt["sx"] ** 2, RMSNorm(d)._corr(pt["rx"]))
    return (_std_rows("x", measure(y), comp.forward(xs))
            + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"]))))


def check_ffn_swiglu(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_gated_ffn("swiglu", pt, gen, dtype)


def check_ffn_geglu(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_gated_ffn("geglu", pt, gen, dtype)


def check_layernorm(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    from ..theory.components import LayerNorm

    torch = _torch()
    runs, L, d = pt["runs"], pt["L"], pt["d"]
    x = sample_field(runs, L, d, pt["mu"], pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    y = torch.nn.functional.layer_norm(x, (d,), eps=1e-12)
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    gx = _backprop(x, y, g)
    comp = LayerNorm(d)
    xs = Signal(pt["mu"], pt["sx"] ** 2, pt["rx"])
    m = measure(y, hidden=True)
    rows = _std_rows("x", m, comp.forward(xs))
    rows.append(("x hidden cov", m["hidden_cov"], comp.hidden_cov, 1.0))
    return rows + _std_rows("g", measure(gx), comp.backward(xs, Grad(pt["sg"] ** 2, pt["rg"])))


def check_softmax(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    """Softmax over L logits (batch of vectors); both the authors' full and approximate forms."""
    torch = _torch()
    batch, L = pt["runs"], pt["L"]
    x = sample_field(batch, L, 1, 0.0, pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    y = torch.softmax(x, dim=1)
    g = sample_field(batch, L, 1, 0.0, pt["sg"], pt.get("rg", 0.0), gen, dtype)
    gx = _backprop(x, y, g)
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    gs = Grad(pt["sg"] ** 2, pt.get("rg", 0.0))
    my, mg = measure(y), measure(gx)
    rows: list[Row] = []
    for tag, exact in (("full", True), ("approx", False)):
        sm = Softmax(L, exact=exact)
        f, b = sm.forward(xs), sm.backward(xs, gs)
        rows.append((f"x mean [{tag}]", my["mean"], f.mean, None))
        rows.append((f"x var [{tag}]", my["var"], f.var, None))
        rows.append((f"g var [{tag}]", mg["var"], b.var, None))
    sm = Softmax(L)
    f = sm.forward(xs)
    rows.append(("x cov", my["cov"], f.cov, f.var))
    return rows


def _attention_mc(pt: dict, gen: Any, dtype: Any, causal: bool, cross: bool = False) -> dict:
    """Monte Carlo of one attention head; ``pt["rope_base"]`` (when given) rotates q and k by the
    models' rotary positions (`deepscalelm.models.components.apply_rope`, positions 0..L-1)."""
    torch = _torch()
    runs, L, di, dk = pt["runs"], pt["L"], pt["d_in"], pt["d_k"]
    lq = pt.get("L_q", L) if cross else L
    x = sample_field(runs, lq, di, 0.0, pt["sx"], pt["rx"], gen, dtype).requires_grad_(True)
    if cross:
        z = sample_field(runs, L, di, 0.0, pt["skv"], pt["rkv"], gen, dtype).requires_grad_(True)
    else:
        z = x
    sq = pt["mqk"] / math.sqrt(di)
    wq = _weights(runs, di, dk, sq, gen, dtype)
    wk = _weights(runs, di, dk, sq, gen, dtype)
    wv = _weights(runs, di, dk, pt["mv"] / math.sqrt(di), gen, dtype)
    q, k, v = torch.bmm(x, wq), torch.bmm(z, wk), torch.bmm(z, wv)
    if pt.get("rope_base") is not None:
        from ..models.components import apply_rope, rope_tables
        cos, sin = rope_tables(L, dk, pt["rope_base"], dtype=dtype)
        q = apply_rope(q[:, :, None, :], cos, sin)[:, :, 0, :]
        k = apply_rope(k[:, :, None, :], cos, sin)[:, :, 0, :]
    s = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(dk)
    if causal:
        mask = torch.ones(L, L, dtype=torch.bool).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    a = torch.softmax(s, dim=-1)
    p = pt["p"]
    if p > 0:
        a = a * (torch.rand(a.shape, generator=gen, dtype=dtype) >= p).to(dtype) / (1.0 - p)
    y = torch.bmm(a, v)
    g = sample_field(runs, lq, dk, 0.0, pt["sg"], pt["rg"], gen, dtype)
    (y * g).sum().backward()
    out = {"y": measure(y), "gx": measure(x.grad)}
    if cross:
        out["gz"] = measure(z.grad)
    return out


def _attn_obj(pt: dict, causal: bool, **kw: Any) -> Attention:
    di = pt["d_in"]
    return Attention(di, pt["d_k"], pt["L"], pt["mqk"] ** 2 / di, pt["mqk"] ** 2 / di,
                     pt["mv"] ** 2 / di, attn_dropout=pt["p"], causal=causal, **kw)


def _check_attention(pt: dict, gen: Any, dtype: Any, causal: bool) -> list[Row]:
    m = _attention_mc(pt, gen, dtype, causal)
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    gs = Grad(pt["sg"] ** 2, pt["rg"])
    ours = _attn_obj(pt, causal)
    rows = _std_rows("x", m["y"], ours.forward(xs)) + _std_rows("g", m["gx"], ours.backward(xs, gs))
    paper = _attn_obj(pt, causal, exact=False, qk_grad=False)
    fp, bp = paper.forward(xs), paper.backward(xs, gs)
    rows += [("x var [paper]", m["y"]["var"], fp.var, None),
             ("x cov [paper]", m["y"]["cov"], fp.cov, fp.var),
             ("g var [paper]", m["gx"]["var"], bp.var, None),
             ("g cov [paper]", m["gx"]["cov"], bp.cov, bp.var)]
    noqk = _attn_obj(pt, causal, qk_grad=False).backward(xs, gs)
    rows.append(("g var [no qk]", m["gx"]["var"], noqk.var, None))
    return rows


def check_attention(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_attention(pt, gen, dtype, causal=False)


def check_attention_causal(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_attention(pt, gen, dtype, causal=True)


def _check_attention_rope(pt: dict, gen: Any, dtype: Any, causal: bool) -> list[Row]:
    """Rotary positions (``rope_base``) on q and k: our rope formulas (docs/rope.md), and as a
    reference the same head without rotation ("[no rope]"), which ignores the positions."""
    m = _attention_mc(pt, gen, dtype, causal)
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    gs = Grad(pt["sg"] ** 2, pt["rg"])
    ours = _attn_obj(pt, causal, rope=True, rope_base=pt["rope_base"])
    plain = _attn_obj(pt, causal)
    fp, bp = plain.forward(xs), plain.backward(xs, gs)
    return (_std_rows("x", m["y"], ours.forward(xs)) + _std_rows("g", m["gx"], ours.backward(xs, gs))
            + [("x var [no rope]", m["y"]["var"], fp.var, None),
               ("g var [no rope]", m["gx"]["var"], bp.var, None)])


def check_attention_rope(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_attention_rope(pt, gen, dtype, causal=False)


def check_attention_rope_causal(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    return _check_attention_rope(pt, gen, dtype, causal=True)


def check_cross_attention(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    m = _attention_mc(pt, gen, dtype, causal=False, cross=True)
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    kv = Signal(0.0, pt["skv"] ** 2, pt["rkv"])
    gs = Grad(pt["sg"] ** 2, pt["rg"])
    di = pt["d_in"]
    head = Attention(di, pt["d_k"], pt["L"], pt["mqk"] ** 2 / di, pt["mqk"] ** 2 / di,
                     pt["mv"] ** 2 / di, attn_dropout=pt["p"], q_len=pt["L_q"])
    return (_std_rows("x", m["y"], head.forward(xs, kv=kv))
            + _std_rows("g_q", m["gx"], head.backward(xs, gs, kv=kv))
            + _std_rows("g_kv", m["gz"], head.backward_kv(xs, gs, kv)))


def _torch_attention_block(pt: dict, dtype: Any) -> Any:
    """The library's PyTorch attention block (`deepscalelm.models.blocks.Attention`) of point ``pt``:
    d_model ``d``, ``H`` query heads, ``kv`` key/value heads, ``qk_norm`` ("none" or a norm),
    ``causal``; no biases, no dropout."""
    from ..config import ModelConfig
    from ..models.blocks import Attention as TorchAttention

    qk = None if pt["qk_norm"] == "none" else pt["qk_norm"]
    cfg = ModelConfig(arch="decoder", n_layers=1, d_model=pt["d"], n_heads=pt["H"], n_kv_heads=pt["kv"],
                      qk_norm=qk, seq_len=pt["L"], dropout=0.0, attn_dropout=0.0, bias=False)
    return TorchAttention(cfg, causal=pt["causal"]).to(dtype)


def _block_mc(pt: dict, gen: Any, dtype: Any) -> dict:
    """Monte Carlo of the PyTorch attention block: one fresh weight draw and one sequence per run
    (Q, K: std mqk/sqrt(d); V: mv/sqrt(d); O: mo/sqrt(d); norm gains 1, shifts 0)."""
    torch = _torch()
    runs, L, d = pt["runs"], pt["L"], pt["d"]
    blk = _torch_attention_block(pt, dtype)
    std = {"q": pt["mqk"], "k": pt["mqk"], "v": pt["mv"], "o": pt["mo"]}
    x = sample_field(runs, L, d, 0.0, pt["sx"], pt["rx"], gen, dtype)
    g = sample_field(runs, L, d, 0.0, pt["sg"], pt["rg"], gen, dtype)
    ys, gxs = [], []
    for r in range(runs):
        with torch.no_grad():
            for w, m in std.items():
                lin = getattr(blk, w)
                lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=dtype) * (m / math.sqrt(d)))
        xr = x[r:r + 1].clone().requires_grad_(True)
        y = blk.f(xr)
        (y * g[r:r + 1]).sum().backward()
        ys.append(y.detach())
        gxs.append(xr.grad)
    return {"y": measure(torch.cat(ys)), "gx": measure(torch.cat(gxs))}


def check_attention_block(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    """Multi-head attention block with grouped-query heads and QK-norm: the PyTorch block of the
    models against `deepscalelm.theory.blocks.AttentionBlock`, forward and backward."""
    from ..theory.blocks import AttentionBlock

    m = _block_mc(pt, gen, dtype)
    d = pt["d"]
    blk = AttentionBlock(d, pt["H"], pt["L"], pt["mqk"] ** 2 / d, pt["mqk"] ** 2 / d, pt["mv"] ** 2 / d,
                         pt["mo"] ** 2 / d, causal=pt["causal"], n_kv_heads=pt["kv"],
                         qk_norm=None if pt["qk_norm"] == "none" else pt["qk_norm"])
    xs = Signal(0.0, pt["sx"] ** 2, pt["rx"])
    gs = Grad(pt["sg"] ** 2, pt["rg"])
    return _std_rows("x", m["y"], blk.forward(xs)) + _std_rows("g", m["gx"], blk.backward(xs, gs))


def check_embedding(pt: dict, gen: Any, dtype: Any) -> list[Row]:
    """Forward moments of one embedding table with Zipf-distributed token ids (the paper's Zipf embedding
    correlation)."""
    from ..theory.components import Embedding

    torch = _torch()
    runs, L, d, vocab = pt["runs"], pt["L"], pt["d"], pt["vocab"]
    probs = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    ids = torch.multinomial(probs / probs.sum(), runs * L, replacement=True, generator=gen)
    table = torch.randn(runs, vocab, d, generator=gen, dtype=dtype) * math.sqrt(pt["w"])
    y = torch.gather(table, 1, ids.view(runs, L, 1).expand(runs, L, d))
    comp = Embedding(vocab, pt["w"], seq_len=L)
    return _std_rows("x", measure(y), comp.forward(None))


CHECKS: dict[str, Callable[[dict, Any, Any], list[Row]]] = {
    "linear": check_linear, "dropout": check_dropout, "relu": check_relu, "gelu": check_gelu,
    "silu": check_silu, "layernorm": check_layernorm, "rmsnorm": check_rmsnorm,
    "ffn_swiglu": check_ffn_swiglu, "ffn_geglu": check_ffn_geglu, "softmax": check_softmax,
    "attention": check_attention,
    "attention_causal": check_attention_causal, "cross_attention": check_cross_attention,
    "attention_rope": check_attention_rope, "attention_rope_causal": check_attention_rope_causal,
    "attention_block": check_attention_block, "embedding": check_embedding,
}


# ------------------------------------------------------------------------------------- grids
def _product(**lists: list) -> list[dict]:
    keys = list(lists)
    return [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(lists[k] for k in keys))]


def authors_grid(name: str) -> list[dict]:
    """The full grids of the paper's component-check protocol (``attention_causal``/``cross_attention``/``embedding``
    have no authors' grid; the bidirectional one, resp. a modest grid, is used)."""
    if name == "linear":
        return _product(mu=[0.1, 1, 10], sx=_S3, rx=_R3, mw=[0.1, 1, 10], sg=_S3, rg=_R3,
                        d_in=[100, 316, 1000], d_out=[100, 316, 1000], L=[100, 1000], runs=[100])
    if name in ("relu", "gelu", "silu"):
        return _product(sx=_S3, rx=_R5, sg=_S3, rg=_R5, d=[1], L=[100, 1000],
                        runs=[10000 if name == "relu" else 100000])
    if name == "rmsnorm":
        return _product(mu=[-10, 0, 3.333], sx=_S3, rx=_R5, sg=_S3, rg=_R5,
                        d=[100, 316, 1000], L=[100, 1000], runs=[100])
    if name in ("ffn_swiglu", "ffn_geglu"):
        return _product(sx=[0.5, 1.0, 2.0], rx=_R3, m1=_S3, m3=[1.0], m2=[1.0], p=[0.0, 1 / 3],
                        sg=[1.0], rg=_R3, d=[100, 316], d_ff=[256, 1000], L=[100], runs=[32])
    if name == "layernorm":
        return _product(mu=[-10, -3.333, 3.333], sx=_S3, rx=_R5, sg=_S3, rg=_R5,
                        d=[100, 316, 1000], L=[100, 1000], runs=[100])
    if name == "dropout":
        return _product(mu=[-10, 0, 10], sx=_S3, rx=_R3, sg=_S3, rg=_R3, p=_R3,
                        d=[100, 316, 1000], L=[100, 1000], runs=[100])
    if name == "softmax":
        return _product(sx=_SOFT_S, rx=_R5, sg=_SOFT_G, rg=[0.0], L=_SOFT_L, runs=[10000])
    if name in ("attention", "attention_causal"):
        return _product(sx=[1.0], rx=_R3, mv=_S3, mqk=[0.1, 0.2449, 0.6], p=_R3, sg=_S3, rg=_R3,
                        d_in=[100, 316, 1000], d_k=[32, 64, 128, 256], L=[300, 547, 1000],
                        runs=[64])
    if name in ("attention_rope", "attention_rope_causal"):   # no authors' grid: a modest one
        return _product(sx=[1.0], rx=[0.0, 0.3, 0.6, 0.9], mv=[1.0], mqk=[0.3, 0.6, 1.0], p=[0.0, 1 / 3],
                        sg=[1.0], rg=[0.0, 0.5], d_in=[128], d_k=[16, 32, 64], L=[16, 64, 128],
                        rope_base=[10000.0], runs=[256])
    if name == "cross_attention":
        return _product(sx=[1.0], skv=[0.5, 1.0, 2.0], rx=_R3, rkv=_R3, mv=_S3, mqk=[0.1, 0.6],
                        p=[0.0, 1 / 3], sg=[1.0], rg=_R3, d_in=[100, 316], d_k=[64], L=[300],
                        L_q=[100, 300], runs=[32])
    if name == "embedding":
        return _product(w=[0.1, 1.0], d=[64], L=[128, 512], vocab=[1000, 30522], runs=[64])
    if name == "attention_block":   # no authors' grid (GQA and QK-norm are not in the paper)
        return _product(d=[64, 128], H=[4], kv=[1, 2, 4], qk_norm=["none", "rmsnorm", "layernorm"],
                        causal=[False, True], L=[32, 128], sx=[1.0], rx=_R3, sg=[1.0], rg=_R3,
                        mqk=[0.5, 1.0], mv=[1.0], mo=[1.0], runs=[2000])
    raise ValueError(f"component must be one of {sorted(CHECKS)}, got {name!r}")


def quick_grid(name: str) -> list[dict]:
    """Reduced grids for ``dslm validate --quick`` (whole set well under 2 minutes on 2 cores)."""
    if name == "linear":
        return _product(mu=[0.1, 10], sx=[0.3162, 3.1623], rx=[0.0, 2 / 3], mw=[1.0], sg=[1.0],
                        rg=[0.0, 2 / 3], d_in=[64, 128], d_out=[64], L=[32], runs=[48])
    if name in ("relu", "gelu", "silu"):
        return _product(sx=_S3, rx=[0.0, 0.4, 0.8], sg=[1.0], rg=[0.0, 0.8], d=[64], L=[32],
                        runs=[128])
    if name == "rmsnorm":
        return _product(mu=[0.0, -10, 3.333], sx=[0.3162, 3.1623], rx=[0.0, 0.8], sg=[1.0],
                        rg=[0.0, 0.8], d=[64, 128], L=[32], runs=[48])
    if name in ("ffn_swiglu", "ffn_geglu"):
        return _product(sx=[1.0], rx=[0.0, 0.6], m1=[0.5, 1.0, 2.0], m3=[1.0], m2=[1.0],
                        p=[0.0, 1 / 3], sg=[1.0], rg=[0.0, 0.6], d=[64], d_ff=[192], L=[32], runs=[32])
    if name == "layernorm":
        return _product(mu=[-10, 3.333], sx=[3.1623], rx=[0.0, 0.4, 0.8], sg=[1.0],
                        rg=[0.0, 0.8], d=[64, 128], L=[32], runs=[48])
    if name == "dropout":
        return _product(mu=[-10, 0, 10], sx=[3.1623], rx=[0.0, 2 / 3], sg=[1.0],
                        rg=[0.0, 2 / 3], p=[0.0, 1 / 3, 2 / 3], d=[64], L=[32], runs=[48])
    if name == "softmax":
        return _product(sx=[0.1, 0.3162, 1.0], rx=[0.0, 0.4, 0.8], sg=[1.0], rg=[0.0],
                        L=[300, 1000], runs=[2000])
    if name in ("attention", "attention_causal"):
        return _product(sx=[1.0], rx=[0.0, 2 / 3], mv=[1.0], mqk=[0.2449, 1.0], p=[0.0, 1 / 3],
                        sg=[1.0], rg=[0.0, 2 / 3], d_in=[128], d_k=[32], L=[16, 64], runs=[96])
    if name in ("attention_rope", "attention_rope_causal"):
        return _product(sx=[1.0], rx=[0.0, 0.8], mv=[1.0], mqk=[0.6, 1.0], p=[0.0, 1 / 3],
                        sg=[1.0], rg=[0.0, 0.5], d_in=[128], d_k=[16, 64], L=[32], rope_base=[10000.0],
                        runs=[128])
    if name == "cross_attention":
        return _product(sx=[1.0], skv=[0.5, 2.0], rx=[0.0, 2 / 3], rkv=[0.0, 2 / 3], mv=[1.0],
                        mqk=[0.6], p=[0.0], sg=[1.0], rg=[0.0, 2 / 3], d_in=[128], d_k=[32],
                        L=[64], L_q=[32], runs=[64])
    if name == "attention_block":
        return _product(d=[64], H=[4], kv=[1, 2], qk_norm=["none", "rmsnorm", "layernorm"],
                        causal=[False, True], L=[32], sx=[1.0], rx=[0.4], sg=[1.0], rg=[0.0, 0.4],
                        mqk=[1.0], mv=[1.0], mo=[1.0], runs=[1000])
    if name == "embedding":
        return _product(w=[1.0], d=[32], L=[128], vocab=[1000, 30522], runs=[32])
    raise ValueError(f"component must be one of {sorted(CHECKS)}, got {name!r}")


# effective logit variances (1 - r) sigma_s^2 of the large-logit grid (beyond the closure's v <~ 2)
LOGIT_VARS = (2.56, 3.5, 6.5, 13.0, 20.0)
LOGIT_COMPONENTS = ("softmax", "attention", "attention_causal")


def logit_grid(name: str) -> list[dict]:
    """Large logit variance: v = (1 - r_x) sigma_s^2 in `LOGIT_VARS` at d 64 (attention: d_model =
    d_head = 64, L 16 and 64, input correlation 0 and 0.5, no dropout; softmax: L 300 and 1000).
    The attention multiplier m_qk sets sigma_s^2 = m_qk^4 sigma_x^4 (sigma_x = 1)."""
    if name not in LOGIT_COMPONENTS:
        raise ValueError(f"grid 'logit' covers {', '.join(LOGIT_COMPONENTS)}; got component {name!r}")
    pts = []
    for v in LOGIT_VARS:
        for rx in (0.0, 0.5):
            if name == "softmax":
                for L in (300, 1000):
                    pts.append(dict(sx=math.sqrt(v / (1.0 - rx)), rx=rx, sg=1.0, rg=0.0, L=L, runs=2000))
                continue
            for L in (16, 64):
                pts.append(dict(sx=1.0, rx=rx, mv=1.0, mqk=(v / (1.0 - rx)) ** 0.25, p=0.0, sg=1.0,
                                rg=0.0, d_in=64, d_k=64, L=L, runs=192, logit_var=v))
    return pts


def random_grid(name: str, n: int, seed: int) -> list[dict]:
    """``n`` independent random points from the authors' ranges (log-uniform scales, uniform
    correlations and dropout), with CPU-sized widths and lengths; ``seed`` fixes the draw."""
    if name not in CHECKS:
        raise ValueError(f"component must be one of {sorted(CHECKS)}, got {name!r}")
    rng = random.Random(f"{name}:{seed}")

    def logu(lo: float, hi: float) -> float:
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))

    pts = []
    for _ in range(n):
        base: dict[str, Any] = dict(sx=logu(0.3162, 3.1623), sg=logu(0.3162, 3.1623))
        if name == "linear":
            pt = dict(base, mu=rng.choice([-1, 1]) * logu(0.1, 10), rx=rng.uniform(0, 2 / 3),
                      mw=logu(0.1, 10), rg=rng.uniform(0, 2 / 3), d_in=rng.randint(64, 256),
                      d_out=rng.randint(64, 256), L=rng.randint(32, 128), runs=32)
        elif name in ("relu", "gelu", "silu"):
            pt = dict(base, rx=rng.uniform(0, 0.8), rg=rng.uniform(0, 0.8), d=64, L=64, runs=128)
        elif name == "rmsnorm":
            # half the points at mu = 0 (a residual stream), half with a mean up to 10 sigma-units
            mu = 0.0 if rng.random() < 0.5 else rng.uniform(-10, 10)
            pt = dict(base, mu=mu, rx=rng.uniform(0, 0.8), rg=rng.uniform(0, 0.8),
                      d=rng.randint(64, 256), L=64, runs=32)
        elif name in ("ffn_swiglu", "ffn_geglu"):
            pt = dict(base, sx=logu(0.5, 2.0), rx=rng.uniform(0, 0.8), m1=logu(0.3162, 3.1623),
                      m3=logu(0.5, 2.0), m2=logu(0.5, 2.0), p=rng.uniform(0, 1 / 3),
                      rg=rng.uniform(0, 0.8), d=rng.randint(64, 128), d_ff=rng.randint(128, 384),
                      L=32, runs=96)
        elif name == "layernorm":
            pt = dict(base, mu=rng.uniform(-10, 10), rx=rng.uniform(0, 0.8),
                      rg=rng.uniform(0, 0.8), d=rng.randint(64, 256), L=64, runs=32)
        elif name == "dropout":
            pt = dict(base, mu=rng.uniform(-10, 10), rx=rng.uniform(0, 2 / 3),
                      rg=rng.uniform(0, 2 / 3), p=rng.uniform(0, 2 / 3), d=128, L=64, runs=32)
        elif name == "softmax":
            pt = dict(base, sx=logu(0.01, 1.0), rx=rng.uniform(0, 0.8), rg=rng.uniform(0, 0.8),
                      L=rng.randint(300, 1000), runs=2000)
        elif name in ("attention", "attention_causal"):
            # q/k multiplier up to 1 (logit variance up to 1, the DSLM setting), beyond the
            # authors' 0.6
            pt = dict(base, sx=1.0, rx=rng.uniform(0, 2 / 3), mv=logu(0.3162, 3.1623),
                      mqk=rng.uniform(0.1, 1.0), p=rng.uniform(0, 2 / 3), rg=rng.uniform(0, 2 / 3),
                      d_in=rng.randint(64, 256), d_k=rng.choice([32, 64]),
                      L=rng.choice([16, 32, 64, 128]), runs=96)
        elif name in ("attention_rope", "attention_rope_causal"):
            # input correlations up to 0.9: rotation matters through r (docs/rope.md); 256 runs
            # keep the Monte-Carlo noise of the gradient variance near 1 %
            pt = dict(base, sx=1.0, rx=rng.uniform(0, 0.9), mv=logu(0.3162, 3.1623),
                      mqk=rng.uniform(0.1, 1.0), p=rng.uniform(0, 1 / 2), rg=rng.uniform(0, 2 / 3),
                      d_in=rng.randint(64, 192), d_k=rng.choice([16, 32, 64]),
                      L=rng.choice([16, 32, 64, 128]), rope_base=rng.choice([100.0, 10000.0, 500000.0]),
                      runs=256)
        elif name == "cross_attention":
            pt = dict(base, sx=1.0, skv=logu(0.5, 2.0), rx=rng.uniform(0, 2 / 3),
                      rkv=rng.uniform(0, 2 / 3), mv=logu(0.3162, 3.1623), mqk=rng.uniform(0.1, 0.6),
                      p=rng.uniform(0, 1 / 3), rg=rng.uniform(0, 2 / 3), d_in=rng.randint(64, 256),
                      d_k=32, L=rng.choice([32, 64]), L_q=rng.choice([16, 32, 64]), runs=96)
        elif name == "attention_block":
            # multi-head block of the models: grouped-query heads and QK-norm; q/k multiplier up
            # to 1 without QK-norm (logit variance <= 1), any with it (the norm fixes the logits);
            # d_head 16-64 (QK-norm at d_head 8 is a known miss, docs/theory.md)
            qk = rng.choice(["none", "rmsnorm", "layernorm"])
            d = rng.choice([64, 128])
            h = rng.choice([2, 4] if d == 64 else [2, 4, 8])
            pt = dict(base, sx=1.0, sg=1.0, d=d, H=h,
                      kv=rng.choice([k for k in (1, 2, 4, 8) if h % k == 0]), qk_norm=qk,
                      causal=rng.random() < 0.5, L=rng.choice([16, 32, 64]), rx=rng.uniform(0, 2 / 3),
                      rg=rng.uniform(0, 2 / 3), mqk=rng.uniform(0.1, 1.0) if qk == "none" else logu(0.3, 3.0),
                      mv=logu(0.5, 2.0), mo=logu(0.5, 2.0), runs=1000)
        else:  # embedding
            pt = dict(w=logu(0.1, 10), d=32, L=rng.choice([64, 128]),
                      vocab=rng.choice([500, 5000, 30522]), runs=32)
        pts.append(pt)
    return pts


__all__ = ["CHECKS", "authors_grid", "quick_grid", "random_grid", "logit_grid", "LOGIT_VARS", "LOGIT_COMPONENTS"]
