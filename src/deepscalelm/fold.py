"""`apply`: re-initialise any registered model from a scheme, with the residual scaling folded in.

A scheme (`deepscalelm.theory.schemes`) gives every weight a variance and every residual merge a
``(lam, beta)``. Stock models (Hugging Face GPT-2, BERT, ...) have no place for ``lam`` and ``beta``,
so `apply` folds them into the weights, which keeps the model the same class and its checkpoint
stock:

* Pre-norm, x_{j+1} = lam_j x_j + beta_j F_j(norm(x_j)) over the residual blocks j = 0, 1, ... (attention
  and MLP each one block). With c_0 = 1, c_{j+1} = c_j lam_j and y_j = x_j / c_j,
  y_{j+1} = y_j + (beta_j / c_{j+1}) F_j(norm(y_j)) because norm(c x) = norm(x): block j's output
  projection (weight and bias) is multiplied by beta_j / c_{j+1} (beta / lam^(j+1) for constant merges),
  and the final norm removes the overall scale 1/c_N of the stream.
* Post-norm, x_{j+1} = norm(lam x_j + beta F(x_j)) = norm(x_j + (beta/lam) F(x_j)): the output
  projection carries beta_j / lam_j.
* A tied LM head's ``head_scale`` goes into the gain of the norm just before it (the final norm;
  BERT's MLM-transform norm); BERT's embedding norm gets gain sqrt(sum of the embedding tables'
  variances), so its output has the variance of the summed embedding the theory assumes.

Both identities are exact up to the norm's epsilon: norm(c x) = norm(x) holds for
eps = 0; with eps > 0 the relative change is about eps (1/c^2 - 1) / (2 var(x)).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from .config import ModelConfig
from .errors import DSLMError
from .structure import Resolved, Structure, find_structure, resolve
from .theory.schemes import Scheme, get_scheme

__all__ = ["apply", "SCHEME_OPTIONS", "fold_factors", "stream_scales", "config_of"]

#: scheme -> the ModelConfig fields `apply` accepts as scheme options for it
SCHEME_OPTIONS: dict[str, tuple[str, ...]] = {
    "dslm": ("k", "alpha", "depth_unit", "r0", "corr_schedule", "same_token_prob", "seq_len"),
    "normal": ("std",), "gpt2": ("std",), "xavier": (), "deepnet": (),
}


def _check_options(scheme: str, options: dict[str, Any]) -> None:
    if scheme not in SCHEME_OPTIONS:
        raise ValueError(f"scheme must be one of {', '.join(SCHEME_OPTIONS)}, got {scheme!r}")
    bad = sorted(set(options) - set(SCHEME_OPTIONS[scheme]))
    if bad:
        allowed = ", ".join(SCHEME_OPTIONS[scheme]) or "none"
        raise ValueError(f"scheme option(s) {bad} do not apply to scheme {scheme!r}; its options: {allowed}")


def config_of(model: nn.Module, scheme: str, config: ModelConfig | None = None, **options: Any) -> ModelConfig:
    """The `ModelConfig` of ``model`` with ``scheme`` and its options (ValueError if not covered)."""
    _check_options(scheme, options)
    if config is not None:
        if not isinstance(config, ModelConfig):
            raise ValueError(f"config must be a deepscalelm.ModelConfig, got {type(config).__name__}")
        return config.replace(scheme=scheme, **options)
    hf = getattr(model, "config", None)
    if hf is None or getattr(hf, "model_type", None) is None:
        raise DSLMError(f"{type(model).__name__} has no Hugging Face config: pass config=deepscalelm.ModelConfig"
                        "(...) describing its sizes, norm placement and dropout")
    return ModelConfig.from_hf(hf, scheme=scheme, **options)


# ----------------------------------------------------------------------------------- the plan
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("Norm", "RMSNorm"))


def _is_conv1d(module: nn.Module) -> bool:
    """Hugging Face's Conv1D (GPT-2): weight [in, out], y = x W + b."""
    return type(module).__name__ == "Conv1D"


def _fan_in(module: nn.Module) -> int:
    w: Any = module.weight  # a Linear's or Conv1D's weight tensor
    return int(w.shape[0] if _is_conv1d(module) else w.shape[1])


def _default_plan(model: nn.Module) -> dict[str, tuple]:
    """Every parameter's init: norms (1, 0), linear layers N(0, 1/fan_in) with bias 0."""
    plan: dict[str, tuple] = {}
    for mname, module in model.named_modules():
        prefix = f"{mname}." if mname else ""
        for pname, _p in module.named_parameters(recurse=False):
            full = prefix + pname
            if _is_norm(module):
                plan[full] = ("fill", 1.0 if pname == "weight" else 0.0)
            elif pname == "bias":
                plan[full] = ("fill", 0.0)
            elif pname == "weight" and (isinstance(module, nn.Linear) or _is_conv1d(module)):
                plan[full] = ("normal", 1.0 / _fan_in(module))
    return plan


_SCHEME_WEIGHT = {"q": "attn.q", "k": "attn.k", "v": "attn.v", "attn_out": "attn.o", "mlp_in": "ffn.fc1",
                  "mlp_out": "ffn.fc2"}


def _plan(model: nn.Module, res: Resolved, scheme: Scheme) -> dict[str, tuple]:
    plan = _default_plan(model)
    # a gated MLP out = down(act(gate(x)) * up(x)): the scheme's fc1 is the gate, fc3 the up projection
    roles = {**_SCHEME_WEIGHT, "mlp_gate": "ffn.fc1", "mlp_in": "ffn.fc3"} if res.structure.mlp_gate else _SCHEME_WEIGHT
    for layer in res.layers:
        for role, full in layer.parts.items():
            if role in roles:
                plan[f"{full}.weight"] = ("normal", scheme.var(f"layers.{layer.index}.{roles[role]}.weight"))
            elif role == "qkv":
                plan[f"{full}.weight"] = ("qkv", tuple(scheme.var(f"layers.{layer.index}.attn.{w}.weight")
                                                       for w in "qkv"))
    emb = {"tok_emb": "tok_emb.weight", "pos_emb": "pos_emb.weight", "type_emb": "type_emb.weight"}
    for role, name in emb.items():
        if role in res.parts:
            plan[f"{res.parts[role]}.weight"] = ("normal", scheme.var(name))
    if "head_dense" in res.parts:
        plan[f"{res.parts['head_dense']}.weight"] = ("normal", scheme.var("mlm_dense.weight"))
    if "head" in res.parts and not _tied(model, res):
        plan[f"{res.parts['head']}.weight"] = ("normal", scheme.var("head.weight"))
    unknown = [n for n, _ in model.named_parameters() if n not in plan]
    if unknown:
        raise DSLMError(f"{res.structure.family}: apply does not know how to initialise {unknown[:4]} "
                        f"({type(model).__name__}); describe them with deepscalelm.register (docs/hf.md)")
    return plan


def _tied(model: nn.Module, res: Resolved) -> bool:
    mods = dict(model.named_modules())
    if "head" not in res.parts or "tok_emb" not in res.parts:
        return False
    return mods[res.parts["head"]].weight is mods[res.parts["tok_emb"]].weight


def _draw(p: torch.Tensor, var: float, gen: torch.Generator) -> torch.Tensor:
    """N(0, var) of p's shape, drawn in float32 on the generator's device (deterministic per seed)."""
    return torch.randn(p.shape, generator=gen, device=gen.device, dtype=torch.float32).mul_(math.sqrt(var))


@torch.no_grad()
def _initialise(model: nn.Module, res: Resolved, scheme: Scheme, seed: int) -> None:
    """Every parameter from ``scheme`` (no residual folding), drawn in named_parameters() order."""
    plan = _plan(model, res, scheme)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    mods = dict(model.named_modules())
    for name, p in model.named_parameters():
        kind, value = plan[name]
        if kind == "fill":
            p.fill_(value)
            continue
        if kind == "normal":
            p.copy_(_draw(p, value, gen))
        else:  # fused [q | k | v]: each third of the output dimension with its own variance
            owner = mods[name.rsplit(".", 1)[0]]
            dim = 1 if _is_conv1d(owner) else 0
            for part, var in zip(p.chunk(3, dim=dim), value, strict=True):
                part.copy_(_draw(part, var, gen))
        owner = mods[name.rsplit(".", 1)[0]] if "." in name else model
        pad = getattr(owner, "padding_idx", None)
        if isinstance(owner, nn.Embedding) and pad is not None:
            p[pad].zero_()  # as Hugging Face does: the padding row stays zero


# ------------------------------------------------------------------------------------ folding
def _blocks(res: Resolved) -> list[tuple[str, str]]:
    """(scheme merge name, output-projection module) of every residual block, in forward order."""
    out = []
    for layer in res.layers:
        out.append((f"layers.{layer.index}.attn", layer.parts["attn_out"]))
        out.append((f"layers.{layer.index}.ffn", layer.parts["mlp_out"]))
    return out


def fold_factors(res: Resolved, scheme: Scheme) -> list[float]:
    """Multiplier of each block's output projection (see module docstring), in forward order."""
    factors, c = [], 1.0
    for merge, _module in _blocks(res):
        lam, beta = scheme.merge(merge)
        if res.structure.norm == "pre":
            c *= lam
            factors.append(beta / c)
        else:
            factors.append(beta / lam)
    return factors


def stream_scales(res: Resolved, scheme: Scheme) -> list[float]:
    """c_j of the folded model's stream after each block (Pre-LN: y_j = x_j / c_j; Post-LN: 1)."""
    out, c = [], 1.0
    for merge, _module in _blocks(res):
        if res.structure.norm == "pre":
            c *= scheme.merge(merge)[0]
        out.append(c)
    return out


@torch.no_grad()
def _fold(model: nn.Module, res: Resolved, scheme: Scheme) -> None:
    mods = dict(model.named_modules())
    for (_merge, module), f in zip(_blocks(res), fold_factors(res, scheme), strict=True):
        m = mods[module]
        m.weight.mul_(f)
        if getattr(m, "bias", None) is not None:
            m.bias.mul_(f)
    head_scale = float(scheme.scales.get("head_scale", 1.0))
    if _tied(model, res):
        norm = res.parts.get("head_norm") or res.parts.get("final_norm")
        if norm is None:
            raise DSLMError(f"{res.structure.family}: a tied head needs a norm before it to carry head_scale")
        mods[norm].weight.fill_(head_scale)
    if "emb_norm" in res.parts:
        total = sum(scheme.var(f"{r}.weight") for r in ("tok_emb", "pos_emb", "type_emb") if r in res.parts)
        mods[res.parts["emb_norm"]].weight.fill_(math.sqrt(total))


# ----------------------------------------------------------------------------------- the API
def _has_meta(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _materialise(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """A model with real storage: meta models are rebuilt (Hugging Face) or emptied onto ``device``."""
    if not _has_meta(model):
        return model
    device = torch.device("cpu" if device is None else device)
    if hasattr(model, "config") and hasattr(type(model), "from_pretrained"):
        try:
            from transformers.initialization import no_init_weights
        except ImportError:  # transformers 4.x
            from transformers.modeling_utils import no_init_weights  # type: ignore[attr-defined, no-redef]
        with no_init_weights(), torch.device(device):
            fresh: Any = type(model)(model.config)
        if hasattr(fresh, "tie_weights"):  # construction under no_init_weights may leave heads untied
            fresh.tie_weights()
        return fresh
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    if meta_buffers:
        raise DSLMError(f"{type(model).__name__} is on the meta device with buffers {meta_buffers[:3]} whose "
                        "values apply cannot recreate: build it on a real device (or to_empty and fill them)")
    return model.to_empty(device=device)


def _check_sizes(model: nn.Module, res: Resolved, config: ModelConfig) -> None:
    if len(res.layers) != config.n_layers:
        raise ValueError(f"config n_layers={config.n_layers} but {type(model).__name__} has {len(res.layers)} "
                         f"layers under {res.structure.blocks!r}")
    if config.norm != res.structure.norm:
        raise ValueError(f"config norm={config.norm!r} but the {res.structure.family} structure is "
                         f"{res.structure.norm}-norm")
    tok = res.parts.get("tok_emb")
    if tok is not None:
        shape = tuple(dict(model.named_modules())[tok].weight.shape)
        if shape != (config.vocab_size, config.d_model):
            raise ValueError(f"config (vocab_size, d_model)=({config.vocab_size}, {config.d_model}) but {tok} "
                             f"has shape {shape}")


def _apply_own(model: nn.Module, scheme: str, seed: int, config: ModelConfig | None,
               options: dict[str, Any], device: Any) -> nn.Module:
    from .models.init import apply_scheme

    _check_options(scheme, options)
    ours: Any = model  # a deepscalelm model, whose .config is its ModelConfig
    cfg = (config or ours.config).replace(scheme=scheme, **options)
    if _has_meta(model):
        model.to_empty(device=torch.device("cpu" if device is None else device))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        apply_scheme(model, get_scheme(cfg))
    model.config = cfg
    return model


def apply(model: nn.Module, scheme: str = "dslm", *, seed: int = 0, config: ModelConfig | None = None,
          device: torch.device | str | None = None, **scheme_options: Any) -> nn.Module:
    """Re-initialise ``model`` from ``scheme`` and fold its residual scaling in; returns the model.

    * ``model``: a deepscalelm model, a Hugging Face model of a registered family (GPT-2, BERT,
      RoBERTa, Llama, Mistral, Qwen2, Qwen3) or any module described with `deepscalelm.register`
      (then pass ``config``). A gated MLP's gate, up and down projections get the scheme's fc1,
      fc3 and fc2 variances.
    * ``scheme``: ``"dslm"`` (default), ``"xavier"``, ``"normal"``, ``"gpt2"`` or ``"deepnet"``
      (Post-LN only); ``scheme_options``: its `ModelConfig` fields (`SCHEME_OPTIONS`), e.g. ``k``.
    * ``seed``: every weight is drawn afresh from a generator seeded with it, so applying twice gives
      the same weights as applying once, whatever the model held before.
    * ``config``: the `ModelConfig` of a model without a Hugging Face config (sizes, norm, dropout).
    * ``device``: where a meta-device model is materialised (default CPU). A Hugging Face model on
      the meta device is rebuilt from its config, so the returned object is a new model.

    The result is the same class as ``model``: Hugging Face models save with ``save_pretrained`` and
    reload with stock ``from_pretrained``; the applied scheme is recorded in ``model.config`` as
    ``deepscalelm_scheme`` (a plain dict, ignored by transformers).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(scheme, str):
        raise ValueError(f"scheme must be a scheme name ({', '.join(SCHEME_OPTIONS)}), got {type(scheme).__name__}")
    structure: Structure = find_structure(model)
    if structure.own:
        return _apply_own(model, scheme, seed, config, scheme_options, device)
    cfg = config_of(model, scheme, config, **scheme_options)
    model = _materialise(model, device)
    res = resolve(model, structure)
    _check_sizes(model, res, cfg)
    if "head" in res.parts and cfg.tie_embeddings != _tied(model, res):
        cfg = cfg.replace(tie_embeddings=_tied(model, res))  # the module's tying wins over its config
    sch = get_scheme(cfg)
    _initialise(model, res, sch, seed)
    _fold(model, res, sch)
    hf = getattr(model, "config", None)
    if hf is not None and not isinstance(hf, ModelConfig):
        with contextlib.suppress(AttributeError, TypeError):
            hf.deepscalelm_scheme = {"scheme": scheme, "seed": int(seed), "options": dict(scheme_options)}
    return model
