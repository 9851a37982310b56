#!/usr/bin/env python3
"""Benchmark mistralrs against llama.cpp (llama-cpp-python) on the same GGUF file.

Measured per engine, each run in a fresh subprocess (so peak RSS is the
engine's own), with the same thread count, runs interleaved and medians taken:

  pp128 / pp512   prompt processing, tokens/s, for 128- and 512-token prompts
  tg128           decode, tokens/s, 128 greedy tokens generated (EOS ignored)
  peak RSS        maximum resident set size of the process, MiB

mistralrs: prompt speed from ``usage.avg_prompt_tok_per_sec`` of a
max_tokens=1 request, decode speed from ``usage.avg_compl_tok_per_sec`` of an
``ignore_eos=True`` request.  llama.cpp: wall time of ``Llama.eval(tokens)`` on
an empty context, and a greedy loop of argmax + ``eval([token])``.  Both engines
get the same token ids (the prompt text is cut to N tokens of the GGUF's
vocabulary); each repetition uses fresh text so no prefix cache can help.

    python scripts/bench.py                                   # SmolLM2-135M Q4_1
    python scripts/bench.py --model qwen2.5-coder-0.5b --reps 5 --threads 2
    python scripts/bench.py --llamacpp-python /work/refenv/bin/python
    python scripts/bench.py --gguf path/to/model.gguf
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import resource
import statistics
import subprocess
import sys
import time

SCRIPTS = pathlib.Path(__file__).resolve().parent
LLAMACPP_INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python==0.3.36   # builds from source, ~10 min'

WORDS = (
    "the of and to in is was for on that with as by at from his her an were which are this be had not "
    "river mountain city engine market history science garden window music winter summer ocean forest "
    "language number system people government company problem question student teacher morning evening "
    "bridge castle village island valley desert library museum hospital station kitchen painting letter"
).split()


def prompt_text(rep: int, n_words: int) -> str:
    """Different plain-English-looking text for every repetition (defeats prefix caches)."""
    rng = random.Random(1000 + rep)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


# --------------------------------------------------------------------------- workers (run in a subprocess)


def worker_mistralrs(args) -> dict:
    from mistralrs import CompletionRequest, Runner, Which

    gguf = pathlib.Path(args.gguf)
    t0 = time.perf_counter()
    runner = Runner(
        which=Which.GGUF(tok_model_id=None, quantized_model_id=str(gguf.parent), quantized_filename=gguf.name)
    )
    load_s = time.perf_counter() - t0

    def complete(ids, max_tokens):
        req = CompletionRequest(
            prompt=runner.detokenize(ids), model="bench", max_tokens=max_tokens, temperature=0.0, ignore_eos=True
        )
        t = time.perf_counter()
        res = runner.send_completion_request(req)
        return res.usage, time.perf_counter() - t

    def ids_for(n, salt):
        ids = runner.tokenize(prompt_text(args.rep * 10 + salt, 2 * n))
        return ids[:n]

    complete(ids_for(32, 9), 4)  # warm-up: first-call allocations, thread pools
    out = {"engine": "mistralrs", "load_s": load_s}
    for n in args.prompt_lens:
        usage, wall = complete(ids_for(n, n), 1)
        rate = usage.avg_prompt_tok_per_sec or usage.prompt_tokens / wall
        out[f"pp{n}"] = rate
        out[f"pp{n}_tokens"] = usage.prompt_tokens
    usage, _ = complete(ids_for(16, 1), args.decode)
    assert usage.completion_tokens == args.decode, usage
    out[f"tg{args.decode}"] = usage.avg_compl_tok_per_sec
    out["rss_mib"] = peak_rss_mib()
    return out


def worker_llamacpp(args) -> dict:
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(
        model_path=args.gguf,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=max(args.prompt_lens) + args.decode + 64,
        n_batch=512,
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def ids_for(n, salt):
        text = prompt_text(args.rep * 10 + salt, 2 * n)
        return llm.tokenize(text.encode(), add_bos=False, special=False)[:n]

    def prefill(ids):
        llm.reset()  # empty context: eval() drops the cached tokens past n_tokens
        t = time.perf_counter()
        llm.eval(ids)
        return time.perf_counter() - t

    def argmax_last():
        logits = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
        return int(np.argmax(np.ctypeslib.as_array(logits, shape=(n_vocab,))))

    prefill(ids_for(32, 9))  # warm-up
    out = {"engine": "llama.cpp", "load_s": load_s}
    for n in args.prompt_lens:
        ids = ids_for(n, n)
        out[f"pp{n}"] = len(ids) / prefill(ids)
        out[f"pp{n}_tokens"] = len(ids)
    prefill(ids_for(16, 1))
    t = time.perf_counter()
    for _ in range(args.decode):
        llm.eval([argmax_last()])
    out[f"tg{args.decode}"] = args.decode / (time.perf_counter() - t)
    out["rss_mib"] = peak_rss_mib()
    return out


# --------------------------------------------------------------------------- driver


def run_worker(engine: str, python: str, args, rep: int) -> dict:
    cmd = [
        python,
        str(pathlib.Path(__file__).resolve()),
        "--worker",
        engine,
        "--gguf",
        str(args.gguf),
        "--threads",
        str(args.threads),
        "--rep",
        str(rep),
        "--decode",
        str(args.decode),
        "--prompt-lens",
        ",".join(map(str, args.prompt_lens)),
    ]
    env = dict(os.environ)
    # Same thread count for every thread pool an engine might use.
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in p.stdout.splitlines() if line.startswith("BENCH ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{engine} worker failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    return json.loads(lines[-1][len("BENCH ") :])


def can_import(python: str, module: str) -> bool:
    return subprocess.run([python, "-c", f"import {module}"], capture_output=True).returncode == 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2", help="a model name of scripts/fetch_models.py (default smollm2)")
    p.add_argument("--gguf", help="a GGUF file to use instead of --model")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both engines (default: all)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions per engine (default 3)")
    p.add_argument("--decode", type=int, default=128, help="tokens to generate (default 128)")
    p.add_argument("--prompt-lens", default="128,512", help="prompt lengths in tokens (default 128,512)")
    p.add_argument("--python", default=sys.executable, help="interpreter with mistralrs installed")
    p.add_argument(
        "--llamacpp-python", default=None, help="interpreter with llama-cpp-python installed (default: --python)"
    )
    p.add_argument("--engines", default="mistralrs,llama.cpp", help="comma-separated subset to run")
    p.add_argument("--json", help="also write the raw runs and medians to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--rep", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.prompt_lens = [int(x) for x in str(args.prompt_lens).split(",")]

    if args.worker:
        out = (worker_mistralrs if args.worker == "mistralrs" else worker_llamacpp)(args)
        print("BENCH " + json.dumps(out), flush=True)
        return 0

    if args.gguf is None:
        sys.path.insert(0, str(SCRIPTS))
        from fetch_models import model_path

        args.gguf = str(model_path(args.model))
    pythons = {"mistralrs": args.python, "llama.cpp": args.llamacpp_python or args.python}
    engines = [e for e in args.engines.split(",") if e]
    if "llama.cpp" in engines and not can_import(pythons["llama.cpp"], "llama_cpp"):
        print(
            f"llama-cpp-python is not importable by {pythons['llama.cpp']}; install it with\n"
            f"    {LLAMACPP_INSTALL}\nor point --llamacpp-python at an interpreter that has it. "
            f"Running mistralrs alone.",
            file=sys.stderr,
        )
        engines.remove("llama.cpp")
    if "mistralrs" in engines and not can_import(pythons["mistralrs"], "mistralrs"):
        print(
            f"mistralrs is not importable by {pythons['mistralrs']} (bash scripts/quickstart.sh builds it)",
            file=sys.stderr,
        )
        return 1

    print(f"model {args.gguf}\nthreads {args.threads}, reps {args.reps}, decode {args.decode} tokens", file=sys.stderr)
    runs: dict[str, list[dict]] = {e: [] for e in engines}
    for rep in range(args.reps):
        order = engines if rep % 2 == 0 else engines[::-1]  # interleaved, alternating who goes first
        for e in order:
            r = run_worker(e, pythons[e], args, rep)
            runs[e].append(r)
            print(
                f"  rep {rep + 1}/{args.reps} {e:9} "
                + "  ".join(f"{k}={v:.1f}" for k, v in r.items() if isinstance(v, float)),
                file=sys.stderr,
            )

    metrics = [f"pp{n}" for n in args.prompt_lens] + [f"tg{args.decode}", "rss_mib", "load_s"]
    med = {e: {m: statistics.median(r[m] for r in runs[e]) for m in metrics} for e in engines}
    labels = {f"pp{n}": f"prompt {n} tok (tok/s)" for n in args.prompt_lens}
    labels.update(
        {f"tg{args.decode}": f"decode {args.decode} tok (tok/s)", "rss_mib": "peak RSS (MiB)", "load_s": "load (s)"}
    )
    head = f"{'median of ' + str(args.reps):28}" + "".join(f"{e:>12}" for e in engines)
    if len(engines) == 2:
        head += f"{'ratio':>9}"
    print(head)
    print("-" * len(head))
    for m in metrics:
        row = f"{labels[m]:28}" + "".join(f"{med[e][m]:12.1f}" for e in engines)
        if len(engines) == 2 and med[engines[1]][m]:
            row += f"{med[engines[0]][m] / med[engines[1]][m]:9.2f}"
        print(row)
    if len(engines) == 2:
        print(f"ratio = {engines[0]} / {engines[1]} (higher is better for tok/s, lower for RSS and load)")
    if args.json:
        pathlib.Path(args.json).write_text(
            json.dumps({"args": {k: v for k, v in vars(args).items()}, "runs": runs, "median": med}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
