#!/usr/bin/env python3
"""Prompt and decode speed per GGUF weight type, mistralrs against llama.cpp.

SmolLM2-135M-Instruct (the Q4_1 file of scripts/fetch_models.py) is re-quantized by llama.cpp's own quantizer
(`llama_cpp.llama_model_quantize` with allow_requantize, so quality is beside the point: this measures kernels)
into one file per type, then `scripts/bench.py` times both engines on each file (interleaved runs, medians).
SmolLM2's 576-wide rows are not whole 256-blocks, so llama.cpp's K-quant files fall back to legacy types for
most tensors (its own rule); the table says what each file holds.

    python scripts/bench_types.py --llamacpp-python /work/refenv/bin/python --reps 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

SCRIPTS = pathlib.Path(__file__).resolve().parent
FTYPES = {"F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "Q2_K": 10, "Q3_K_M": 12, "Q4_K_M": 15,
          "Q5_K_M": 17, "Q6_K": 18}

QUANTIZE = r"""
import sys, llama_cpp
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = int(sys.argv[3]); p.allow_requantize = True; p.nthread = 2
sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))
"""

TYPES_OF = r"""
import sys, collections, gguf
r = gguf.GGUFReader(sys.argv[1])
print(dict(collections.Counter(t.tensor_type.name for t in r.tensors if len(t.shape) > 1)))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llamacpp-python", required=True, help="interpreter with llama-cpp-python (and gguf)")
    p.add_argument("--types", default=",".join(FTYPES))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--decode", type=int, default=64)
    args = p.parse_args()
    sys.path.insert(0, str(SCRIPTS))
    from fetch_models import model_path

    src = model_path("smollm2")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for t in args.types.split(","):
            out = pathlib.Path(td) / f"smollm2-{t.lower()}.gguf"
            subprocess.run([args.llamacpp_python, "-c", QUANTIZE, str(src), str(out), str(FTYPES[t])], check=True,
                           capture_output=True)
            held = subprocess.run([args.llamacpp_python, "-c", TYPES_OF, str(out)], capture_output=True,
                                  text=True).stdout.strip()
            js = pathlib.Path(td) / f"{t}.json"
            subprocess.run([sys.executable, str(SCRIPTS / "bench.py"), "--gguf", str(out), "--threads",
                            str(args.threads), "--reps", str(args.reps), "--decode", str(args.decode),
                            "--prompt-lens", "128", "--decode-after", "16", "--concurrent", "0",
                            "--llamacpp-python", args.llamacpp_python, "--json", str(js)],
                           check=True, capture_output=True)
            med = json.loads(js.read_text())["median"]
            m, l = med["mistralrs"], med["llama.cpp"]
            rows.append((t, held, m["pp128"], l["pp128"], m[f"tg{args.decode}"], l[f"tg{args.decode}"]))
            print(f"{t:8} pp128 {m['pp128']:7.1f} / {l['pp128']:7.1f}   tg{args.decode} "
                  f"{m[f'tg{args.decode}']:6.1f} / {l[f'tg{args.decode}']:6.1f}   {held}", file=sys.stderr)
    print(f"SmolLM2-135M re-quantized per type by llama.cpp; {args.threads} threads, median of {args.reps}; "
          f"mistralrs / llama.cpp (tok/s)")
    print(f"| type | 2-D tensors | prompt 128 | decode {args.decode} |")
    print("|---|---|---|---|")
    for t, held, mp, lp, md, ld in rows:
        print(f"| {t} | {held} | {mp:.0f} / {lp:.0f} ({mp / lp:.2f}×) | {md:.1f} / {ld:.1f} ({md / ld:.2f}×) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
