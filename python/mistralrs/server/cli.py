"""``mistralrs-serve`` / ``python -m mistralrs serve``: loads a model and serves it.

The flags mirror ``Which`` (one model source, optional adapters) and
``Runner(...)``'s arguments one to one, so whatever loads in Python serves
the same way:

    mistralrs-serve --gguf .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000
    mistralrs-serve --model-id ./my-llama --arch llama --max-seqs 32
    mistralrs-serve --gguf model.Q4_K_M.gguf --tok-model-id org/model --lora org/adapters --order order.json
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from typing import Any

from mistralrs import Architecture, Runner, Which
from mistralrs.server.app import DEFAULT_MAX_BODY_BYTES, create_app
from mistralrs.server.responses import DEFAULT_MAX_STORED
from mistralrs.server.graceful import serve

# Every architecture the engine knows, in its own order (the enum is the one list).
ARCHS = [a.value for a in vars(Architecture).values() if isinstance(a, Architecture)]
# A server holds many conversations between their turns: with 8 interleaved ones of ~1,100 tokens on
# SmolLM2, the Python API's 64 MB evicted every history before its next turn and 512 MB kept them all
# (1.6x the requests/s; docs/scaling.md). The cache still lives within --kv-cache-mb.
SERVE_PREFIX_CACHE_MB = 512
QUANT_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2K", "Q3K", "Q4K", "Q5K", "Q6K", "Q8K"]


def parser(prog: str | None = None) -> argparse.ArgumentParser:
    # Defaults are written into the help by hand: a generated "(default: ...)" would print the
    # API key taken from the environment.
    p = argparse.ArgumentParser(prog=prog, description="Serve a model over an OpenAI-compatible HTTP API.")
    m = p.add_argument_group("model (one of --gguf, --ggml, --model-id; adapters may name their base)")
    m.add_argument("--gguf", metavar="FILE",
                   help="a GGUF file (Which.GGUF); with --quantized-model-id, its name in that repo")
    m.add_argument("--ggml", metavar="FILE",
                   help="a pre-GGUF llama.cpp file (Which.GGML); needs --tok-model-id or --tokenizer-json")
    m.add_argument("--quantized-model-id", metavar="ID", help="hub repo (or folder) holding the --gguf/--ggml file")
    m.add_argument("--model-id", metavar="ID", help="a safetensors model folder or hub id (Which.Plain)")
    m.add_argument("--arch", choices=ARCHS, help="architecture of a --model-id model (GGUF files carry theirs)")
    m.add_argument("--tok-model-id", metavar="ID",
                   help="where tokenizer.json / tokenizer_config.json live; GGUF default: its own metadata")
    m.add_argument("--tokenizer-json", metavar="FILE", help="a tokenizer.json that overrides the model's")
    m.add_argument("--repeat-last-n", type=int, default=64, help="tokens the repetition penalties look back at (64)")

    a = p.add_argument_group("adapters (SPEC §3)")
    a.add_argument("--lora", metavar="ID", help="LoRA adapters (Which.Lora / LoraGGUF / LoraGGML): adapters_model_id")
    a.add_argument("--xlora", metavar="ID", help="X-LoRA model (Which.XLora / XLoraGGUF / XLoraGGML): xlora_model_id")
    a.add_argument("--order", metavar="FILE", help="the adapters' ordering file (needed with --lora/--xlora)")
    a.add_argument("--tgt-non-granular-index", type=int, metavar="K", help="X-LoRA: freeze scalings after K tokens")

    r = p.add_argument_group("runner (Runner(...) arguments)")
    r.add_argument("--max-seqs", type=int, default=16, help="sequences batched in one engine step (16)")
    r.add_argument("--no-kv-cache", action="store_true", help="recompute the whole context every step")
    r.add_argument("--prefix-cache-n", type=int, default=16,
                   help="ended sequences whose prompt prefixes are kept (16; 0: off)")
    r.add_argument("--prefix-cache-mb", type=int, default=SERVE_PREFIX_CACHE_MB,
                   help=f"memory the prefix cache keeps beyond what running sequences hold ({SERVE_PREFIX_CACHE_MB}; "
                        "the Python API's default is 64): conversations' histories between their turns, within "
                        "--kv-cache-mb")
    r.add_argument("--token-source", default="cache",
                   help='hub token: "cache" (default), "none", "literal:<tok>", "env:<VAR>", "path:<file>"')
    r.add_argument("--chat-template", metavar="TEMPLATE", help="a .json / .jinja file or a literal Jinja template")
    r.add_argument("--tool-call-parser", choices=["hermes", "llama3_json", "mistral", "generic"],
                   help="how the model writes tool calls (default: what its chat template teaches; generic for "
                        "templates without tools)")
    r.add_argument("--num-device-layers", nargs="+", metavar="DEV:N", help='layers per device, e.g. "0:20" "1:12"')
    r.add_argument("--in-situ-quant", choices=QUANT_TYPES, help="quantize plain weights as they load")
    r.add_argument("--seed", type=int, help="RNG seed of requests that give none")
    r.add_argument("--device", help='"cpu", "cuda:N" or "metal" (default: the build\'s accelerator, else cpu)')
    r.add_argument("--kv-cache-mb", type=int, help="paged KV cache budget in MB (default: a quarter of free memory)")
    r.add_argument("--kv-cache-dtype", choices=["auto", "f32", "f16", "bf16", "q8_0"], default="auto",
                   help="how cached keys and values are stored, as llama.cpp's --cache-type-k/-v (auto: the "
                        "compute dtype; f16 or q8_0 for long contexts)")
    r.add_argument("--draft-gguf", metavar="FILE", help="speculative decoding: a draft GGUF model (same tokenizer)")
    r.add_argument("--draft-model-id", metavar="ID", help="speculative decoding: a draft safetensors model (--arch)")
    r.add_argument("--speculative-gamma", type=int, default=32, help="draft tokens proposed per step (32)")

    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1; 0.0.0.0: every interface)")
    s.add_argument("--port", type=int, default=8000, help="(8000)")
    s.add_argument("--api-key", default=os.environ.get("MISTRALRS_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $MISTRALRS_API_KEY; unset: no auth)")
    s.add_argument("--served-model-name", help="model id in /v1/models and responses (default: the model file's name)")
    s.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help=f"larger request bodies get 413 ({DEFAULT_MAX_BODY_BYTES})")
    s.add_argument("--max-stored-responses", type=int, default=DEFAULT_MAX_STORED,
                   help=f"/v1/responses kept in memory for previous_response_id, least recently used dropped"
                        f" ({DEFAULT_MAX_STORED}; 0: none)")
    s.add_argument("--shutdown-grace", type=float, default=3.0,
                   help="seconds in-flight requests may finish after SIGTERM before the runner is closed (3)")
    s.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="(info)")
    s.add_argument("--no-access-log", action="store_true", help="do not log each request")

    ray = p.add_argument_group("Ray Serve (pip install 'mistralrs[ray]'; docs/scaling.md)")
    ray.add_argument("--ray", action="store_true",
                     help="serve replicas of the model on Ray Serve behind one endpoint (--host/--port)")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help='a running Ray cluster ("auto", "ray://host:10001"; default: $RAY_ADDRESS, else a local one)')
    ray.add_argument("--replicas", type=int, default=1, help="replicas, each with its own runner (1)")
    ray.add_argument("--min-replicas", type=int, help="autoscale from this many replicas (default: --replicas)")
    ray.add_argument("--max-replicas", type=int, help="autoscale up to this many replicas (default: --replicas)")
    ray.add_argument("--target-ongoing-requests", type=float,
                     help="autoscaling: requests in flight per replica to aim for (default: --max-seqs)")
    ray.add_argument("--upscale-delay-s", type=float, default=5.0,
                     help="autoscaling: seconds the load must call for more replicas before they start (5)")
    ray.add_argument("--downscale-delay-s", type=float, default=60.0,
                     help="autoscaling: seconds the load must allow fewer replicas before one stops (60)")
    ray.add_argument("--replica-cpus", type=float, default=1.0,
                     help="CPUs Ray reserves for each replica; its engine runs that many threads (1)")
    ray.add_argument("--replica-gpus", type=float, default=0.0, help="GPUs Ray reserves for each replica (0)")
    ray.add_argument("--router", choices=["prefix", "pow2"], default="prefix",
                     help="prefix: to the replica most likely to hold the prompt's cached prefix unless it is "
                          "much busier; pow2: Ray's default, the less busy of two random replicas (prefix)")
    return p


def _file(path: str, repo: str | None) -> tuple[str, str]:
    """(quantized_model_id, quantized_filename) of a --gguf/--ggml value."""
    if repo:
        return repo, path
    f = pathlib.Path(path)
    return str(f.parent), f.name


def which_of(args: argparse.Namespace, p: argparse.ArgumentParser) -> Which:
    """The ``Which`` variant the flags describe; ``p.error`` (exit 2) for combinations that name none."""
    sources = [flag for flag, v in (("--gguf", args.gguf), ("--ggml", args.ggml), ("--model-id", args.model_id)) if v]
    if len(sources) > 1:
        p.error(f"give only one of {', '.join(sources)}")
    if args.lora and args.xlora:
        p.error("give --lora or --xlora, not both")
    if (args.lora or args.xlora) and not args.order:
        p.error("--lora and --xlora need --order (the ordering file)")
    if args.tgt_non_granular_index is not None and not args.xlora:
        p.error("--tgt-non-granular-index applies to --xlora only")
    common = {"tokenizer_json": args.tokenizer_json, "repeat_last_n": args.repeat_last_n}
    if args.gguf or args.ggml:
        qid, qfile = _file(args.gguf or args.ggml, args.quantized_model_id)
        f = {"tok_model_id": args.tok_model_id, "quantized_model_id": qid, "quantized_filename": qfile, **common}
        base, lora, xlora = ((Which.GGUF, Which.LoraGGUF, Which.XLoraGGUF) if args.gguf
                             else (Which.GGML, Which.LoraGGML, Which.XLoraGGML))
        if args.lora:
            return lora(adapters_model_id=args.lora, order=args.order, **f)
        if args.xlora:
            return xlora(xlora_model_id=args.xlora, order=args.order, tgt_non_granular_index=args.tgt_non_granular_index, **f)
        return base(**f)
    if args.tok_model_id or args.quantized_model_id:
        p.error("--tok-model-id and --quantized-model-id go with --gguf/--ggml")
    if not (args.model_id or args.lora or args.xlora):
        p.error("name a model: --gguf FILE, --ggml FILE or --model-id ID --arch ARCH")
    if not args.arch:
        p.error("--arch is required for safetensors models")
    if args.lora:
        return Which.Lora(arch=args.arch, adapters_model_id=args.lora, order=args.order, model_id=args.model_id, **common)
    if args.xlora:
        return Which.XLora(arch=args.arch, xlora_model_id=args.xlora, order=args.order,
                           tgt_non_granular_index=args.tgt_non_granular_index, model_id=args.model_id, **common)
    return Which.Plain(model_id=args.model_id, arch=args.arch, **common)


def draft_of(args: argparse.Namespace, p: argparse.ArgumentParser) -> Which | None:
    if args.draft_gguf and args.draft_model_id:
        p.error("give --draft-gguf or --draft-model-id, not both")
    if args.draft_gguf:
        qid, qfile = _file(args.draft_gguf, None)
        return Which.GGUF(tok_model_id=None, quantized_model_id=qid, quantized_filename=qfile)
    if args.draft_model_id:
        if not args.arch:
            p.error("--draft-model-id needs --arch")
        return Which.Plain(model_id=args.draft_model_id, arch=args.arch)
    return None


def model_name_of(args: argparse.Namespace) -> str:
    if args.served_model_name:
        return str(args.served_model_name)
    source = args.gguf or args.ggml or args.model_id or args.lora or args.xlora
    name = pathlib.PurePath(source.rstrip("/")).name
    return name[: -len(".gguf")] if name.endswith(".gguf") else name


# Runner(...) arguments whose flags have the same names.
_RUNNER_ARGS = ("max_seqs", "no_kv_cache", "prefix_cache_n", "prefix_cache_mb", "token_source", "speculative_gamma",
                "chat_template", "num_device_layers", "in_situ_quant", "seed", "device", "kv_cache_mb", "kv_cache_dtype")


def runner_options(args: argparse.Namespace, p: argparse.ArgumentParser) -> dict[str, Any]:
    """``Runner(**runner_options(args, p))``: what the flags load (a Ray replica builds its runner the same way)."""
    return {name: getattr(args, name) for name in _RUNNER_ARGS} | {
        "which": which_of(args, p),
        "which_draft": draft_of(args, p),
        "tool_call_format": args.tool_call_parser,
    }


def app_options(args: argparse.Namespace) -> dict[str, Any]:
    """``create_app(runner, **app_options(args))``."""
    return dict(model_name=model_name_of(args), api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                max_stored_responses=args.max_stored_responses)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    p = parser(prog)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    if args.ray:
        try:  # Ray is an optional extra: imported only when asked for
            from mistralrs.server import ray_serve
        except ImportError as e:
            p.error(f"--ray needs Ray Serve ({e}): pip install 'mistralrs[ray]'")
        return ray_serve.main(args, p)
    options = runner_options(args, p)
    try:
        runner = Runner(**options)
    except (FileNotFoundError, ValueError, NotImplementedError, RuntimeError) as e:
        print(f"{p.prog}: cannot load the model: {e}", file=sys.stderr)
        return 1
    app = create_app(runner, **app_options(args))
    logging.getLogger("mistralrs.server").info(
        "serving `%s` on http://%s:%d/v1%s", model_name_of(args), args.host, args.port,
        " (API key required)" if args.api_key else ""
    )
    return serve(app, runner, host=args.host, port=args.port, grace=args.shutdown_grace,
                 log_level=args.log_level, access_log=not args.no_access_log)
