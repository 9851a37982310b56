#!/usr/bin/env python3
"""Decode speed with LoRA adapters on SmolLM2-135M-Instruct (GGUF Q4_1).

Synthetic rank-8 PEFT adapters on every attention and MLP projection of all 30 layers (random A and B, small
enough to keep the text sane) are written to a temporary folder, then each configuration runs in a fresh
subprocess, interleaved over --reps repetitions, and the medians are printed:

  base          Which.GGUF, no adapters
  merged-1      Which.LoraGGUF, one adapter merged into the weights at load (re-quantized to Q4_1)
  unmerged-1/4  Which.LoraGGUF with 4 adapters loaded unmerged (`preload_adapters`), 1 active
  unmerged-4/4  the same, all 4 active in every request

Decode speed is ``usage.avg_compl_tok_per_sec`` of a greedy request generating --decode tokens (EOS ignored), one
request at a time; ``batch8`` is the tokens/s of 8 concurrent requests (each with its own adapter set of the
unmerged configurations: sets rotate over the 4 adapters and the base).

    python scripts/bench_adapters.py --reps 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

SCRIPTS = pathlib.Path(__file__).resolve().parent
# SmolLM2-135M: hidden 576, intermediate 1536, 30 layers, 9 query heads and 3 KV heads of 64.
HIDDEN, INTER, LAYERS, KV_DIM = 576, 1536, 30, 192
SHAPES = {  # module -> (in, out)
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, KV_DIM), "self_attn.v_proj": (HIDDEN, KV_DIM),
    "self_attn.o_proj": (HIDDEN, HIDDEN), "mlp.gate_proj": (HIDDEN, INTER), "mlp.up_proj": (HIDDEN, INTER),
    "mlp.down_proj": (INTER, HIDDEN),
}
RANK = 8
CONFIGS = ["base", "merged-1", "unmerged-1/4", "unmerged-4/4"]


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray]):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = np.ascontiguousarray(t, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def make_adapters(root: pathlib.Path, n: int = 4):
    rng = np.random.default_rng(0)
    layers = {}
    for i in range(LAYERS):
        for m in SHAPES:
            layers[f"model.layers.{i}.{m}"] = len(layers)
    for a in range(n):
        d = root / f"a{a}"
        d.mkdir(parents=True)
        tensors = {}
        for i in range(LAYERS):
            for m, (fan_in, fan_out) in SHAPES.items():
                p = f"base_model.model.model.layers.{i}.{m}"
                tensors[f"{p}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(fan_in), (RANK, fan_in))
                tensors[f"{p}.lora_B.weight"] = rng.normal(0, 0.01, (fan_out, RANK))
        write_safetensors(d / "adapter_model.safetensors", tensors)
        (d / "adapter_config.json").write_text(json.dumps({
            "peft_type": "LORA", "r": RANK, "lora_alpha": 16, "bias": "none",
            "target_modules": sorted({m.split(".")[-1] for m in SHAPES})}))
    (root / "order_merged.json").write_text(json.dumps({"order": ["a0"], "layers": layers}))
    (root / "order_unmerged.json").write_text(json.dumps({
        "order": ["a0"], "layers": layers,
        "preload_adapters": [{"name": f"a{a}", "adapter_model_id": str(root)} for a in range(1, n)]}))


def worker(args) -> dict:
    from mistralrs import CompletionRequest, Runner, Which

    gguf = pathlib.Path(args.gguf)
    common = dict(tok_model_id=None, quantized_model_id=str(gguf.parent), quantized_filename=gguf.name)
    root = pathlib.Path(args.adapters)
    if args.worker == "base":
        which = Which.GGUF(**common)
    else:
        order = "order_merged.json" if args.worker == "merged-1" else "order_unmerged.json"
        which = Which.LoraGGUF(**common, adapters_model_id=str(root), order=str(root / order))
    t0 = time.perf_counter()
    runner = Runner(which=which, max_seqs=8)
    load_s = time.perf_counter() - t0
    active = {"unmerged-1/4": ["a0"], "unmerged-4/4": ["a0", "a1", "a2", "a3"]}.get(args.worker)
    if active:
        runner.activate_adapters(active)

    def req(adapters=None, n=args.decode):
        return CompletionRequest(prompt="Once upon a time, in a small village by the sea,", model="bench",
                                 max_tokens=n, temperature=0.0, ignore_eos=True, adapters=adapters)

    runner.send_completion_request(req(n=4))  # warm-up
    usage = runner.send_completion_request(req()).usage
    sets = [None] * 8
    if args.worker.startswith("unmerged"):
        sets = [["a0"], ["a1"], ["a2"], ["a3"], [], ["a0", "a1"], ["a2"], None]
    done = []
    t = time.perf_counter()
    threads = [threading.Thread(target=lambda s=s: done.append(runner.send_completion_request(req(s)).usage))
               for s in sets]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    return {"tg": usage.avg_compl_tok_per_sec, "batch8": sum(u.completion_tokens for u in done) / wall,
            "load_s": load_s}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--decode", type=int, default=128)
    p.add_argument("--gguf")
    p.add_argument("--adapters", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("BENCH " + json.dumps(worker(args)), flush=True)
        return 0
    if args.gguf is None:
        sys.path.insert(0, str(SCRIPTS))
        from fetch_models import model_path

        args.gguf = str(model_path("smollm2"))
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads))
    runs: dict[str, list[dict]] = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as td:
        make_adapters(pathlib.Path(td))
        for rep in range(args.reps):
            for c in (CONFIGS if rep % 2 == 0 else CONFIGS[::-1]):
                cmd = [sys.executable, __file__, "--worker", c, "--gguf", args.gguf, "--adapters", td,
                       "--decode", str(args.decode)]
                out = subprocess.run(cmd, env=env, capture_output=True, text=True)
                lines = [x for x in out.stdout.splitlines() if x.startswith("BENCH ")]
                if out.returncode or not lines:
                    raise RuntimeError(f"{c} failed:\n{out.stderr[-3000:]}")
                r = json.loads(lines[-1][6:])
                runs[c].append(r)
                print(f"  rep {rep + 1} {c:13} " + "  ".join(f"{k}={v:.1f}" for k, v in r.items()), file=sys.stderr)
    print(f"SmolLM2-135M Q4_1, rank-{RANK} adapters on q/k/v/o/gate/up/down of all {LAYERS} layers, "
          f"{args.threads} threads, median of {args.reps}")
    print(f"{'config':14}{'decode tok/s':>14}{'vs base':>9}{'batch8 tok/s':>14}{'load s':>8}")
    base = statistics.median(r["tg"] for r in runs["base"])
    for c in CONFIGS:
        tg = statistics.median(r["tg"] for r in runs[c])
        b8 = statistics.median(r["batch8"] for r in runs[c])
        ld = statistics.median(r["load_s"] for r in runs[c])
        print(f"{c:14}{tg:14.1f}{tg / base:9.2f}{b8:14.1f}{ld:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
