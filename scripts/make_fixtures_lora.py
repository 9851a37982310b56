#!/usr/bin/env python3
"""Build the LoRA / X-LoRA reference fixtures under tests/fixtures/lora/ from Hugging Face PEFT.

    /work/refenv/bin/python scripts/make_fixtures_lora.py                 # everything
    /work/refenv/bin/python scripts/make_fixtures_lora.py llama qwen2     # some base architectures only
    /work/refenv/bin/python scripts/make_fixtures_lora.py --no-xlora      # skip the X-LoRA folders
    /work/refenv/bin/python scripts/make_fixtures_lora.py gemma phi2 --no-xlora   # how gemma/phi2 were added

Bases: llama mistral phi3 qwen2 gemma phi2 (X-LoRA: llama, qwen2).  tests/fixtures/lora/README.md is only
rewritten by a full run (every base, X-LoRA included); a partial run leaves it as it is.

Versions used: torch 2.15.0 (CPU, f32, 1 thread, deterministic algorithms), transformers 5.23.0, peft 0.21.2,
safetensors 0.8, gguf 0.19.0, numpy 2.4.  Deterministic: fixed seeds, target_modules sorted in the written
adapter_config.json files (PEFT writes a Python set in hash order), compact JSON.  CI never runs this script.

It reads the tiny random base models and their references written by scripts/make_fixtures.py (llama-tiny) and
scripts/make_fixtures_archs.py (mistral/phi3/qwen2/gemma/phi2-tiny) and never copies base weights.  GGUF bases:
transformers' GGUF loader (llama, mistral, phi3, qwen2); transformers cannot load GGUF `gemma` (v1) or `phi2`, so
for those the GGUF is dequantized with the `gguf` package and mapped back to safetensors names exactly as
make_fixtures_archs.py recorded their base references (A.read_gguf / A.from_gguf / A.model_from_sd; gemma: - 1 on
the norm weights; phi2: the Q8_0 file's fused attn_qkv split into q_proj/k_proj/v_proj rows, the F32 file has
separate attn_q/k/v), so every reference is in terms of the HF modules.  Written files (see
tests/fixtures/lora/README.md for the full description and JSON schema):

  tests/fixtures/lora/<arch>/adapters/{attn,mlp,all}/   PEFT LoRA adapters (save_pretrained: adapter_config.json +
                                                         adapter_model.safetensors), init_lora_weights=False,
                                                         A/B drawn from a fixed torch.Generator seed
        attn: r=4 lora_alpha=8 (scaling 2), attention projections q/k/v/o_proj (phi3: qkv_proj, o_proj;
              phi2: q_proj, k_proj, v_proj, dense)
        mlp:  r=8 lora_alpha=4 (scaling 0.5), MLP projections gate/up/down_proj (phi3: gate_up_proj, down_proj;
              phi2: fc1, fc2)
        all:  r=2 lora_alpha=6 use_rslora (scaling 6/sqrt(2)), every projection above
  tests/fixtures/lora/<arch>/order_{attn,mlp,all,attn+mlp,preload}.json   ordering files (SPEC §3)
  tests/fixtures/lora/<arch>/references.json   greedy references (16 steps, EOS ignored, top-8 per step) of
        PeftModel on the plain safetensors base (`lora`), on the F32 GGUF base (`gguf_f32`), and the first step on
        the Q8_0 GGUF base dequantized (`q8_0_first_step`) and dequantized+merged+re-quantized
        (`q8_0_requant_first_step`), for the adapter sets base / attn / mlp / all / attn+mlp
  tests/fixtures/lora/<arch>/xlora/{flat_d1,layerwise_d2,topk}/   (llama, qwen2) X-LoRA models in SPEC §3's
        layout (xlora_config.json, xlora_classifier.safetensors with inner.*/last.*, adapters 0/1/2, order.json)
        and references.json (PEFT XLoraModel, full-recompute greedy; per-token prompt scalings; `frozen_k2`)
  tests/fixtures/lora/<arch>/xlora/README.md   PEFT 0.21.2's exact X-LoRA semantics
  tests/fixtures/lora/bad/<case>/   malformed adapters for error tests (from llama's `attn` adapter)
  tests/fixtures/lora/README.md

Adapter strength: every adapted projection's output changes by about STRENGTH (relative to the base output's
RMS ~1), and the seeds are re-drawn until (a) each adapter alone changes the greedy ids and text of every case vs
the base and (b) every greedy step of every reference run has a top-1/top-2 logit gap > M.MIN_GAP (0.03; gemma
0.005, see MIN_GAP_ARCH: its logits are ~8x smaller); the search merges the deltas into plain transformers models
(fast), the final references run PEFT and are asserted equal to the merged models within 1e-4.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as M  # noqa: E402  (sets torch threads, determinism, offline env)
import make_fixtures_archs as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

OUT = M.FIX / "lora"
ARCHS = ["llama", "mistral", "phi3", "qwen2", "gemma", "phi2"]
XLORA_ARCHS = ["llama", "qwen2"]
GGUF_FILES = {"llama": ("tiny-f32.gguf", "tiny-q8_0.gguf")}
for _a in ARCHS[1:]:
    GGUF_FILES[_a] = (f"{_a}-tiny-f32.gguf", f"{_a}-tiny-q8_0.gguf")
HF_CLASS = {"llama": "LlamaForCausalLM", **A.HF_CLASS}
# transformers' GGUF loader handles neither GGUF `gemma` (v1) nor `phi2`: these bases' GGUF models are built as in
# scripts/make_fixtures_archs.py (gguf.quants.dequantize, mapped back to safetensors names by A.from_gguf, loaded
# into the plain model's class with its config), which is how their base references were recorded
OWN_DEQUANT = {"gemma", "phi2"}

ATTN = {"phi3": ["qkv_proj", "o_proj"], "phi2": ["q_proj", "k_proj", "v_proj", "dense"]}
MLP = {"phi3": ["gate_up_proj", "down_proj"], "phi2": ["fc1", "fc2"]}
DEFAULT_ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]
DEFAULT_MLP = ["gate_proj", "up_proj", "down_proj"]

ADAPTERS = {
    "attn": {"r": 4, "lora_alpha": 8, "use_rslora": False, "modules": "attn"},
    "mlp": {"r": 8, "lora_alpha": 4, "use_rslora": False, "modules": "mlp"},
    "all": {"r": 2, "lora_alpha": 6, "use_rslora": True, "modules": "all"},
}
STRENGTH = {"attn": 0.4, "mlp": 0.4, "all": 0.3}
SETS = {"base": [], "attn": ["attn"], "mlp": ["mlp"], "all": ["all"], "attn+mlp": ["attn", "mlp"]}
ORDER_SETS = ["attn", "mlp", "all", "attn+mlp"]
SEED_START = {"llama": 20000, "mistral": 21000, "phi3": 22000, "qwen2": 23000, "gemma": 24000, "phi2": 25000}
SEED_OFFSET = {"attn": 0, "mlp": 300, "all": 600}
N_SEED_TRIES = 300
# Minimum top-1/top-2 logit gap of every recorded greedy step (and of the Q8_0 first step) per base: M.MIN_GAP
# (0.03), except gemma, whose logits are ~8x smaller than the other bases' (first-step logit std ~1.0 vs 7.9-8.7:
# tied head = the embedding, std 1/sqrt(64)) so that 0.03 is ~0.25 on the others' scale and no seed passes (the
# base itself needed ~200 seeds for 0.03); 0.005 there is the same relative margin as ~0.04 on the other bases.
MIN_GAP_ARCH = {"gemma": 0.005}


def min_gap_of(arch: str) -> float:
    return MIN_GAP_ARCH.get(arch, M.MIN_GAP)

XLORA_CONFIGS = {
    "flat_d1": {"layerwise_scalings": False, "xlora_depth": 1, "xlora_size": 2048, "enable_relu_and_dropout": False,
                "softmax_temperature": 1.0, "top_k_lora": None, "global_scaling_weight": 1.0},
    "layerwise_d2": {"layerwise_scalings": True, "xlora_depth": 2, "xlora_size": 32, "enable_relu_and_dropout": True,
                     "softmax_temperature": 1.0, "top_k_lora": None, "global_scaling_weight": 1.0},
    "topk": {"layerwise_scalings": True, "xlora_depth": 1, "xlora_size": 2048, "enable_relu_and_dropout": False,
             "softmax_temperature": 0.7, "top_k_lora": 2, "global_scaling_weight": 0.8},
}
XLORA_EXPERTS = {"0": "attn", "1": "mlp", "2": "all"}  # X-LoRA expert name -> the arch's LoRA adapter it copies
XLORA_SEED_START = {"llama": 30000, "qwen2": 31000}
XLORA_CFG_OFFSET = {"flat_d1": 0, "layerwise_d2": 300, "topk": 600}
CLS_GAIN = 1.5  # classifier linear weights ~ N(0, (CLS_GAIN / sqrt(fan_in))^2)
CLS_BIAS = 0.3
MIN_TOPK_EFFECT = 0.05  # top-k masking must move some first-step logprob by this much
FROZEN_K = 2  # tgt_non_granular_index of the frozen-scalings reference (layerwise_d2)
MIN_SCALING_SPREAD = 0.25  # some (layer, adapter) scaling must vary by this much across each prompt's tokens


def base_model_id(arch: str) -> str:
    return f"tiny/{arch}-tiny"


def base_dir(arch: str) -> Path:
    return M.FIX / f"{arch}-tiny"


def module_kinds(arch: str, which: str) -> list[str]:
    attn, mlp = ATTN.get(arch, DEFAULT_ATTN), MLP.get(arch, DEFAULT_MLP)
    return {"attn": attn, "mlp": mlp, "all": attn + mlp}[which]


def lora_scaling(spec: dict) -> float:
    return spec["lora_alpha"] / (math.sqrt(spec["r"]) if spec["use_rslora"] else spec["r"])


def rel(p: Path) -> str:
    return str(p.relative_to(M.ROOT))


def dump_json(path: Path, obj, compact=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if compact:
        path.write_text(json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n")
    else:
        path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- bases
class Base:
    """One base architecture: its references, cases, tokenizer and the plain / F32 GGUF / Q8_0 GGUF models."""

    def __init__(self, arch: str):
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        self.arch = arch
        self.d = base_dir(arch)
        self.ref = json.loads((self.d / "references.json").read_text())
        self.cases = self.ref["cases"]
        self.table = self.ref["vocab_bytes"]
        if arch == "phi3":
            self.tok = PreTrainedTokenizerFast(tokenizer_file=str(self.d / "tokenizer.json"), bos_token="<s>",
                                               eos_token="</s>", unk_token="<unk>")
        else:
            self.tok = M.hf_tokenizer(self.d)
        self.plain = AutoModelForCausalLM.from_pretrained(str(self.d), dtype=torch.float32).eval()
        assert type(self.plain).__name__ == HF_CLASS[arch], type(self.plain)
        self.f32_file, self.q8_file = GGUF_FILES[arch]
        if arch in OWN_DEQUANT:
            def loader(folder, fname):
                sd = A.from_gguf(arch, A.read_gguf(folder / fname), self.plain.config)
                return A.model_from_sd(arch, folder, sd, no_window=False)
        else:
            loader = M.model_from_gguf_transformers if arch == "llama" else A.model_from_gguf_transformers
        self.gguf32 = loader(self.d, self.f32_file)
        self.q8 = loader(self.d, self.q8_file)
        self.gguf_class = type(self.gguf32).__name__
        for m in (self.plain, self.gguf32, self.q8):
            m.config.use_cache = False
            for p in m.parameters():
                p.requires_grad_(False)
        # the base references must reproduce in this environment
        self.base_plain, _ = M.run_cases(self.plain, self.cases, self.tok, self.table)
        self.base_f32, _ = M.run_cases(self.gguf32, self.cases, self.tok, self.table)
        check_equal_to_recorded(self.base_plain, self.ref["plain"]["results"], f"{arch} plain base")
        check_equal_to_recorded(self.base_f32, self.ref["gguf"][self.f32_file]["results"], f"{arch} f32 gguf base")
        self.base_ids = {"plain": [r["ids"] for r in self.base_plain], "gguf_f32": [r["ids"] for r in self.base_f32]}

    def gguf_load(self, fname: str) -> str:
        """How the GGUF model was made, for the references' `source` strings."""
        if self.arch not in OWN_DEQUANT:
            return f"from_pretrained(dir, gguf_file={fname!r})"
        how = "gguf.quants.dequantize"
        if self.arch == "gemma":
            how += ", - 1 on norm weights"
        if self.arch == "phi2" and fname == self.q8_file:
            how += ", fused attn_qkv split into q_proj/k_proj/v_proj rows"
        return (f"with the tensors of {fname!r} ({how}; transformers cannot load this GGUF architecture) under "
                f"their safetensors names and the model's config")

    def targets(self, which: str) -> list[tuple[str, int, int]]:
        """(module name, in_features, out_features) of the adapted projections, in named_modules() order."""
        kinds = set(module_kinds(self.arch, which))
        out = []
        for name, mod in self.plain.named_modules():
            if isinstance(mod, nn.Linear) and name.split(".")[-1] in kinds:
                out.append((name, mod.in_features, mod.out_features))
        return out


def check_equal_to_recorded(res: list[dict], recorded: list[dict], label: str, tol: float = 2e-5):
    for r, rec in zip(res, recorded):
        assert r["ids"] == rec["ids"], (label, rec["name"], r["ids"], rec["ids"])
        assert r["text"] == rec["text"], (label, rec["name"])
        d = max(abs(s["logprob"] - t["logprob"]) for s, t in zip(r["steps"], rec["steps"]))
        assert d < tol, (label, rec["name"], d)


# --------------------------------------------------------------------------- adapters
def draw_adapter(base: Base, name: str, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A (r, in) ~ N(0, 1/in), B (out, r) ~ N(0, (STRENGTH / (scaling sqrt(r)))^2): scaling * B A x has entries of
    RMS ~ STRENGTH * RMS(x)."""
    spec = ADAPTERS[name]
    r, scaling = spec["r"], lora_scaling(spec)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for mod_name, fin, fout in base.targets(spec["modules"]):
        a = torch.randn(r, fin, generator=g) / math.sqrt(fin)
        b = torch.randn(fout, r, generator=g) * (STRENGTH[name] / (scaling * math.sqrt(r)))
        out[mod_name] = (a.contiguous(), b.contiguous())
    return out


def merged(model, adapters: list[tuple[dict, float]]):
    """A copy of `model` with scaling * B @ A added to each adapted weight (every adapter in the list)."""
    m = copy.deepcopy(model)
    mods = dict(m.named_modules())
    with torch.no_grad():
        for deltas, scaling in adapters:
            for mod_name, (a, b) in deltas.items():
                mods[mod_name].weight += scaling * (b @ a)
    return m


@torch.no_grad()
def greedy_if_gapped(model, cases, n_steps=M.N_STEPS, min_gap=M.MIN_GAP):
    """Greedy ids per case, or None as soon as one step's top-1/top-2 logit gap is <= min_gap."""
    out = []
    for c in cases:
        ids = list(c["prompt_ids"])
        for _ in range(n_steps):
            logits = model(torch.tensor([ids])).logits[0, -1]
            v, i = torch.topk(logits, 2)
            if float(v[0] - v[1]) <= min_gap:
                return None
            ids.append(int(i[0]))
        out.append(ids[len(c["prompt_ids"]):])
    return out


@torch.no_grad()
def first_step_gapped(model, cases, min_gap=M.MIN_GAP) -> bool:
    for c in cases:
        logits = model(torch.tensor([c["prompt_ids"]])).logits[0, -1]
        v, _ = torch.topk(logits, 2)
        if float(v[0] - v[1]) <= min_gap:
            return False
    return True


def search_adapter(base: Base, name: str, fixed: dict) -> tuple[int, dict]:
    """The first seed whose adapter changes every case's greedy ids on both f32 bases and keeps every greedy step
    (alone, and combined with `attn` for `mlp`) well-conditioned on both f32 bases and on the Q8_0 first step."""
    scaling = lora_scaling(ADAPTERS[name])
    start = SEED_START[base.arch] + SEED_OFFSET[name]
    for seed in range(start, start + N_SEED_TRIES):
        deltas = draw_adapter(base, name, seed)
        runs = [[(deltas, scaling)]]
        if name == "mlp":
            runs.append([(fixed["attn"], lora_scaling(ADAPTERS["attn"])), (deltas, scaling)])
        ok = True
        for kind, model in (("plain", base.plain), ("gguf_f32", base.gguf32)):
            for j, run in enumerate(runs):
                ids = greedy_if_gapped(merged(model, run), base.cases, min_gap=min_gap_of(base.arch))
                if ids is None or (j == 0 and any(a == b for a, b in zip(ids, base.base_ids[kind]))):
                    ok = False
                    break
            if not ok:
                break
        if ok:
            ok = all(first_step_gapped(merged(base.q8, run), base.cases, min_gap=min_gap_of(base.arch))
                     for run in runs)
        print(f"  {base.arch} {name} seed {seed}: {'ok' if ok else 'rejected'}")
        if ok:
            return seed, deltas
    raise SystemExit(f"{base.arch} {name}: no seed found")


def clean_adapter_config(path: Path, arch: str, **overrides):
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = base_model_id(arch)
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg.update(overrides)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def save_adapter(base: Base, name: str, deltas: dict, folder: Path, use_dora: bool = False):
    """Write the adapter with PEFT's save_pretrained (adapter name "default", so the files land in the folder
    itself), then check the tensor names."""
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    spec = ADAPTERS[name]
    cfg = LoraConfig(r=spec["r"], lora_alpha=spec["lora_alpha"], use_rslora=spec["use_rslora"],
                     target_modules=module_kinds(base.arch, spec["modules"]), init_lora_weights=False,
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", use_dora=use_dora)
    pm = get_peft_model(copy.deepcopy(base.plain), cfg)
    n = 0
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for mod_name, mod in pm.base_model.model.named_modules():
            if hasattr(mod, "lora_A") and "default" in mod.lora_A:
                a, b = deltas[mod_name]
                mod.lora_A["default"].weight.copy_(a)
                mod.lora_B["default"].weight.copy_(b)
                if use_dora:  # magnitude = ||W + s B A|| per output row (DoRA's init, = plain LoRA) x (1 + 0.3 N(0,1))
                    norm = (mod.base_layer.weight + lora_scaling(spec) * b @ a).norm(dim=1)
                    mod.lora_magnitude_vector["default"].weight.copy_(
                        norm * (1 + 0.3 * torch.randn(norm.shape, generator=g)))
                n += 1
    assert n == len(deltas), (n, len(deltas))
    with tempfile.TemporaryDirectory() as td:
        pm.save_pretrained(td)
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy(Path(td) / f, folder / f)
    clean_adapter_config(folder / "adapter_config.json", base.arch)
    sd = load_file(str(folder / "adapter_model.safetensors"))
    want = {}
    for mod_name, (a, b) in deltas.items():
        want[f"base_model.model.{mod_name}.lora_A.weight"] = a
        want[f"base_model.model.{mod_name}.lora_B.weight"] = b
    extra = set(sd) - set(want)
    assert set(want) <= set(sd), set(want) - set(sd)
    assert all(torch.equal(sd[k], v) for k, v in want.items())
    assert all("lora_magnitude_vector" in k for k in extra) and (bool(extra) == use_dora), extra


def peft_model(model, adir: Path, names: list[str]):
    """PeftModel on a copy of `model` with the named adapters loaded and all of them active (PEFT sums them)."""
    from peft import PeftModel

    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(adir / names[0]), adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(str(adir / n), adapter_name=n)
    pm.base_model.set_adapter(names)
    pm.eval()
    assert list(pm.active_adapters) == names, pm.active_adapters
    return pm


def lora_module_order(pm) -> dict[str, int]:
    """Every module PEFT wrapped (any loaded adapter), numbered in named_modules() order, base-model names."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, mod in pm.base_model.model.named_modules():
        if isinstance(mod, LoraLayer):
            out[name] = len(out)
    return out


def max_steps_diff(a: list[dict], b: list[dict]) -> float:
    """Max |logprob| difference over every step's recorded top-8 ids (ids must be equal)."""
    d = 0.0
    for x, y in zip(a, b):
        assert x["ids"] == y["ids"], (x["ids"], y["ids"])
        for sx, sy in zip(x["steps"], y["steps"]):
            ly = {t["id"]: t["logprob"] for t in sy["top"]}
            d = max([d] + [abs(t["logprob"] - ly[t["id"]]) for t in sx["top"] if t["id"] in ly])
    return d


def r9(x: float) -> float:
    """Logprobs are written with 9 significant digits (|error| < 1e-7 here) to keep the files small."""
    return float(f"{x:.9g}")


def r6(x: float) -> float:
    return float(f"{x:.6g}")


def top_json(top: list[dict]) -> list[dict]:
    return [{"id": t["id"], "bytes": t["bytes"], "logprob": r9(t["logprob"])} for t in top]


def steps_json(steps: list[dict]) -> list[dict]:
    return [{"id": s["id"], "bytes": s["bytes"], "logprob": r9(s["logprob"]), "gap": M.rnd(s["gap"]),
             "top": top_json(s["top"])} for s in steps]


def results_json(cases, res) -> list[dict]:
    return [{"name": c["name"], "ids": r["ids"], "text": r["text"], "steps": steps_json(r["steps"])}
            for c, r in zip(cases, res)]


def first_step(model, case, table) -> tuple[dict, np.ndarray]:
    logits, lp = M.logprobs_of(model, case["prompt_ids"])
    order = np.argsort(-logits, kind="stable")
    tid = int(order[0])
    e = {"name": case["name"], "id": tid, "bytes": table[tid], "logprob": r9(float(lp[tid])),
         "gap": M.rnd(float(logits[order[0]] - logits[order[1]])),
         "top": [{"id": int(j), "bytes": table[int(j)], "logprob": r9(float(lp[j]))} for j in order[:M.TOP_K]]}
    return e, lp


def top5_diff(lp_a: np.ndarray, lp_b: np.ndarray) -> float:
    ids = set(np.argsort(-lp_a, kind="stable")[:5].tolist()) | set(np.argsort(-lp_b, kind="stable")[:5].tolist())
    ids = sorted(ids)
    return float(np.max(np.abs(lp_a[ids] - lp_b[ids])))


def q8_0_f16_scale_variant(w: np.ndarray) -> np.ndarray:
    """Q8_0 round trip with the reciprocal taken of the f16-rounded scale (a plausible non-ggml quantizer): only to
    measure how sensitive the re-quantized references are to the quantizer's rounding."""
    b = w.reshape(-1, 32).astype(np.float32)
    dh = (np.abs(b).max(-1, keepdims=True) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(dh == 0, 0, np.round(b / dh))
    return (q * dh).reshape(w.shape).astype(np.float32)


def requantized_q8(base: Base, adapters: list[tuple[dict, float]], variant: bool = False):
    """The Q8_0 base dequantized, each adapted weight += scaling B A, then re-quantized to Q8_0 (gguf.quants) and
    dequantized again: what the engine's merge does for a Q8_0 base (row permutations of llama.cpp's Q/K layout
    commute with Q8_0, whose 32-blocks run along a row)."""
    import gguf

    m = copy.deepcopy(base.q8)
    mods = dict(m.named_modules())
    touched = set()
    with torch.no_grad():
        for deltas, scaling in adapters:
            for mod_name, (a, b) in deltas.items():
                mods[mod_name].weight += scaling * (b @ a)
                touched.add(mod_name)
        for mod_name in touched:
            w = mods[mod_name].weight.numpy().astype(np.float32)
            if variant:
                deq = q8_0_f16_scale_variant(w)
            else:
                q = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
                deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(w.shape)
            mods[mod_name].weight.copy_(torch.from_numpy(np.ascontiguousarray(deq, dtype=np.float32)))
        if base.arch == "phi2" and not variant:
            # phi2's Q8_0 file stores q/k/v fused as attn_qkv: re-quantizing the fused merged tensor is the same
            # (Q8_0's 32-blocks run along rows), checked here
            for i in range(m.config.num_hidden_layers):
                names = [f"model.layers.{i}.self_attn.{x}_proj" for x in "qkv"]
                if not any(n in touched for n in names):
                    continue
                fused = np.concatenate([dict(base.q8.named_modules())[n].weight.numpy() for n in names])
                fused = fused.astype(np.float32).copy()
                rows = 0
                for n in names:
                    k = mods[n].weight.shape[0]
                    for deltas, scaling in adapters:
                        if n in deltas:
                            a, b = deltas[n]
                            fused[rows:rows + k] += (scaling * (b @ a)).numpy()
                    rows += k
                q = gguf.quants.quantize(fused, gguf.GGMLQuantizationType.Q8_0)
                deq = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(fused.shape)
                assert np.array_equal(deq, np.concatenate([mods[n].weight.numpy() for n in names])), i
    return m


# --------------------------------------------------------------------------- LoRA fixtures of one base
def build_lora(base: Base) -> dict:
    arch = base.arch
    d = OUT / arch
    adir = d / "adapters"
    if adir.exists():
        shutil.rmtree(adir)
    print(f"== {arch}: LoRA adapters")
    deltas, seeds = {}, {}
    for name in ADAPTERS:
        seeds[name], deltas[name] = search_adapter(base, name, deltas)
        save_adapter(base, name, deltas[name], adir / name)
    scal = {n: lora_scaling(ADAPTERS[n]) for n in ADAPTERS}

    # ordering files
    orders = {}
    for s in ORDER_SETS:
        names = SETS[s]
        layers = lora_module_order(peft_model(base.plain, adir, names))
        orders[s] = layers
        dump_json(d / f"order_{s}.json", {"base_model_id": base_model_id(arch), "order": names, "layers": layers})
    pre = peft_model(base.plain, adir, ["attn", "mlp", "all"])
    pre_layers = lora_module_order(pre)
    assert pre_layers == orders["all"] == orders["attn+mlp"], "every module set should be the full one"
    dump_json(d / "order_preload.json", {
        "base_model_id": base_model_id(arch), "order": ["attn"], "layers": pre_layers,
        "preload_adapters": [{"name": "mlp", "adapter_model_id": "adapters"},
                             {"name": "all", "adapter_model_id": "adapters"}]})

    # references
    doc = {
        "schema": 1, "n_steps": M.N_STEPS, "arch": arch, "base_model_id": base_model_id(arch),
        "base_fixture": rel(base.d), "vocab_bytes": base.table, "special_tokens": base.ref["special_tokens"],
        "bos_id": base.ref["bos_id"], "eos_id": base.ref["eos_id"], "cases": base.cases,
        "adapters": {n: {"folder": f"adapters/{n}", "r": ADAPTERS[n]["r"], "lora_alpha": ADAPTERS[n]["lora_alpha"],
                         "use_rslora": ADAPTERS[n]["use_rslora"], "scaling": scal[n],
                         "target_modules": sorted(module_kinds(arch, ADAPTERS[n]["modules"])),
                         "modules": [t[0] for t in base.targets(ADAPTERS[n]["modules"])],
                         "seed": seeds[n], "strength": STRENGTH[n]} for n in ADAPTERS},
        "sets": SETS, "lora": {}, "gguf_f32": {}, "q8_0_first_step": {}, "q8_0_requant_first_step": {},
    }
    if arch in MIN_GAP_ARCH:
        doc["min_gap_threshold"] = MIN_GAP_ARCH[arch]
        doc["min_gap_note"] = (f"every recorded greedy step's top-1/top-2 logit gap exceeds {MIN_GAP_ARCH[arch]} here, "
                               f"not {M.MIN_GAP} as for the other bases: this base's logits are ~8x smaller (tied "
                               f"head = embedding with std 1/sqrt(hidden)), so the same relative margin")
    summary = {"min_gap": {}, "peft_vs_merged_max_abs_diff": {}, "q8_0_top5_max_abs_diff_vs_gguf_f32": {},
               "q8_0_top5_max_abs_diff_vs_plain": {}, "q8_0_requant_top5_max_abs_diff_vs_gguf_f32": {},
               "q8_0_requant_top5_max_abs_diff_vs_q8_0_unmerged": {},
               "q8_0_requant_f16_scale_variant_top5_max_abs_diff": {}, "q8_0_first_step_min_gap": {}}
    for sname, names in SETS.items():
        ad = [(deltas[n], scal[n]) for n in names]
        row = {}
        for kind, model, key in (("plain", base.plain, "lora"), ("gguf_f32", base.gguf32, "gguf_f32")):
            if names:
                pm = peft_model(model, adir, names)
                res, gap = M.run_cases(pm, base.cases, base.tok, base.table)
                mres, _ = M.run_cases(merged(model, ad), base.cases, base.tok, base.table)
                diff = max_steps_diff(res, mres)
                assert diff < 1e-4, (arch, sname, kind, diff)
                summary["peft_vs_merged_max_abs_diff"][f"{sname}/{kind}"] = M.rnd(diff)
                src = (f"peft {'+'.join(names)} (PeftModel.from_pretrained + load_adapter, all listed adapters active, "
                       f"PEFT sums their outputs) on transformers {type(model).__name__}")
            else:
                res, gap = (base.base_plain, None) if kind == "plain" else (base.base_f32, None)
                src = f"transformers {type(model).__name__} without adapter (equal to the base fixture's references)"
                gap = min(min(s["gap"] for s in r["steps"]) for r in res)
            assert gap > min_gap_of(arch), (arch, sname, kind, gap)
            summary["min_gap"][f"{sname}/{kind}"] = M.rnd(gap)
            if kind == "plain":
                src += " from model.safetensors (f32, CPU), greedy recomputing the whole sequence each step"
                if arch == "mistral":
                    src += " (sliding_window 16)"
            else:
                src += (f" {base.gguf_load(base.f32_file)} (f32, CPU), greedy recomputing the whole "
                        f"sequence each step" + (" (GGUF `llama`: no sliding window)" if arch == "mistral" else ""))
            doc[key][sname] = {"source": src, "adapters": names, "results": results_json(base.cases, res)}
            row[kind] = res
        if names:
            for a_, b_ in zip(row["plain"], base.base_plain):
                assert a_["ids"] != b_["ids"] and a_["text"] != b_["text"], (arch, sname, "unchanged by adapter")
        # Q8_0: PEFT on the dequantized base (adapter unmerged, f32), and merged + re-quantized
        qm = peft_model(base.q8, adir, names) if names else base.q8
        rq = requantized_q8(base, ad) if names else base.q8
        rqv = requantized_q8(base, ad, variant=True) if names else base.q8
        q_entries, rq_entries = [], []
        d_f32 = d_plain = d_rq = d_rq_un = d_var = 0.0
        gmin = float("inf")
        for c, rf, rp in zip(base.cases, row["gguf_f32"], row["plain"]):
            e, lp = first_step(qm, c, base.table)
            er, lpr = first_step(rq, c, base.table)
            q_entries.append(e)
            rq_entries.append(er)
            gmin = min(gmin, e["gap"])
            d_f32 = max(d_f32, top5_diff(lp, rf["first_step_logprobs"]))
            d_plain = max(d_plain, top5_diff(lp, rp["first_step_logprobs"]))
            d_rq = max(d_rq, top5_diff(lpr, rf["first_step_logprobs"]))
            d_rq_un = max(d_rq_un, top5_diff(lpr, lp))
            d_var = max(d_var, top5_diff(first_step(rqv, c, base.table)[1], lpr))
        summary["q8_0_top5_max_abs_diff_vs_gguf_f32"][sname] = M.rnd(d_f32)
        summary["q8_0_top5_max_abs_diff_vs_plain"][sname] = M.rnd(d_plain)
        summary["q8_0_requant_top5_max_abs_diff_vs_gguf_f32"][sname] = M.rnd(d_rq)
        summary["q8_0_requant_top5_max_abs_diff_vs_q8_0_unmerged"][sname] = M.rnd(d_rq_un)
        summary["q8_0_requant_f16_scale_variant_top5_max_abs_diff"][sname] = M.rnd(d_var)
        summary["q8_0_first_step_min_gap"][sname] = M.rnd(gmin)
        if not names:
            rec = base.ref["gguf"][base.q8_file]["results"]
            for e, r in zip(q_entries, rec):
                assert e["id"] == r["ids"][0] and abs(e["logprob"] - r["steps"][0]["logprob"]) < 2e-5
        tag = "+".join(names) if names else "no adapter"
        doc["q8_0_first_step"][sname] = {
            "source": f"first greedy step, peft {tag} unmerged (f32) on transformers {base.gguf_class} "
                      f"{base.gguf_load(base.q8_file)} (Q8_0 dequantized to f32, CPU)",
            "adapters": names, "results": q_entries,
            "max_abs_diff_top5_vs_gguf_f32": M.rnd(d_f32), "max_abs_diff_top5_vs_plain": M.rnd(d_plain)}
        doc["q8_0_requant_first_step"][sname] = {
            "source": f"first greedy step of transformers {base.gguf_class} on the Q8_0 file dequantized, every adapted "
                      f"weight += scaling*B@A ({tag}), re-quantized to Q8_0 with gguf.quants.quantize and dequantized "
                      f"(f32, CPU): the engine's merge",
            "adapters": names, "results": rq_entries,
            "max_abs_diff_top5_vs_gguf_f32": M.rnd(d_rq), "max_abs_diff_top5_vs_q8_0_unmerged": M.rnd(d_rq_un)}
        print(f"  {arch} {sname}: min gap plain {summary['min_gap'][sname + '/plain']:.4f} gguf_f32 "
              f"{summary['min_gap'][sname + '/gguf_f32']:.4f}; q8_0 first step top5 vs gguf_f32 {d_f32:.2e} "
              f"(requant {d_rq:.2e}); q8 first-step min gap {gmin:.4f}")
    doc["summary"] = summary
    doc["q8_0_note"] = ("max_abs_diff_top5_*: max over cases of max |logprob difference| over the union of both "
                        "first steps' top-5 ids. The F32 GGUF reference is the matching one (same attention: for "
                        "mistral the GGUF `llama` architecture has no sliding window).")
    if arch == "phi2":
        doc["q8_0_note"] += (" phi2: the Q8_0 file stores the fused attn_qkv (q rows, then k, then v; the F32 file has "
                             "separate attn_q/k/v); these references are in terms of the HF modules q_proj/k_proj/"
                             "v_proj, i.e. row blocks of attn_qkv, and since Q8_0 blocks run along rows, merging the "
                             "q/k/v deltas into attn_qkv and re-quantizing it as a whole gives the same weights "
                             "(asserted).")
    dump_json(d / "references.json", doc, compact=True)
    return {"seeds": seeds, "deltas": deltas, "summary": summary, "orders": orders}


# --------------------------------------------------------------------------- bad adapters
def build_bad(base: Base, deltas: dict):
    """Malformed adapters derived from llama's `attn` adapter; each case folder holds attn/ and order.json."""
    from safetensors.torch import load_file, save_file

    bad = OUT / "bad"
    if bad.exists():
        shutil.rmtree(bad)
    src = OUT / "llama" / "adapters" / "attn"
    layers = json.loads((OUT / "llama" / "order_attn.json").read_text())["layers"]
    notes = {}

    def case(name: str, layer_map=None):
        f = bad / name / "attn"
        f.mkdir(parents=True)
        shutil.copy(src / "adapter_config.json", f / "adapter_config.json")
        shutil.copy(src / "adapter_model.safetensors", f / "adapter_model.safetensors")
        dump_json(bad / name / "order.json", {"base_model_id": "tiny/llama-tiny", "order": ["attn"],
                                              "layers": layer_map or layers})
        return f

    # shape: layer 0 q_proj lora_A has 48 input features instead of hidden 64
    f = case("shape")
    sd = load_file(str(f / "adapter_model.safetensors"))
    k = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    sd[k] = sd[k][:, :48].contiguous()
    save_file(sd, str(f / "adapter_model.safetensors"), metadata={"format": "pt"})
    notes["shape"] = f"{k} is (4, 48); the base's hidden size is 64"
    # rank: config r=8, tensors rank 4
    f = case("rank")
    clean_adapter_config(f / "adapter_config.json", "llama", r=8)
    notes["rank"] = "adapter_config.json r=8, tensors have rank 4"
    # dora: a real PEFT DoRA adapter (lora_magnitude_vector tensors) with the same A and B
    f = bad / "dora" / "attn"
    save_adapter(base, "attn", deltas["attn"], f, use_dora=True)
    dump_json(bad / "dora" / "order.json", {"base_model_id": "tiny/llama-tiny", "order": ["attn"], "layers": layers})
    notes["dora"] = ("use_dora: true (PEFT save_pretrained of a DoRA adapter with the attn A/B; lora_magnitude_vector "
                     "tensors = DoRA's row norms x (1 + 0.3 N(0,1)), so its output differs from plain LoRA)")
    # bias_all
    f = case("bias_all")
    clean_adapter_config(f / "adapter_config.json", "llama", bias="all")
    notes["bias_all"] = 'bias: "all" (llama has no linear biases, so no extra tensors)'
    # unknown_module: fc1 (llama has none) with tensors
    lm = dict(layers)
    for i in range(2):
        lm[f"model.layers.{i}.mlp.fc1"] = len(lm)
    f = case("unknown_module", lm)
    cfg = json.loads((f / "adapter_config.json").read_text())
    clean_adapter_config(f / "adapter_config.json", "llama", target_modules=sorted(cfg["target_modules"] + ["fc1"]))
    sd = load_file(str(f / "adapter_model.safetensors"))
    g = torch.Generator().manual_seed(7)
    for i in range(2):
        p = f"base_model.model.model.layers.{i}.mlp.fc1."
        sd[p + "lora_A.weight"] = torch.randn(4, 64, generator=g) * 0.1
        sd[p + "lora_B.weight"] = torch.randn(128, 4, generator=g) * 0.1
    save_file(sd, str(f / "adapter_model.safetensors"), metadata={"format": "pt"})
    notes["unknown_module"] = ("target_modules adds fc1, with lora_A (4,64) / lora_B (128,4) tensors for "
                               "model.layers.{0,1}.mlp.fc1 (llama has no fc1); order.json lists them too (8, 9)")

    # what PEFT itself does with each (recorded for the error-message design)
    import warnings

    peft_says = {}
    good = peft_model(base.plain, OUT / "llama" / "adapters", ["attn"])
    _, lp_good = first_step(good, base.cases[0], base.table)
    for name in notes:
        try:
            with warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                pm = peft_model(base.plain, bad / name, ["attn"])
            ws = [str(x.message).splitlines()[0][:200] for x in w if "adapter" in str(x.message).lower()
                  or "key" in str(x.message).lower()]
            _, lp = first_step(pm, base.cases[0], base.table)
            same = bool(np.max(np.abs(lp - lp_good)) < 1e-6)
            peft_says[name] = ("loads" + (f" (warnings: {ws})" if ws else " silently") + "; first-step output "
                               + ("identical to the valid `attn` adapter" if same else "differs from `attn`"))
        except Exception as e:  # noqa: BLE001
            msg = " ".join(x.strip() for x in str(e).splitlines()[:2])
            peft_says[name] = f"raises {type(e).__name__}: {msg[:300]}"
        print(f"  bad/{name}: PEFT {peft_says[name]}")
    return notes, peft_says


# --------------------------------------------------------------------------- X-LoRA
def xlora_model(base: Base, folder: Path, xc: dict):
    from peft import XLoraConfig, get_peft_model

    m = copy.deepcopy(base.plain)
    m.config.use_cache = False
    cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=base.plain.config.hidden_size,
                      adapters={n: str(folder / n) for n in XLORA_EXPERTS}, enable_softmax=True,
                      enable_softmax_topk=False, layerwise_scalings=xc["layerwise_scalings"],
                      xlora_depth=xc["xlora_depth"], xlora_size=xc["xlora_size"], xlora_dropout_p=0.0,
                      softmax_temperature=xc["softmax_temperature"], top_k_lora=xc["top_k_lora"],
                      scaling_pass_value=0.0, global_scaling_weight=xc["global_scaling_weight"])
    pm = get_peft_model(m, cfg)
    pm.eval()
    return pm


def xlora_layers(pm) -> dict[str, int]:
    from peft.tuners import lora

    out = {}
    for name, mod in pm.base_model.lora_model.model.named_modules():
        if isinstance(mod, lora.Linear):
            out[name] = mod.forward.__self__.layer_number  # the XLoraLinearLayer bound as forward
    assert sorted(out.values()) == list(range(len(out)))
    return out


def classifier_linears(pm) -> tuple[list[int], list[nn.Linear]]:
    seq = pm.base_model.internal_xlora_classifier.layers
    idx = [i for i, m in enumerate(seq) if isinstance(m, nn.Linear)]
    assert idx[-1] == len(seq) - 1, "the last module of the classifier is `last`"
    return idx, [seq[i] for i in idx]


def set_classifier(pm, seed: int):
    g = torch.Generator().manual_seed(seed)
    _, lins = classifier_linears(pm)
    with torch.no_grad():
        for lin in lins:
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) * (CLS_GAIN / math.sqrt(lin.in_features)))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g) * CLS_BIAS)


@torch.no_grad()
def prompt_scalings(pm, case) -> torch.Tensor:
    pm(torch.tensor([case["prompt_ids"]]))
    s = pm.base_model.get_latest_scalings()
    return s[0].clone()  # (P, n_layers, n_adapters)


def topk_masked(s: torch.Tensor, k) -> torch.Tensor:
    if k is None:
        return s
    _, idx = torch.topk(s, k=k, dim=-1)
    mask = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, idx, True)
    return s * mask.to(s.dtype)


@torch.no_grad()
def manual_xlora_logits(base: Base, pm, deltas: dict, xc: dict, layers: dict[str, int], ids: list[int]):
    """X-LoRA re-implemented from the README's description (scaling pass = base model, classifier on the hidden
    state after the final norm, softmax(logits / T) over adapters, top-k mask without renormalisation, each adapted
    linear += sum_a s_a * scaling_a * B_a A_a x * global_scaling_weight), to check the description against PEFT."""
    x = torch.tensor([ids])
    h = base.plain(x, output_hidden_states=True).hidden_states[-1][0]  # (T, hidden), post final norm
    _, lins = classifier_linears(pm)
    for lin in lins[:-1]:
        h = torch.relu(lin(h))  # PEFT: ReLU after every inner linear (dropout p=0)
    logits = lins[-1](h)
    n_layers, n_ad = len(layers), len(XLORA_EXPERTS)
    if xc["layerwise_scalings"]:
        logits = logits.reshape(len(ids), n_layers, n_ad)  # output index = layer * n_adapters + adapter
    else:
        logits = logits[:, None, :].expand(len(ids), n_layers, n_ad)
    s = torch.softmax(logits / xc["softmax_temperature"], dim=-1)
    s = topk_masked(s, xc["top_k_lora"])
    m = copy.deepcopy(base.plain)
    mods = dict(m.named_modules())
    hooks = []
    for mod_name, li in layers.items():
        def hook(mod, inp, out, mod_name=mod_name, li=li):
            xin = inp[0]
            add = torch.zeros_like(out)
            for a, (ename, lname) in enumerate(XLORA_EXPERTS.items()):
                if mod_name in deltas[lname]:
                    aa, bb = deltas[lname][mod_name]
                    add += (s[None, :, li, a, None] * xin) @ aa.T @ bb.T * lora_scaling(ADAPTERS[lname])
            return out + add * xc["global_scaling_weight"]
        hooks.append(mods[mod_name].register_forward_hook(hook))
    out = m(x).logits[0, -1]
    for hk in hooks:
        hk.remove()
    return torch.log_softmax(out.double(), dim=-1).numpy(), s


class Freeze:
    """Wraps the classifier's forward: positions >= start use the scalings of position start - 1."""

    def __init__(self, pm):
        self.clf = pm.base_model.internal_xlora_classifier
        self.orig = self.clf.forward
        self.start = None
        self.clf.forward = self

    def __call__(self, *args, **kwargs):
        s = self.orig(*args, **kwargs)
        if self.start is not None and s.shape[1] > self.start:
            s = s.clone()
            s[:, self.start:] = s[:, self.start - 1:self.start]
        return s


def run_frozen(pm, fr: Freeze, cases, tok, table, k: int):
    res, gmin = [], float("inf")
    for c in cases:
        fr.start = len(c["prompt_ids"]) + k
        r, g = M.run_cases(pm, [c], tok, table)
        res += r
        gmin = min(gmin, g)
    fr.start = None
    return res, gmin


def build_xlora(base: Base, lora_info: dict, lora_refs: dict) -> dict:
    from safetensors.torch import save_file

    arch = base.arch
    xd = OUT / arch / "xlora"
    if xd.exists():
        shutil.rmtree(xd)
    deltas = lora_info["deltas"]
    single = {s: [r["ids"] for r in lora_refs["lora"][s]["results"]] for s in ("attn", "mlp", "all")}
    base_ids = base.base_ids["plain"]
    summary = {}
    for cname, xc in XLORA_CONFIGS.items():
        folder = xd / cname
        for en, ln in XLORA_EXPERTS.items():
            (folder / en).mkdir(parents=True)
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(OUT / arch / "adapters" / ln / f, folder / en / f)
        pm = xlora_model(base, folder, xc)
        layers = xlora_layers(pm)
        assert layers == lora_info["orders"]["all"], "X-LoRA layer numbers = LoRA named_modules order"
        cidx, lins = classifier_linears(pm)
        n_out = len(XLORA_EXPERTS) * (len(layers) if xc["layerwise_scalings"] else 1)
        assert lins[-1].out_features == n_out and len(lins) == xc["xlora_depth"]
        fr = Freeze(pm)
        start = XLORA_SEED_START[arch] + XLORA_CFG_OFFSET[cname]
        for seed in range(start, start + N_SEED_TRIES):
            set_classifier(pm, seed)
            res, gap = M.run_cases(pm, base.cases, base.tok, base.table)
            ids = [r["ids"] for r in res]
            why = []
            if gap <= M.MIN_GAP:
                why.append(f"gap {gap:.4f}")
            if any(a == b for a, b in zip(ids, base_ids)):
                why.append("= base")
            for s, sids in single.items():
                if any(a == b for a, b in zip(ids, sids)):
                    why.append(f"= {s}")
            scal = [prompt_scalings(pm, c) for c in base.cases]
            spread = min(float((s.amax(0) - s.amin(0)).max()) for s in scal)
            if spread < MIN_SCALING_SPREAD:
                why.append(f"spread {spread:.3f}")
            topk_effect = None
            if xc["top_k_lora"] is not None:  # the masking must matter: compare with the dense model
                pm.base_model.set_topk_lora(None)
                topk_effect = max(float(np.max(np.abs(first_step(pm, c, base.table)[1] - r["first_step_logprobs"])))
                                  for c, r in zip(base.cases, res))
                pm.base_model.set_topk_lora(xc["top_k_lora"])
                if topk_effect < MIN_TOPK_EFFECT:
                    why.append(f"top-k effect {topk_effect:.3f}")
            frozen = None
            if not why and cname == "layerwise_d2":
                frozen, fgap = run_frozen(pm, fr, base.cases, base.tok, base.table, FROZEN_K)
                if fgap <= M.MIN_GAP:
                    why.append(f"frozen gap {fgap:.4f}")
            print(f"  {arch} xlora {cname} seed {seed}: {'ok' if not why else 'rejected (' + ', '.join(why) + ')'}")
            if not why:
                break
        else:
            raise SystemExit(f"{arch} xlora {cname}: no seed found")

        # check the written-down semantics against PEFT on every case's first step
        sem = 0.0
        for c, r, s_peft in zip(base.cases, res, scal):
            lp, s_man = manual_xlora_logits(base, pm, deltas, xc, layers, c["prompt_ids"])
            sem = max(sem, float(np.max(np.abs(lp - r["first_step_logprobs"]))))
            assert torch.allclose(topk_masked(s_peft, xc["top_k_lora"]), s_man, atol=1e-6)
        assert sem < 1e-4, (cname, sem)

        # files: classifier (renamed), xlora_config.json, order.json
        tensors = {}
        for j, lin in enumerate(lins):
            nm = "last" if j == len(lins) - 1 else f"inner.{j}"
            tensors[f"{nm}.weight"] = lin.weight.detach().clone().contiguous()
            tensors[f"{nm}.bias"] = lin.bias.detach().clone().contiguous()
        save_file(tensors, str(folder / "xlora_classifier.safetensors"), metadata={"format": "pt"})
        peft_names = {("last" if j == len(lins) - 1 else f"inner.{j}"): f"internal_xlora_classifier.layers.{i}"
                      for j, i in enumerate(cidx)}
        xcfg = {"hidden_size": base.plain.config.hidden_size, "base_model_id": base_model_id(arch),
                "layerwise_scalings": xc["layerwise_scalings"], "xlora_depth": xc["xlora_depth"],
                "xlora_size": xc["xlora_size"], "enable_relu_and_dropout": xc["enable_relu_and_dropout"],
                "enable_softmax": True, "softmax_temperature": xc["softmax_temperature"], "scaling_pass_value": 0.0,
                "use_bias": True, "global_scaling_weight": xc["global_scaling_weight"], "top_k_lora": xc["top_k_lora"],
                "adapters": {n: n for n in XLORA_EXPERTS},
                "enable_softmax_topk": False, "xlora_dropout_p": 0.0,
                "peft_classifier_tensor_names": peft_names}
        dump_json(folder / "xlora_config.json", xcfg)
        dump_json(folder / "order.json", {"base_model_id": base_model_id(arch), "order": list(XLORA_EXPERTS),
                                          "layers": layers})
        doc = {
            "schema": 1, "n_steps": M.N_STEPS, "arch": arch, "base_model_id": base_model_id(arch),
            "base_fixture": rel(base.d), "config": cname, "xlora_config": xcfg, "classifier_seed": seed,
            "experts": {n: {"copy_of": f"../../adapters/{ln}", **{k: lora_refs["adapters"][ln][k] for k in
                                                                  ("r", "lora_alpha", "use_rslora", "scaling",
                                                                   "target_modules")}}
                        for n, ln in XLORA_EXPERTS.items()},
            "vocab_bytes": base.table, "special_tokens": base.ref["special_tokens"], "bos_id": base.ref["bos_id"],
            "eos_id": base.ref["eos_id"], "cases": base.cases,
            "source": "peft XLoraModel (get_peft_model(base, XLoraConfig(...)), use_cache=False) on transformers "
                      f"{HF_CLASS[arch]} from model.safetensors (f32, CPU); greedy recomputing the whole sequence each "
                      "step (every step runs PEFT's scaling pass + real pass over the full sequence)",
            "results": [dict(e, prompt_scalings=[[[r6(v) for v in lay] for lay in tok] for tok in s.tolist()])
                        for e, s in zip(results_json(base.cases, res), scal)],
            "prompt_scalings_note": "classifier output for the prompt tokens (first step), shape [prompt tokens][n "
                                    "layers (order.json numbering)][3 adapters], after softmax(logits / temperature)"
                                    " and BEFORE top-k masking (PEFT applies top-k inside each layer: keep the k "
                                    "largest per token and layer, zero the rest, no renormalisation), 6 significant "
                                    "digits",
            "min_gap": M.rnd(gap), "semantics_check_max_abs_diff": M.rnd(sem),
            "min_prompt_scaling_spread": M.rnd(spread),
        }
        info = {"min_gap": M.rnd(gap), "semantics_check_max_abs_diff": M.rnd(sem), "seed": seed,
                "prompt_scaling_spread": M.rnd(spread)}
        if topk_effect is not None:
            info["topk_vs_dense_first_step_max_abs_diff"] = M.rnd(topk_effect)
            doc["topk_vs_dense_first_step_max_abs_diff"] = M.rnd(topk_effect)
        if cname == "layerwise_d2":
            ndiff = sum(a["ids"] != b["ids"] for a, b in zip(frozen, res))
            fgap = min(min(s["gap"] for s in r["steps"]) for r in frozen)
            doc["frozen_k2"] = {
                "tgt_non_granular_index": FROZEN_K,
                "definition": "P = prompt length; forward #0 runs the prompt, forward #j (j>=1) generated token j-1 "
                              "at position P+j-1; scaling passes for forwards #0..#k; F = the classifier scalings of "
                              "position P+k-1 (the last position of forward #k); every position t >= P+k uses F, "
                              "earlier positions their own classifier scalings. Computed by recomputing the whole "
                              "sequence each step with PEFT's classifier output overridden for positions >= P+k "
                              "(so the first k+1 steps equal the unfrozen results)",
                "results": results_json(base.cases, frozen), "min_gap": M.rnd(fgap),
                "cases_differing_from_unfrozen": ndiff}
            for a, b in zip(frozen, res):
                assert a["ids"][:FROZEN_K + 1] == b["ids"][:FROZEN_K + 1]
            info["frozen_k2_cases_differing"] = ndiff
            print(f"  {arch} xlora {cname}: frozen k={FROZEN_K} differs from unfrozen in {ndiff}/{len(res)} cases")
        dump_json(folder / "references.json", doc, compact=True)
        summary[cname] = info
        print(f"  {arch} xlora {cname}: min gap {gap:.4f}, semantics check {sem:.2e}, spread {spread:.3f}")
    (xd / "README.md").write_text(XLORA_README.format(arch=arch, summary=json.dumps(summary, indent=2)))
    return summary


XLORA_README = """# X-LoRA fixtures ({arch}), from PEFT 0.21.2

Written by `scripts/make_fixtures_lora.py`. One folder per X-LoRA model, each in SPEC §3's layout:

| file | contents |
|---|---|
| `xlora_config.json` | SPEC fields (`hidden_size`, `base_model_id`, `layerwise_scalings`, `xlora_depth`, `xlora_size`, `enable_relu_and_dropout`, `enable_softmax`, `softmax_temperature`, `scaling_pass_value`, `use_bias`, `global_scaling_weight`, `top_k_lora`) plus informational `adapters`, `enable_softmax_topk`, `xlora_dropout_p`, `peft_classifier_tensor_names` |
| `xlora_classifier.safetensors` | `inner.{{i}}.weight/bias` (hidden linears, in order), `last.weight/bias` |
| `0/`, `1/`, `2/` | LoRA experts (copies of `../../adapters/attn`, `mlp`, `all`: r=4 attention, r=8 MLP, r=2 rsLoRA all) |
| `order.json` | `order` ["0","1","2"] (= classifier output order), `layers`: module -> PEFT's `XLoraLayer.layer_number` |
| `references.json` | greedy 16 steps per case (`results[]`: ids/text/steps/top-8 + `prompt_scalings`); `frozen_k2` in layerwise_d2 |

Configurations: `flat_d1` (layerwise_scalings=false, depth 1), `layerwise_d2` (layerwise, depth 2, xlora_size 32,
ReLU), `topk` (layerwise, depth 1, top_k_lora 2, softmax_temperature 0.7, global_scaling_weight 0.8).

## PEFT 0.21.2's X-LoRA, exactly (peft/tuners/xlora/{{model,classifier,layer}}.py)

Every call of the model (PEFT's `generate` forces `use_cache=False`, so every generation step re-runs the whole
sequence) is two passes, done by a forward pre-hook on the base transformers model:

1. **Scaling pass.** The base model runs on the same input with `output_hidden_states=True` while every LoRA layer
   gets "dummy" scalings filled with `scaling_pass_value` (default 0). `disable_adapter_layers()` is called around
   it, but X-LoRA's layer forward ignores that flag, so each adapter contributes
   `B(A(x * scaling_pass_value)) * lora_scaling * global_scaling_weight`: with the default 0 this is exactly the
   base model. The classifier input is `hidden_states[-1]` of that pass = the hidden state **after the final norm**
   (verified: `lm_head(hidden_states[-1]) == logits`), shape [batch, seq, hidden], every position.
2. **Classifier** (`XLoraClassifier`, `nn.Sequential` named `layers`):
   - depth 1: `layers.0` = `last` (Linear(hidden, n_out, bias=True)).
   - depth d >= 2: Linear(hidden, xlora_size) -> **ReLU always** (PEFT has no `enable_relu_and_dropout` switch:
     the ReLU is unconditional for depth >= 2) -> Dropout only if `xlora_dropout_p > 0` (inactive in eval), repeated
     d-1 times (xlora_size -> xlora_size for the later ones), then `last` Linear(xlora_size, n_out). With
     `xlora_dropout_p=0` (these fixtures) depth 2 is `layers.0` (inner.0), `layers.1` ReLU, `layers.2` (last); with
     PEFT's default p=0.2 there is a Dropout module and `last` would be `layers.3`. `last` is always the final
     module of the Sequential. All linears have a bias (`use_bias` is always true in PEFT). So the SPEC engine's
     `enable_relu_and_dropout=false` with depth >= 2 (no ReLU) has no PEFT equivalent; `layerwise_d2` sets it true.
   - n_out = n_adapters * n_layers if `layerwise_scalings` else n_adapters; n_layers = number of LoRA-wrapped
     modules (14 here = `order.json` `layers`). Logits are reshaped to [batch, seq, n_layers, n_adapters], i.e.
     **output index = layer_number * n_adapters + adapter**. Not layerwise: the n_adapters logits are broadcast to
     every layer.
   - **Softmax** (when `enable_softmax`, default true): `softmax(logits / softmax_temperature)` over the adapter
     axis, per token and layer. These are the "scalings" (`get_latest_scalings()`, `prompt_scalings` here).
3. **Real pass**, in every wrapped linear with layer number `l` (`XLoraLayer.get_maybe_topk_scalings`):
   - `s = scalings[:, :, l, :]` ([batch, seq, n_adapters], already softmaxed).
   - If `top_k_lora` is set: keep the k largest `s` per token (torch.topk), **set the others to 0, no
     renormalisation**.
   - If `enable_softmax_topk` (default **false**, and false here): softmax again over the non-zero entries (zeros
     stay 0). Not applied in these fixtures.
   - `out = base(x) + sum_a B_a(A_a(x * s[..., a])) * lora_scaling_a * global_scaling_weight`, where a runs over
     the adapters in order ("0","1","2"); an adapter without weights for this module is skipped (its index still
     counts: the index is the adapter's position in the X-LoRA adapter list, not among the module's adapters).
     `lora_scaling_a` = lora_alpha/r (lora_alpha/sqrt(r) for rsLoRA: expert "2"). **`global_scaling_weight`
     multiplies every adapter's output** (equivalently every scaling); it is applied after the top-k/softmax, so it
     never enters the softmax.
   The per-token scaling multiplies the LoRA input x; because A and B are linear this equals scaling the adapter
   output.

The script re-implements steps 1-3 from this description (plain transformers model + forward hooks) and asserts
the first-step logprobs equal PEFT's within 1e-4 for every case and configuration (`semantics_check_max_abs_diff`
in each references.json).

Layer numbering: PEFT numbers every module that became a `lora.Linear` (any expert targets it) in `modules()`
order of the base model (model.layers.0.self_attn.q_proj = 0, k 1, v 2, o 3, mlp gate 4, up 5, down 6,
layers.1 ... 13), read from each `XLoraLayer.layer_number`.

PEFT quirks met: experts must be named "0", "1", ... (PEFT loads expert i under the name str(i) and then activates
the `adapters` dict's keys, so any other key set silently activates nothing); PEFT's own `save_pretrained` of an
X-LoRA model strips ".{{adapter_name}}" from state-dict keys, which turns the classifier's `layers.0.weight` into
`layers.weight` (adapter "0") and writes base-model weights into the expert folders, so PEFT's saved layout is not
usable with these names: the classifier file here is written directly from the module's tensors.

## Frozen scalings (`frozen_k2` in layerwise_d2/references.json)
`tgt_non_granular_index = 2`: with P the prompt length, the engine's forward #0 runs the prompt and forward #j
(j >= 1) runs generated token j-1 at position P+j-1; scaling passes run for forwards #0..#2; then the scalings of
position P+1 are frozen and every position t >= P+2 uses them, earlier positions keep their own. Computed by
recomputing the whole sequence each step with PEFT's classifier output overridden at positions >= P+2; the first
3 greedy steps therefore equal the unfrozen ones.

## Per-configuration numbers
```
{summary}
```
"""


# --------------------------------------------------------------------------- README
def write_readme(infos: dict, bad_notes: dict, peft_says: dict, xinfo: dict):
    lines = [README_HEAD]
    lines.append("## Measured (per base)\n")
    lines.append("| arch | seeds (attn/mlp/all) | min greedy gap (all sets, plain / gguf_f32) | Q8_0 unmerged vs F32 GGUF "
                 "first-step top-5 max abs diff (base/attn/mlp/all/attn+mlp) | Q8_0 re-quantized merge vs F32 GGUF |")
    lines.append("|---|---|---|---|---|")
    for arch, info in infos.items():
        s = info["summary"]
        gp = min(v for k, v in s["min_gap"].items() if k.endswith("/plain"))
        gg = min(v for k, v in s["min_gap"].items() if k.endswith("/gguf_f32"))
        q = " / ".join(f"{s['q8_0_top5_max_abs_diff_vs_gguf_f32'][k]:.2e}" for k in SETS)
        rq = " / ".join(f"{s['q8_0_requant_top5_max_abs_diff_vs_gguf_f32'][k]:.2e}" for k in SETS)
        seeds = "/".join(str(info["seeds"][n]) for n in ADAPTERS)
        lines.append(f"| {arch} | {seeds} | {gp:.4f} / {gg:.4f} | {q} | {rq} |")
    lines.append("")
    lines.append("Q8_0 re-quantized merge vs Q8_0 unmerged (both on the same Q8_0 base; the only difference is rounding "
                 "the merged weights to Q8_0 again), same order: " + "; ".join(
                     f"{a} " + " / ".join(f"{i['summary']['q8_0_requant_top5_max_abs_diff_vs_q8_0_unmerged'][k]:.2e}"
                                          for k in SETS) for a, i in infos.items()) + ".\n")
    lines.append("Sensitivity of the re-quantized reference to the quantizer's rounding: re-quantizing with the "
                 "reciprocal of the f16-rounded scale (q = round(x / f16(d))) instead of ggml's q = roundf(x * (1/d)) "
                 "(d = amax/127 in f32, roundf = half away from zero, d stored as f16; `gguf.quants` is bit-exact with "
                 "ggml's reference quantize_row_q8_0) moves the first-step top-5 logprobs by: " + "; ".join(
                     f"{a} " + " / ".join(f"{i['summary']['q8_0_requant_f16_scale_variant_top5_max_abs_diff'][k]:.2e}"
                                          for k in SETS) for a, i in infos.items()) + ".\n")
    lines.append("These random tiny models amplify any rounding (see tests/fixtures/README.md and the base fixtures' "
                 "`max_abs_diff_vs_plain_first_step_top5` for their Q8_0 files, 0.23-0.38; gemma 0.03, its logits "
                 "being ~8x smaller): the base column "
                 "(no adapter) is the quantization error of the base alone, and adding an adapter keeps the deviations in "
                 "the same range. So: compare an engine's first step on a Q8_0 base + merged adapter with "
                 "`q8_0_requant_first_step` (what it should compute exactly up to its own activation rounding and "
                 "accumulation order, if its Q8_0 quantizer is bit-exact with ggml's) with a tight bound, and with `q8_0_first_step` / the F32 references only with a "
                 "bound of ~0.6 (max measured above plus margin).\n")
    lines.append("PEFT (several adapters active) vs the deltas merged by hand into the base weights, max |logprob| "
                 "difference over all steps' top-8: " + ", ".join(
                     f"{a} {max(i['summary']['peft_vs_merged_max_abs_diff'].values()):.1e}" for a, i in infos.items())
                 + ".\n")
    lines.append("## Bad adapters (`bad/<case>/attn/` + `bad/<case>/order.json`, from llama's `attn` adapter)\n")
    lines.append("| case | what is wrong | what PEFT 0.21.2 itself does (`PeftModel.from_pretrained`) |")
    lines.append("|---|---|---|")
    for k, v in bad_notes.items():
        lines.append(f"| `{k}` | {v} | {peft_says[k].replace('|', '/')} |")
    lines.append("")
    lines.append("X-LoRA without a classifier: no fixture; the test should copy `llama/xlora/flat_d1` to a temporary "
                 "folder and delete `xlora_classifier.safetensors` there.\n")
    if xinfo:
        lines.append("## X-LoRA (see `<arch>/xlora/README.md` for PEFT's exact semantics)\n")
        lines.append("```")
        lines.append(json.dumps(xinfo, indent=2))
        lines.append("```\n")
    (OUT / "README.md").write_text("\n".join(lines))


README_HEAD = """# LoRA / X-LoRA reference fixtures (PEFT)

Written by `scripts/make_fixtures_lora.py` (torch 2.15.0 CPU f32 single-threaded, transformers 5.23.0,
peft 0.21.2, safetensors 0.8, gguf 0.19.0, numpy 2.4) from the tiny base fixtures `tests/fixtures/<arch>-tiny/`
(written by `scripts/make_fixtures.py` / `scripts/make_fixtures_archs.py`; this script only reads them and copies
no base weights). Deterministic; regenerate with

    /work/refenv/bin/python scripts/make_fixtures_lora.py            # all: llama mistral phi3 qwen2 gemma phi2 + X-LoRA + bad
    /work/refenv/bin/python scripts/make_fixtures_lora.py qwen2      # one base (bad/ needs llama)
    /work/refenv/bin/python scripts/make_fixtures_lora.py gemma phi2 --no-xlora   # how gemma and phi2 were added

(only a full run rewrites this README; a partial run writes its bases' folders and leaves this file alone)

(`/work/refenv`: `pip install torch==2.15.0 transformers==5.23.0 peft==0.21.2 safetensors numpy gguf==0.19.0
accelerate`). Adapters name their base `tiny/<arch>-tiny` (`base_model_name_or_path`, ordering files'
`base_model_id`); tests pass the local base folder as `model_id` explicitly.

## Per base architecture: `<arch>/` for arch in llama, mistral, phi3, qwen2, gemma, phi2

- `adapters/<name>/adapter_config.json` + `adapter_model.safetensors`: PEFT `save_pretrained` output (adapter
  name "default", so the files sit in the folder itself), PEFT tensor names
  `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` / `.lora_B.weight` (A: [r, in], B: [out, r]),
  `init_lora_weights=False`, `lora_dropout=0`, `bias="none"`, `task_type=CAUSAL_LM`; `target_modules` sorted.
  - `attn`: r=4, lora_alpha=8 (scaling 2), llama/mistral/qwen2/gemma `q_proj k_proj v_proj o_proj`, phi3
    `qkv_proj o_proj`, phi2 `q_proj k_proj v_proj dense`
  - `mlp`: r=8, lora_alpha=4 (scaling 0.5), `gate_proj up_proj down_proj`, phi3 `gate_up_proj down_proj`, phi2
    `fc1 fc2`
  - `all`: r=2, lora_alpha=6, **use_rslora** (scaling = lora_alpha/sqrt(r) = 4.2426, not lora_alpha/r), all of them
  A ~ N(0, 1/in), B ~ N(0, (strength / (scaling sqrt(r)))^2) from `torch.Generator().manual_seed(seed)` (seeds and
  strength in references.json `adapters`), so `scaling * B A x` has RMS ~ strength (0.3-0.4) x RMS(x).
  Seeds were re-drawn until every adapter alone changes the greedy ids and text of every case, and every greedy
  step of every recorded run has a top-1/top-2 logit gap > 0.03 (gemma: > 0.005, see below).
  phi3: PEFT wraps the fused `qkv_proj` ([128, 64]: q 64 + k 32 + v 32 rows) and `gate_up_proj` ([256, 64]:
  gate rows then up rows) as single linears, so lora_B has the fused output size and the merge adds B A to the
  fused weight as a whole (GGUF `attn_qkv` / `ffn_up` keep the same fused row order); no PEFT quirk otherwise.
  gemma: tied head (`lm_head` is `embed_tokens`, never adapted); GGUF `gemma` stores the RMSNorm weights + 1.
  Its logits are ~8x smaller than the other bases' (first-step logit std ~1.0 vs 7.9-8.7: the tied head is the
  embedding, std 1/sqrt(64)), so a 0.03 gap is ~0.25 on the others' scale: with 0.03 no `attn` seed passed in 300
  (a 1000-seed scan found 4 gapped seeds, none also changing every case: the three chat cases loop on one token with
  gaps 0.3-0.8; the base itself needed ~200 seeds for 0.03). gemma's threshold is therefore 0.005 (the same
  relative margin as ~0.04 on the others; `min_gap_threshold` / `min_gap_note` in its references.json), and its
  recorded gaps go down to 0.0054 (still 5x the tests' 1e-3 logprob tolerance). Its Q8_0 deviations are ~8x
  smaller than the other bases' for the same reason.
  phi2: `q_proj k_proj v_proj dense fc1 fc2` all have biases (left alone: `bias="none"`), parallel attention + MLP
  block. Its F32 GGUF has separate `attn_q/k/v`, its Q8_0 GGUF the fused `attn_qkv` of older converters ([192, 64]:
  q, k, v rows, 64 each, and a fused bias); the references are in terms of `q_proj`/`k_proj`/`v_proj`, i.e. row
  blocks 0-63 / 64-127 / 128-191 of `attn_qkv`. Q8_0 blocks run along rows, so merging the three deltas into the
  fused tensor and re-quantizing it as a whole gives the same weights as re-quantizing each part (asserted).
- Ordering files (SPEC §3): `order_attn.json`, `order_mlp.json`, `order_all.json`, `order_attn+mlp.json`
  (`order` ["attn"], ["mlp"], ["all"], ["attn","mlp"]), `order_preload.json` (`order` ["attn"],
  `preload_adapters` [{"name": "mlp", "adapter_model_id": "adapters"}, {"name": "all", "adapter_model_id":
  "adapters"}]). Conventions: `base_model_id` "tiny/<arch>-tiny"; `layers` = every module wrapped by PEFT when
  exactly the adapters of that file (order + preload) are loaded, as base-model module names
  ("model.layers.0.self_attn.q_proj"), numbered 0,1,2,... in `named_modules()` order (layer 0's attention
  projections, then its MLP projections, then layer 1 ...). E.g. llama `order_attn.json` has 8 entries (q,k,v,o x 2
  layers), `order_mlp.json` 6, the others 14 (gemma the same; phi3: 4, 4, 8; phi2: 8 (q,k,v,dense x 2), 4
  (fc1,fc2 x 2), 12). **`preload_adapters[].adapter_model_id` is
  "adapters", a path relative to the folder holding the ordering file**, i.e. `tests/fixtures/lora/<arch>/adapters`,
  the same folder the tests pass as `adapters_model_id` (it holds `mlp/` and `all/`); resolve it in the test.
- `references.json` (compact JSON):
  - `cases`, `vocab_bytes`, `special_tokens`, `bos_id`, `eos_id`: copied from the base's references.json (mistral
    has the extra `long` case)
  - `adapters.<name>`: folder, r, lora_alpha, use_rslora, scaling, target_modules, modules (adapted module names),
    seed, strength; `sets`: set name -> active adapters
  - `lora.<set>`: PeftModel on the plain safetensors base (f32, CPU), for sets `base` (no adapter; asserted equal to
    the base's `plain` references), `attn`, `mlp`, `all`, `attn+mlp` (both adapters active at once: PEFT adds both
    LoRA outputs; asserted equal to merging both deltas by hand within 1e-4). `{source, adapters, results[]}`,
    results per case `{name, ids, text, steps[]}`, steps `{id, bytes, logprob, gap, top[8] {id, bytes, logprob}}`,
    16 greedy steps, EOS ignored, whole sequence recomputed each step (same schema as the base references;
    logprobs written with 9 significant digits).
  - `gguf_f32.<set>`: the same on the base loaded from the F32 GGUF with transformers' GGUF loader (as the base
    fixtures' gguf references; gemma and phi2: transformers cannot load GGUF `gemma` (v1) or `phi2`, so, as
    scripts/make_fixtures_archs.py recorded their base references, the file is dequantized with
    `gguf.quants.dequantize`, mapped back to safetensors names (gemma: - 1 on norm weights) and loaded into
    GemmaForCausalLM / PhiForCausalLM with the base's config). mistral: GGUF `llama`, no sliding window, so these
    differ from `lora` in every case (every prompt + 16 generated tokens is longer than the 16-token window); for
    llama, phi3, qwen2, gemma and phi2 they are identical to `lora` (same weights, same f32 computation).
  - `q8_0_first_step.<set>`: first step only, `results[]` `{name, id, bytes, logprob, gap, top[8]}`, PEFT with the
    adapter unmerged (f32) on the Q8_0 GGUF dequantized to f32 by transformers' loader (gemma, phi2: by
    `gguf.quants.dequantize` as above; phi2's fused `attn_qkv` split into q/k/v rows); with
    `max_abs_diff_top5_vs_gguf_f32` / `_vs_plain`: max over cases of max |logprob difference| over the union of the
    two first steps' top-5 ids, against the F32 GGUF / plain run of the same set.
  - `q8_0_requant_first_step.<set>`: first step on the Q8_0 base dequantized, each adapted weight += scaling B A,
    re-quantized to Q8_0 (`gguf.quants.quantize`) and dequantized: the engine's "dequantize, merge, re-quantize"
    with exact f32 activations; `max_abs_diff_top5_vs_gguf_f32`, `max_abs_diff_top5_vs_q8_0_unmerged`.
  - `summary`: min gaps per set/base, PEFT-vs-merged differences, the Q8_0 deviations. gemma also has
    `min_gap_threshold` (0.005) and `min_gap_note`.

## X-LoRA: `llama/xlora/`, `qwen2/xlora/`

`flat_d1`, `layerwise_d2`, `topk`, each a complete X-LoRA model folder (SPEC §3 layout) with its references;
`<arch>/xlora/README.md` writes down PEFT 0.21.2's X-LoRA semantics exactly (scaling pass input, classifier layout
and tensor renaming, softmax, top-k, global_scaling_weight, layer numbering) and the frozen-scalings definition.
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("archs", nargs="*", default=ARCHS)
    ap.add_argument("--no-xlora", action="store_true")
    args = ap.parse_args()
    for a in args.archs:
        if a not in ARCHS:
            ap.error(f"unknown architecture {a}; known: {', '.join(ARCHS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    infos, xinfo = {}, {}
    bad_notes, peft_says = {}, {}
    for arch in args.archs:
        base = Base(arch)
        info = build_lora(base)
        infos[arch] = info
        if arch == "llama":
            bad_notes, peft_says = build_bad(base, info["deltas"])
        if arch in XLORA_ARCHS and not args.no_xlora:
            refs = json.loads((OUT / arch / "references.json").read_text())
            xinfo[arch] = build_xlora(base, info, refs)
    if set(args.archs) == set(ARCHS) and not args.no_xlora:
        write_readme(infos, bad_notes, peft_says, xinfo)
    total = 0
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
            print(f"  {rel(p)}  {p.stat().st_size:>9}  {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
    print(f"  tests/fixtures/lora total {total} bytes")
    assert total < 8_000_000, total


if __name__ == "__main__":
    main()
