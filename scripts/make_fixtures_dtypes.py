"""Build tests/fixtures/llama-tiny-bf16/: the tiny llama as a bf16 checkpoint (`torch_dtype:
bfloat16`, every tensor stored BF16), with transformers' greedy runs of it loaded as float32,
bfloat16 and float16 (eager attention, CPU) in references.json, for tests/test_dtypes.py.

    /path/to/torch-env/bin/python scripts/make_fixtures_dtypes.py

Logprobs are log-softmax of the logits widened to float64 (as scripts/make_fixtures.py records
them), whatever the compute dtype.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import N_STEPS, hf_tokenizer, run_cases, serialize_steps  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "tests" / "fixtures" / "llama-tiny"
DST = REPO / "tests" / "fixtures" / "llama-tiny-bf16"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def main() -> None:
    DST.mkdir(exist_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(SRC / f, DST / f)
    cfg = json.loads((SRC / "config.json").read_text())
    cfg["torch_dtype"] = "bfloat16"
    (DST / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    weights = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(SRC / "model.safetensors").items()}
    save_file(weights, DST / "model.safetensors", metadata={"format": "pt"})

    src_refs = json.loads((SRC / "references.json").read_text())
    table, cases = src_refs["vocab_bytes"], src_refs["cases"]
    hf_tok = hf_tokenizer(DST)
    doc = {k: src_refs[k] for k in ("schema", "n_steps", "vocab_bytes", "special_tokens", "bos_id", "eos_id", "cases")}
    doc["runs"] = {}
    runs = {}
    for name, dtype in DTYPES.items():
        model = AutoModelForCausalLM.from_pretrained(str(DST), dtype=dtype, attn_implementation="eager").eval()
        assert model.dtype == dtype, model.dtype
        res, _ = run_cases(model, cases, hf_tok, table, N_STEPS)
        runs[name] = res
        doc["runs"][name] = {
            "source": f"transformers LlamaForCausalLM, bf16 checkpoint loaded as {dtype}, eager attention, CPU",
            "results": [{"name": c["name"], "ids": r["ids"], "text": r["text"], "steps": serialize_steps(r["steps"]),
                         "min_margin": min(s["top"][0]["logprob"] - s["top"][1]["logprob"] for s in r["steps"])}
                        for c, r in zip(cases, res)],
        }
    (DST / "references.json").write_text(json.dumps(doc, separators=(",", ":")) + "\n")

    for name, res in runs.items():
        for c, r in zip(cases, res):
            print(f"{name:5} {c['name']:10} {r['ids']}")
    print(f"{'run':5} {'case':10} first departure from f32   max |first-step top-5 - f32|   min margin")
    for name in ("bf16", "f16"):
        for c, r, f in zip(cases, runs[name], runs["f32"]):
            at = next((i for i, (a, b) in enumerate(zip(r["ids"], f["ids"])) if a != b), None)
            top = [t["id"] for t in f["steps"][0]["top"]]
            d = max(abs(r["first_step_logprobs"][i] - f["first_step_logprobs"][i]) for i in top)
            m = min(s["top"][0]["logprob"] - s["top"][1]["logprob"] for s in r["steps"])
            print(f"{name:5} {c['name']:10} {str(at):26} {d:.4f}                          {m:.4f}")


if __name__ == "__main__":
    main()
