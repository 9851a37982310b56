#!/usr/bin/env python3
"""JSON-schema structured output on real-world schemas: mistralrs against llama.cpp.

For every schema of scripts/data/real_world_schemas.jsonl (a deterministic sample of SchemaStore,
see scripts/data/README.md) each engine is asked, greedily and with the same chat prompt, model and
max_tokens, for "a JSON document that conforms to this schema", constrained by the schema:

* mistralrs: ``ChatCompletionRequest(grammar=schema, grammar_type="json_schema")`` (llguidance); a
  ValueError at send is "does not compile";
* llama.cpp (llama-cpp-python): ``LlamaGrammar.from_json_schema`` (llama-cpp-python's own Python port
  of llama.cpp's json-schema-to-grammar, older than the C++ one) or, with ``--gbnf-tool``, llama.cpp's
  C++ ``json_schema_to_grammar`` (the one llama-server uses; build scripts/llamacpp_gbnf.cpp), then
  llama.cpp's GBNF parser; an exception or a GBNF the parser refuses is "does not compile".
  ``--x-guidance`` gives mistralrs llguidance's own options (``lenient``, ``coerce_one_of``) the same way.

Every output is parsed and validated with ``jsonschema`` (the schema's own ``$schema`` draft; ``format``
is not asserted); output that is not JSON or that ``max_tokens`` cut off is invalid.  Then the
per-token cost of constrained decoding: the same prompt again without the grammar, generating exactly
as many tokens (EOS banned), and the difference in decode time per token (medians over schemas).

Each engine runs in its own worker subprocess (a crash or a hang costs one schema, not the run) with
the same number of threads.

    python scripts/json_schema_bench.py --model smollm2 --max-tokens 256 --out /tmp/smollm2.json
    python scripts/json_schema_bench.py --model qwen --limit 20 --engines mistralrs
    python scripts/json_schema_bench.py --llamacpp-python /path/to/venv-llama/bin/python
    python scripts/json_schema_bench.py --engines llama.cpp --gbnf-tool /tmp/llamacpp-gbnf
    python scripts/json_schema_bench.py --engines mistralrs --x-guidance '{"lenient": true, "coerce_one_of": true}'
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_SCHEMAS = HERE / "data" / "real_world_schemas.jsonl"
MODEL_ALIASES = {"smollm2": "smollm2", "qwen": "qwen2.5-coder-0.5b"}
ENGINES = ("mistralrs", "llama.cpp")
MIN_OVERHEAD_TOKENS = 16
# mistralrs's defaults for a schema without "x-guidance" (mistralrs-core/src/grammar.rs): compact JSON.
COMPACT_X_GUIDANCE = {"whitespace_flexible": False, "item_separator": ", ?", "key_separator": ": ?"}  # schemas whose constrained output is shorter are left out of the per-token medians


def load_schemas(path: pathlib.Path, limit: int | None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def prompt_of(name: str, schema: dict) -> list[dict]:
    title = schema.get("title") if isinstance(schema.get("title"), str) else None
    desc = schema.get("description") if isinstance(schema.get("description"), str) else None
    lines = [f"Produce a JSON document that conforms to this schema: {(title or name).strip()}."]
    if desc:
        lines.append(" ".join(desc.split())[:300])
    props = schema.get("properties")
    if isinstance(props, dict) and props:
        lines.append("Top-level properties: " + ", ".join(list(props)[:12]) + ".")
    req = schema.get("required")
    if isinstance(req, list) and req:
        lines.append("Required: " + ", ".join(map(str, req[:12])) + ".")
    lines.append("Answer with the JSON document only.")
    return [{"role": "user", "content": "\n".join(lines)}]


# ----------------------------------------------------------------------------------- workers


class MistralrsEngine:
    def __init__(self, gguf: pathlib.Path, threads: int, x_guidance: dict | None = None):
        from mistralrs import ChatCompletionRequest, Runner, Which

        self.Req = ChatCompletionRequest
        # No prefix cache: the unconstrained rerun of a prompt must pay its prefill like the first run.
        self.runner = Runner(
            which=Which.GGUF(tok_model_id=None, quantized_model_id=str(gguf.parent), quantized_filename=gguf.name),
            prefix_cache_n=0,
        )
        self.x_guidance = x_guidance

    def constrained(self, msgs, schema, max_tokens):
        if self.x_guidance is not None:  # llguidance's own options, on top of the compact defaults
            schema = {**schema, "x-guidance": {**COMPACT_X_GUIDANCE, **self.x_guidance}}
        req = self.Req(model="m", messages=msgs, max_tokens=max_tokens, temperature=0.0, grammar=schema,
                       grammar_type="json_schema")
        t = time.perf_counter()
        try:
            res = self.runner.send_chat_completion_request(req)
        except ValueError as e:
            return {"compiled": False, "compile_error": str(e)}
        wall = time.perf_counter() - t
        return {"compiled": True, **self._out(res, wall)}

    def free(self, msgs, n_tokens):
        req = self.Req(model="m", messages=msgs, max_tokens=n_tokens, temperature=0.0, ignore_eos=True)
        t = time.perf_counter()
        res = self.runner.send_chat_completion_request(req)
        return self._out(res, time.perf_counter() - t)

    @staticmethod
    def _out(res, wall):
        c, u = res.choices[0], res.usage
        rate = u.avg_compl_tok_per_sec
        return {"text": c.message.content, "finish_reason": c.finish_reason, "completion_tokens": u.completion_tokens,
                "wall_s": wall, "prompt_tokens": u.prompt_tokens, "prompt_s": u.total_prompt_time_sec,
                "decode_ms_per_token": 1000.0 / rate if rate > 0 else None}


class LlamaCppEngine:
    def __init__(self, gguf: pathlib.Path, threads: int, n_ctx: int, gbnf_tool: str | None = None,
                 sampling: str = "chain"):
        import llama_cpp
        from llama_cpp import Llama, LlamaGrammar

        self.lib, self.Grammar, self.gbnf_tool, self.sampling = llama_cpp, LlamaGrammar, gbnf_tool, sampling
        self.llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                         seed=0, verbose=False)
        self.vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.eog = [i for i in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(self.vocab, i)]
        if sampling == "check-first":
            import numpy as np

            self.np, n = np, self.llm.n_vocab()
            self.cands = (llama_cpp.llama_token_data * n)()
            self.cands_np = np.ctypeslib.as_array(self.cands)  # structured view: id, logit, p
            self.cands_np["id"] = np.arange(n)
            self.one = (llama_cpp.llama_token_data * 1)()
            self.eog_np = np.array(self.eog, dtype=np.int64)

    def _gbnf(self, schema):
        if self.gbnf_tool:  # llama.cpp's C++ converter (scripts/llamacpp_gbnf.cpp)
            p = subprocess.run([self.gbnf_tool], input=json.dumps(schema), capture_output=True, text=True, timeout=300)
            if p.returncode != 0:
                return None, "json_schema_to_grammar: " + (p.stderr.strip() or f"exit status {p.returncode}")
            g = self.Grammar.from_string(p.stdout, verbose=False)
        else:  # llama-cpp-python's Python port
            try:
                g = self.Grammar.from_json_schema(json.dumps(schema), verbose=False)
            except BaseException as e:  # noqa: BLE001 - the converter raises anything from KeyError to RecursionError
                return None, f"json-schema-to-grammar: {type(e).__name__}: {e}"
        # llama-cpp-python hands the GBNF to llama.cpp only when sampling, and a GBNF llama.cpp's parser
        # refuses gives a NULL sampler there: ask the parser first.
        smpl = self.lib.llama_sampler_init_grammar(self.vocab, g._grammar.encode(), g._root.encode())
        if not smpl:
            return None, "llama.cpp's GBNF parser refused the converted grammar"
        self.lib.llama_sampler_free(smpl)
        return g, None

    def constrained(self, msgs, schema, max_tokens):
        t = time.perf_counter()
        g, err = self._gbnf(schema)
        compile_s = time.perf_counter() - t
        if g is None:
            return {"compiled": False, "compile_error": err}
        if self.sampling == "check-first":
            out = self._run_check_first(msgs, max_tokens, g)
        else:
            out = self._run(msgs, max_tokens, grammar=g)
        out["wall_s"] += compile_s
        return {"compiled": True, "compile_s": compile_s, **out}

    def free(self, msgs, n_tokens):
        if self.sampling == "check-first":
            return self._run_check_first(msgs, n_tokens, None)
        return self._run(msgs, n_tokens, logit_bias={i: -1e9 for i in self.eog})

    def _prompt_tokens(self, msgs):
        """The prompt create_chat_completion builds (chat template, BOS): what one token's run evaluated."""
        self.llm.reset()
        self.llm.create_chat_completion(messages=msgs, max_tokens=1, temperature=0.0)
        return list(self.llm.input_ids[: self.llm.n_tokens])

    def _run_check_first(self, msgs, max_tokens, g):
        """Greedy decoding as llama.cpp's common_sampler (llama-server) does it: the grammar checks the
        unconstrained argmax and filters the whole vocabulary only when it rejects it.  The tokens are
        those of filtering first.  g None: no grammar, EOS banned (the unconstrained rerun)."""
        lib, llm, np = self.lib, self.llm, self.np
        prompt = self._prompt_tokens(msgs)
        gs = lib.llama_sampler_init_grammar(self.vocab, g._grammar.encode(), g._root.encode()) if g else None
        n_vocab = llm.n_vocab()
        one = lib.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)
        full = lib.llama_token_data_array(data=self.cands, size=n_vocab, selected=-1, sorted=False)
        toks, finish = [], "length"
        try:
            llm.reset()
            t0 = time.perf_counter()
            llm.eval(prompt)
            t1 = time.perf_counter()
            for _ in range(max_tokens):
                logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
                if gs is None:
                    logits = logits.copy()
                    logits[self.eog_np] = -np.inf
                t = int(np.argmax(logits))
                if gs is not None:
                    self.one[0].id, self.one[0].logit, self.one[0].p = t, float(logits[t]), 0.0
                    lib.llama_sampler_apply(gs, ctypes.byref(one))
                    if not np.isfinite(self.one[0].logit):  # rejected: filter the whole vocabulary
                        self.cands_np["logit"] = logits
                        self.cands_np["id"] = np.arange(n_vocab)
                        full.size, full.selected, full.sorted = n_vocab, -1, False
                        lib.llama_sampler_apply(gs, ctypes.byref(full))
                        view = self.cands_np[: full.size]
                        k = int(np.argmax(view["logit"]))
                        if not np.isfinite(view["logit"][k]):
                            finish = "grammar_dead_end"
                            break
                        t = int(view["id"][k])
                    lib.llama_sampler_accept(gs, t)
                    if t in self.eog:
                        finish = "stop"
                        break
                toks.append(t)
                if len(toks) == max_tokens:
                    break
                llm.eval([t])
            t2 = time.perf_counter()
        finally:
            if gs is not None:
                lib.llama_sampler_free(gs)
        n = len(toks)
        text = llm.detokenize(toks).decode("utf-8", errors="replace")
        return {"text": text, "finish_reason": finish, "completion_tokens": n, "wall_s": t2 - t0,
                "prompt_tokens": len(prompt), "prompt_s": t1 - t0,
                "decode_ms_per_token": 1000.0 * (t2 - t1) / (n - 1) if n > 1 else None}

    def _run(self, msgs, max_tokens, **kw):
        lib, llm = self.lib, self.llm
        llm.reset()  # no prompt reuse from the previous request
        lib.llama_perf_context_reset(llm.ctx)
        t = time.perf_counter()
        res = llm.create_chat_completion(messages=msgs, max_tokens=max_tokens, temperature=0.0, repeat_penalty=1.0, **kw)
        wall = time.perf_counter() - t
        perf = lib.llama_perf_context(llm.ctx)
        c, u = res["choices"][0], res["usage"]
        n = u["completion_tokens"]
        prompt_s = perf.t_p_eval_ms / 1000.0
        decode_s = wall - prompt_s
        return {"text": c["message"]["content"] or "", "finish_reason": c["finish_reason"], "completion_tokens": n,
                "wall_s": wall, "prompt_tokens": u["prompt_tokens"], "prompt_s": prompt_s,
                "decode_ms_per_token": 1000.0 * decode_s / (n - 1) if n > 1 else None}


def worker(args) -> None:
    """Runs one engine over the schemas not yet in --partial, appending one JSON line per schema."""
    from fetch_models import model_path

    gguf = model_path(MODEL_ALIASES.get(args.model, args.model))
    partial = pathlib.Path(args.partial)
    done = {json.loads(line)["name"] for line in partial.read_text().splitlines()} if partial.exists() else set()
    if args.worker == "mistralrs":
        eng = MistralrsEngine(gguf, args.threads, json.loads(args.x_guidance) if args.x_guidance else None)
    else:
        eng = LlamaCppEngine(gguf, args.threads, n_ctx=2048 + args.max_tokens, gbnf_tool=args.gbnf_tool,
                             sampling=args.llama_sampling)
    current = pathlib.Path(str(partial) + ".current")
    for row in load_schemas(pathlib.Path(args.schemas), args.limit):
        if row["name"] in done:
            continue
        current.write_text(row["name"])
        msgs = prompt_of(row["name"], row["schema"])
        rec = {"name": row["name"], **eng.constrained(msgs, row["schema"], args.max_tokens)}
        n = rec.get("completion_tokens") or 0
        if args.overhead and rec["compiled"] and n >= MIN_OVERHEAD_TOKENS:
            rec["free"] = eng.free(msgs, n)
        with open(partial, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(f"{args.worker} {row['name']}: compiled={rec['compiled']} tokens={n} "
              f"finish={rec.get('finish_reason')}", file=sys.stderr, flush=True)
    current.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------- parent


def run_engine(engine: str, args, partial: pathlib.Path) -> None:
    """Runs the worker until every schema has a line; a crash or hang is recorded against its schema."""
    py = args.llamacpp_python if engine == "llama.cpp" and args.llamacpp_python else sys.executable
    env = dict(os.environ)
    for var in ("RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    current = pathlib.Path(str(partial) + ".current")
    total = len(load_schemas(pathlib.Path(args.schemas), args.limit))
    while True:
        n_done = len(partial.read_text().splitlines()) if partial.exists() else 0
        if n_done >= total:
            return
        cmd = [py, __file__, "--worker", engine, "--partial", str(partial), "--model", args.model,
               "--schemas", args.schemas, "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        if not args.overhead:
            cmd += ["--no-overhead"]
        if args.gbnf_tool and engine == "llama.cpp":
            cmd += ["--gbnf-tool", args.gbnf_tool]
        if engine == "llama.cpp":
            cmd += ["--llama-sampling", args.llama_sampling]
        if args.x_guidance and engine == "mistralrs":
            cmd += ["--x-guidance", args.x_guidance]
        p = subprocess.Popen(cmd, env=env)
        last, last_t = n_done, time.monotonic()
        while p.poll() is None:
            time.sleep(2)
            n = len(partial.read_text().splitlines()) if partial.exists() else 0
            if n != last:
                last, last_t = n, time.monotonic()
            elif time.monotonic() - last_t > args.schema_timeout:
                p.kill()
                p.wait()
                break
        if p.returncode == 0:
            continue
        if not current.exists():
            raise RuntimeError(f"{engine} worker failed (rc {p.returncode}) before its first schema")
        name = current.read_text()
        why = "timeout" if p.returncode in (-9,) else f"worker died (rc {p.returncode})"
        print(f"{engine} {name}: {why}", file=sys.stderr, flush=True)
        with open(partial, "a") as f:
            f.write(json.dumps({"name": name, "compiled": None, "crash": why}) + "\n")
        current.unlink()


def validate(rec: dict, schema: dict) -> None:
    import jsonschema

    rec.update(json_ok=False, valid=False, validation_error=None)
    if not rec.get("compiled"):
        return
    try:
        inst = json.loads(rec["text"])
    except ValueError as e:
        rec["validation_error"] = f"not JSON: {e}"
        return
    rec["json_ok"] = True
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    err = jsonschema.exceptions.best_match(cls(schema).iter_errors(inst))
    if err is None:
        rec["valid"] = True
    else:
        rec["validation_error"] = f"{'/'.join(map(str, err.absolute_path)) or '(root)'}: {err.message[:200]}"


def group_error(msg: str) -> str:
    """One line of an error message with the names and numbers in it blanked, for counting."""
    line = msg.strip().splitlines()[0] if msg.strip() else msg
    line = re.sub(r'"[^"]*"|\'[^\']*\'|`[^`]*`', "…", line)
    return re.sub(r"\d+", "N", line)[:160]


def summarize(recs: list[dict]) -> dict:
    n = len(recs)
    compiled = sum(1 for r in recs if r.get("compiled"))
    valid = sum(1 for r in recs if r.get("valid"))
    trunc = sum(1 for r in recs if r.get("finish_reason") == "length")
    not_json = sum(1 for r in recs if r.get("compiled") and not r.get("json_ok"))
    crashes = sum(1 for r in recs if r.get("crash"))
    reasons = collections.Counter(r.get("finish_reason") for r in recs if r.get("compiled"))
    over = [r for r in recs if r.get("free") and r.get("decode_ms_per_token") and r["free"].get("decode_ms_per_token")
            and r["free"]["completion_tokens"] == r["completion_tokens"]]

    def med(xs):
        return statistics.median(xs) if xs else None

    s = {
        "schemas": n, "compiled": compiled, "valid": valid, "truncated": trunc, "compiled_not_json": not_json,
        "crashed_or_timeout": crashes, "valid_of_compiled": valid / compiled if compiled else None,
        "finish_reasons": dict(reasons), "overhead_schemas": len(over),
        "median_ms_per_token_free": med([r["free"]["decode_ms_per_token"] for r in over]),
        "median_ms_per_token_constrained": med([r["decode_ms_per_token"] for r in over]),
        "median_overhead_ms_per_token": med([r["decode_ms_per_token"] - r["free"]["decode_ms_per_token"] for r in over]),
        # wall clock, whole request (prefill and grammar compilation included), same prompt and token count
        "median_overhead_ms_per_token_wall": med([(r["wall_s"] - r["free"]["wall_s"]) * 1000 / r["completion_tokens"]
                                                  for r in over]),
        "compile_errors": dict(collections.Counter(group_error(r["compile_error"]) for r in recs
                                                   if r.get("compiled") is False).most_common()),
        "invalid_reasons": dict(collections.Counter(
            ("truncated" if r.get("finish_reason") == "length" else group_error(r["validation_error"] or ""))
            for r in recs if r.get("compiled") and not r.get("valid")).most_common()),
    }
    return s


def print_table(title: str, summaries: dict[str, dict]) -> None:
    def pct(a, b):
        return f"{a:3d}/{b} ({100 * a / b:5.1f}%)" if b else "-"

    def ms(x):
        return f"{x:7.2f}" if x is not None else "      -"

    print(f"\n{title}")
    print(f"{'engine':13} {'compiled':>17} {'valid (of all)':>17} {'truncated':>17} {'crash':>5}  "
          f"{'ms/tok free':>11} {'ms/tok cons.':>12} {'overhead':>8} {'(wall)':>7}  n")
    for eng, s in summaries.items():
        n = s["schemas"]
        print(f"{eng:13} {pct(s['compiled'], n):>17} {pct(s['valid'], n):>17} {pct(s['truncated'], n):>17} "
              f"{s['crashed_or_timeout']:5d}  {ms(s['median_ms_per_token_free']):>11} "
              f"{ms(s['median_ms_per_token_constrained']):>12} {ms(s['median_overhead_ms_per_token']):>8} "
              f"{ms(s['median_overhead_ms_per_token_wall']):>7}  {s['overhead_schemas']}")
    for eng, s in summaries.items():
        if s["compile_errors"]:
            print(f"\n{eng}: does not compile")
            for msg, k in s["compile_errors"].items():
                print(f"  {k:3d}  {msg}")
        if s["invalid_reasons"]:
            print(f"{eng}: compiled but invalid")
            for msg, k in s["invalid_reasons"].items():
                print(f"  {k:3d}  {msg}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2", help="smollm2, qwen (Qwen2.5-Coder-0.5B) or a fetch_models.py name")
    ap.add_argument("--schemas", default=str(DEFAULT_SCHEMAS))
    ap.add_argument("--limit", type=int, default=None, help="only the first N schemas")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--threads", type=int, default=2, help="threads for both engines")
    ap.add_argument("--llamacpp-python", default=None, help="python of a venv with llama-cpp-python (default: this one)")
    ap.add_argument("--x-guidance", default=None, metavar="JSON",
                    help='llguidance options added to every schema sent to mistralrs, e.g. \'{"lenient": true, '
                         '"coerce_one_of": true}\' (the compact-JSON defaults are kept unless overridden)')
    ap.add_argument("--gbnf-tool", default=None, metavar="PATH",
                    help="llama.cpp: convert schemas with llama.cpp's C++ json_schema_to_grammar built from "
                         "scripts/llamacpp_gbnf.cpp (default: llama-cpp-python's LlamaGrammar.from_json_schema)")
    ap.add_argument("--llama-sampling", choices=("chain", "check-first"), default="chain",
                    help="llama.cpp greedy decoding: chain = create_chat_completion (llama-cpp-python filters the "
                         "whole vocabulary through the grammar every token); check-first = as llama-server: the "
                         "grammar checks the argmax and filters only when it rejects it (same tokens, faster)")
    ap.add_argument("--no-overhead", dest="overhead", action="store_false", help="skip the unconstrained reruns")
    ap.add_argument("--schema-timeout", type=float, default=900, help="seconds without progress before a worker is killed")
    ap.add_argument("--workdir", default=None, help="where the per-engine partial results live (resumable)")
    ap.add_argument("--out", default=None, help="write config, per-schema records and summaries as JSON")
    ap.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    ap.add_argument("--partial", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    engines = [e for e in args.engines.split(",") if e]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        ap.error(f"unknown engine(s) {bad}; known: {ENGINES}")
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="json_schema_bench_"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = load_schemas(pathlib.Path(args.schemas), args.limit)
    schemas = {r["name"]: r["schema"] for r in rows}
    tag = f"{args.model}-{args.max_tokens}"
    results, summaries = {}, {}
    for eng in engines:
        suffix = ""
        if eng == "mistralrs" and args.x_guidance:
            label, suffix = f"{eng}+xg", "-xg" + hashlib.sha1(args.x_guidance.encode()).hexdigest()[:8]
        elif eng == "llama.cpp":
            label = eng + ("(C++)" if args.gbnf_tool else "") + ("/cf" if args.llama_sampling == "check-first" else "")
            suffix = ("-cpp" if args.gbnf_tool else "") + ("-cf" if args.llama_sampling == "check-first" else "")
        else:
            label = eng
        partial = workdir / f"{eng}-{tag}{suffix}.jsonl"
        run_engine(eng, args, partial)
        recs = [json.loads(line) for line in partial.read_text().splitlines()]
        for r in recs:
            validate(r, schemas[r["name"]])
        results[label], summaries[label] = recs, summarize(recs)
    model = MODEL_ALIASES.get(args.model, args.model)
    print_table(f"{model}, {len(rows)} schemas, max_tokens {args.max_tokens}, greedy, {args.threads} threads "
                f"(ms/tok: median decode time per token over schemas with >= {MIN_OVERHEAD_TOKENS} constrained "
                f"tokens, unconstrained rerun of the same length; (wall): whole request incl. grammar compile)",
                summaries)
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(
            {"config": {"model": model, "schemas": args.schemas, "n_schemas": len(rows), "max_tokens": args.max_tokens,
                        "threads": args.threads, "engines": engines,
                        "mistralrs_x_guidance": json.loads(args.x_guidance) if args.x_guidance else None,
                        "llamacpp_converter": "C++ json_schema_to_grammar" if args.gbnf_tool
                        else "llama-cpp-python LlamaGrammar.from_json_schema",
                        "llamacpp_sampling": args.llama_sampling},
             "summary": summaries, "records": results}, indent=1))
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
