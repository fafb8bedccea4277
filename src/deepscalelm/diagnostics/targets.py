"""Which modules of a model carry the residual stream and which compute attention.

`resolve_targets(model, streams, attention, preset)` turns user input (module names, globs or a
preset) into `StreamPoint`s (modules whose output [B, L, d] is the residual stream, in forward order)
and `AttentionSpec`s (where to read projected queries and keys). A preset is an entry of the
structure registry (`deepscalelm.structure`): ``"dslm"`` for deepscalelm models, else a registered
family (``gpt2``, ``bert``, ``roberta``, ``llama``, ``mistral``, ``qwen2``, ``qwen3`` and any
``deepscalelm.register``-ed model); stream points are the structure's sites, attention modules the
parents of its q (or fused qkv) projections. Globs match dotted module names;
``*`` matches one name component (``transformer.h.*`` matches ``transformer.h.7`` but not
``transformer.h.7.attn``), ``**`` any number of components.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from ..errors import DSLMError
from ..structure import Resolved, Structure, _is_ours, detect, own_structure, registered, resolve, structure_for

__all__ = ["StreamPoint", "AttentionSpec", "PRESETS", "resolve_targets", "match_names"]

_DSLM_DOC = "deepscalelm models (build_model): embedding dropout, every attn/cross/ffn block, ln_f"


def _preset_doc(st: Structure) -> str:
    proj = f"fused {st.qkv} split into q, k, v" if st.qkv else f"q/k {st.q}/{st.k}"
    bases = " or ".join(repr(b + st.blocks + ".*") for b in st.bases)
    final = f", final norm {st.final_norm}" if st.final_norm else ""
    return (f"layers {bases} ({proj}{', rotary' if st.rotary else ''}){final}; "
            f"{'causal' if st.causal else 'bidirectional'}")


#: preset name -> {"doc": description}: "dslm" and every built-in registry family (see `resolve_targets`)
PRESETS: dict[str, dict[str, Any]] = {"dslm": {"doc": _DSLM_DOC},
                                      **{st.family: {"doc": _preset_doc(st)} for st in registered()}}

_Q_NAMES = ("q", "q_proj", "query", "wq", "q_lin")
_K_NAMES = ("k", "k_proj", "key", "wk", "k_lin")
_FUSED_NAMES = ("c_attn", "qkv", "qkv_proj", "Wqkv", "in_proj")
_HEAD_ATTRS = ("n_heads", "num_heads", "n_head", "num_attention_heads")
_KV_ATTRS = ("n_kv_heads", "num_key_value_heads", "num_kv_heads")


@dataclass(frozen=True)
class StreamPoint:
    """A module whose output (first tensor of it) is the residual stream ``[B, L, d]``.

    ``stack``/``layer``/``block`` follow `deepscalelm.records` (block ``"layer"`` for a whole
    transformer layer of a foreign model).
    """

    name: str
    stack: str
    layer: int
    block: str


@dataclass(frozen=True)
class AttentionSpec:
    """Where the q/k projections of one attention module are read.

    Either ``q`` and ``k`` (module names whose outputs are [B, L, heads*dh]) or ``fused`` (one module
    whose output [B, L, 3*d] is [q | k | v]). ``rotary``: take (cos, sin) from the attention module's
    ``position_embeddings`` argument (Hugging Face Llama) and rotate q and k before the product.
    ``q_norm``/``k_norm``: modules applied by the attention to the projected q/k before rotary
    positions (Qwen3's per-head QK-norm, RMSNorm over head_dim); their outputs ([B, L, heads, dh] or
    [B, L, heads*dh]) are read instead of the projections'. ``unsupported``: why the logits of this
    module cannot be reproduced (no statistics are computed; the report carries a warning instead).
    """

    name: str
    n_heads: int
    n_kv_heads: int
    causal: bool
    q: str | None = None
    k: str | None = None
    fused: str | None = None
    rotary: bool = False
    scale: float | None = None
    q_norm: str | None = None
    k_norm: str | None = None
    unsupported: str | None = None


#: child names of a per-head q/k norm inside an attention module (Hugging Face Qwen3, OLMo2, Gemma3)
_QK_NORM_NAMES = ("q_norm", "k_norm")


def _qk_norm(name: str, module: nn.Module) -> dict[str, Any]:
    """AttentionSpec fields for the q/k norm of attention ``module`` (named ``name``): the norm
    module names when it has both as modules, an ``unsupported`` reason when it has only one or they
    are not modules (their application cannot be reproduced), nothing when it has none."""
    found = {a: getattr(module, a, None) for a in _QK_NORM_NAMES}
    if all(v is None for v in found.values()):
        return {}
    if all(isinstance(v, nn.Module) for v in found.values()):
        return {"q_norm": f"{name}.q_norm", "k_norm": f"{name}.k_norm"}
    kinds = ", ".join(f"{a}={type(v).__name__}" for a, v in found.items())
    return {"unsupported": f"attention {name!r} normalises q/k ({kinds}) in a way the logit statistics cannot "
                           "reproduce; its logit variance and entropy are not reported"}


def _glob_regex(pattern: str) -> re.Pattern:
    out = []
    for part in re.split(r"(\*\*|\*|\?)", pattern):
        out.append({"**": ".*", "*": "[^.]+", "?": "[^.]"}.get(part, re.escape(part)))
    return re.compile("".join(out) + r"\Z")


def _suggest(name: str, available: Sequence[str]) -> str:
    probe = name.replace("**", "0").replace("*", "0").replace("?", "0")
    close = difflib.get_close_matches(probe, available, n=5, cutoff=0.4)
    if close:
        return "closest module names: " + ", ".join(close)
    shown = [a for a in available if a.count(".") <= 2][:15]
    return f"module names include: {', '.join(shown)}" + (" ..." if len(available) > len(shown) else "")


def match_names(model: nn.Module, spec: str | Sequence[str], what: str) -> list[str]:
    """Module names of ``model`` named by ``spec`` (a name, a glob or a list of them), in model order.

    Raises `DSLMError` listing the closest available names when a name or glob matches nothing.
    """
    names = [n for n, _ in model.named_modules() if n]
    items = [spec] if isinstance(spec, str) else list(spec)
    if not items:
        raise ValueError(f"{what}: empty list of module names")
    chosen: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what}: module names must be strings, got {item!r}")
        if any(c in item for c in "*?"):
            rx = _glob_regex(item)
            hits = [n for n in names if rx.match(n)]
            if not hits:
                raise DSLMError(f"{what}: pattern {item!r} matches no module of {type(model).__name__}; "
                                f"{_suggest(item, names)}")
            chosen.extend(h for h in hits if h not in chosen)
        else:
            if item not in names:
                raise DSLMError(f"{what}: {type(model).__name__} has no module {item!r}; {_suggest(item, names)}")
            if item not in chosen:
                chosen.append(item)
    order = {n: i for i, n in enumerate(names)}
    return sorted(chosen, key=order.__getitem__)


def _config_attr(model: nn.Module, module: nn.Module, attrs: Sequence[str]) -> int | None:
    for obj in (module, getattr(model, "config", None)):
        for a in attrs:
            v = getattr(obj, a, None) if obj is not None else None
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def _our_attention(name: str, mod: nn.Module, causal: bool) -> AttentionSpec:
    """The logits' queries/keys of a deepscalelm attention block: the outputs of ``q_post``/``k_post``
    (after the per-head q/k norm and rotary positions) when the block has them, else of ``q``/``k``;
    grouped-query blocks have ``n_kv_heads`` key heads."""
    post = getattr(mod, "q_post", None) is not None
    q, k = (f"{name}.q_post", f"{name}.k_post") if post else (f"{name}.q", f"{name}.k")
    att: Any = mod  # a deepscalelm attention block: .n_heads (int) and, grouped-query, .n_kv_heads
    return AttentionSpec(name, att.n_heads, getattr(att, "n_kv_heads", att.n_heads), causal, q=q, k=k)


def _ours(model: nn.Module) -> tuple[list[StreamPoint], list[AttentionSpec]]:
    """Stream points and attention of a deepscalelm model, keyed like `deepscalelm.predict`
    (the registry's sites of every stack; attention in each attn / cross residual block)."""
    mods = dict(model.named_modules())
    points: list[StreamPoint] = []
    attns: list[AttentionSpec] = []
    for res in own_structure(model):
        points.extend(StreamPoint(site.name, site.stack, site.layer, site.block) for site in res.sites)
        for layer in res.layers:
            for block, name, _branch in layer.residuals:
                if block in ("attn", "cross_attn"):
                    mod = mods[name]
                    attns.append(_our_attention(name, mod, causal=bool(mod.causal) and block == "attn"))
    return points, attns


def _foreign(model: nn.Module, res: Resolved, preset: str) -> tuple[list[StreamPoint], list[AttentionSpec]]:
    """Stream points (the structure's sites) and attention (parents of the q / fused qkv projections)."""
    st = res.structure
    mods = dict(model.named_modules())
    points = [StreamPoint(site.name, site.stack, site.layer, site.block) for site in res.sites]
    attns = []
    for layer in res.layers:
        a = res.attention(layer)
        if a is None:
            continue
        heads = _config_attr(model, mods[a], _HEAD_ATTRS)
        if heads is None:
            raise DSLMError(f"preset {preset!r}: cannot find the number of heads of {a!r}")
        if "qkv" in layer.parts:
            attns.append(AttentionSpec(a, heads, heads, st.causal, fused=layer.parts["qkv"]))
        else:
            kv = _config_attr(model, mods[a], _KV_ATTRS) or heads
            attns.append(AttentionSpec(a, heads, kv, st.causal, q=layer.parts["q"], k=layer.parts["k"],
                                       rotary=st.rotary, **_qk_norm(a, mods[a])))
    return points, attns


def _check_spec_norm(model: nn.Module, spec: AttentionSpec) -> AttentionSpec:
    """``spec`` marked unsupported when its attention module has a q/k norm the spec does not name
    (the projections' outputs are not what the logits are made of)."""
    if spec.q_norm is not None or spec.unsupported is not None:
        return spec
    found = _qk_norm(spec.name, dict(model.named_modules())[spec.name])
    if not found:
        return spec
    why = found.get("unsupported") or (f"attention {spec.name!r} has q_norm/k_norm modules that the given "
                                       "AttentionSpec does not name (set q_norm= and k_norm=)")
    return replace(spec, unsupported=why)


def _auto_attention(model: nn.Module, name: str, causal: bool | None) -> AttentionSpec:
    mods = dict(model.named_modules())
    module = mods[name]
    children = dict(module.named_children())
    n_heads = _config_attr(model, module, _HEAD_ATTRS)
    if n_heads is None:
        raise DSLMError(f"attention module {name!r}: cannot find the number of heads (looked for "
                        f"{', '.join(_HEAD_ATTRS)} on the module and model.config)")
    n_kv = _config_attr(model, module, _KV_ATTRS) or n_heads
    if causal is None:
        causal = bool(getattr(module, "is_causal", getattr(module, "causal", False)))
    q = next((c for c in _Q_NAMES if c in children), None)
    k = next((c for c in _K_NAMES if c in children), None)
    if q and k:
        return AttentionSpec(name, n_heads, n_kv, causal, q=f"{name}.{q}", k=f"{name}.{k}",
                             **_qk_norm(name, module))
    fused = next((c for c in _FUSED_NAMES if c in children), None)
    if fused:
        return AttentionSpec(name, n_heads, n_heads, causal, fused=f"{name}.{fused}")
    raise DSLMError(f"attention module {name!r} has no q/k projection children (looked for "
                    f"{'/'.join(_Q_NAMES)} and {'/'.join(_K_NAMES)}, or a fused {'/'.join(_FUSED_NAMES)}); "
                    f"its children are: {', '.join(children) or 'none'}")


def _preset(model: nn.Module, preset: str) -> tuple[list[StreamPoint], list[AttentionSpec]] | None:
    """The targets of registry entry ``preset`` on ``model``; None when its layout does not match."""
    if preset == "dslm":
        if not _is_ours(model):
            raise DSLMError(f"preset 'dslm' needs a deepscalelm model (build_model), got {type(model).__name__}")
        return _ours(model)
    st = structure_for(preset)
    if st is None:
        return None
    try:
        res = resolve(model, st)
    except DSLMError:
        return None
    return _foreign(model, res, preset)


def _auto(model: nn.Module) -> tuple[tuple[list[StreamPoint], list[AttentionSpec]] | None, str]:
    """Targets from the registry (`deepscalelm.structure.detect`): the model's own entry, else the
    first registered layout that fits; (None, "custom") when none does."""
    if _is_ours(model):
        return _ours(model), "dslm"
    try:
        res = detect(model)
    except DSLMError:
        return None, "custom"
    return _foreign(model, res, res.structure.family), res.structure.family


def _check_preset(preset: str | None) -> None:
    if preset is not None and preset not in PRESETS and structure_for(preset) is None:
        names = list(PRESETS) + [st.family for st in registered() if st.family not in PRESETS]
        raise ValueError(f"unknown preset {preset!r}; presets: {', '.join(names)}")


def resolve_targets(model: nn.Module, streams: str | Sequence[str] | None = None,
                    attention: str | Sequence[str] | Sequence[AttentionSpec] | None = None,
                    preset: str | None = None, causal: bool | None = None,
                    ) -> tuple[list[StreamPoint], list[AttentionSpec], str]:
    """(stream points, attention specs, preset used or "custom").

    With neither ``streams`` nor ``preset``: a deepscalelm model uses ``"dslm"``; otherwise the
    model's own registry entry (by registration, class or ``config.model_type``), else the first
    registered layout that fits (gpt2, bert, roberta, llama, ...); the preset used is that family.
    ``attention``: module names/globs of attention modules (q/k children found by name, see
    `AttentionSpec`), explicit `AttentionSpec`s, or None (the preset's; none for custom streams).
    ``causal`` applies to named attention modules.
    """
    _check_preset(preset)
    used = "custom"
    points: list[StreamPoint]
    attns: list[AttentionSpec] = []
    if streams is not None:
        names = match_names(model, streams, "streams")
        points = [StreamPoint(n, "", i + 1, "layer") for i, n in enumerate(names)]
        if preset is not None:
            found = _preset(model, preset)
            attns = found[1] if found else []
            used = preset
    else:
        if preset is not None:
            found, used = _preset(model, preset), preset
        else:
            found, used = _auto(model)
        if found is None:
            names = [n for n, _ in model.named_modules() if n]
            raise DSLMError(
                f"cannot tell which modules of {type(model).__name__} carry the residual stream "
                f"({'preset ' + repr(preset) + ' does not match' if preset else 'no preset matches'}); "
                f"pass streams= (names or a glob such as 'blocks.*'); {_suggest('layers.0', names)}")
        points, attns = found
    if attention is not None:
        items: list[Any] = [attention] if isinstance(attention, (str, AttentionSpec)) else list(attention)
        if items and all(isinstance(a, AttentionSpec) for a in items):
            attns = list(items)
            mods = {n for n, _ in model.named_modules()}
            for a in attns:
                for sub in (a.name, a.q, a.k, a.fused, a.q_norm, a.k_norm):
                    if sub is not None and sub not in mods:
                        raise DSLMError(f"attention spec names module {sub!r}, which {type(model).__name__} "
                                        f"lacks; {_suggest(sub, sorted(mods))}")
            attns = [_check_spec_norm(model, a) for a in attns]
        else:
            attns = [_auto_attention(model, n, causal) for n in match_names(model, items, "attention")]
    if not points:
        raise DSLMError("no residual-stream modules selected")
    return points, attns, used
