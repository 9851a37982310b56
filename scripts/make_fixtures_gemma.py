#!/usr/bin/env python3
"""Build the tiny random Gemma 2 / Gemma 3 reference fixtures (issue 14) and record llama.cpp on their GGUFs.

    python scripts/make_fixtures_gemma.py [gemma2 gemma3 gemma3-mm]      # default: all three
    python scripts/make_fixtures_gemma.py gemma3 --seed N                 # skip the seed search

Needs torch, transformers (5.x), tokenizers, safetensors, gguf, accelerate and llama-cpp-python (0.3.x).  Same
recipe and JSON schema as scripts/make_fixtures_archs.py (whose helpers, and make_fixtures.py's, it imports): a
random f32 transformers model (eager attention, fixed seed), saved with save_pretrained and its config.json
rewritten in the layout the real checkpoints have, tokenizer files, generation_config.json, GGUF conversions with
llama.cpp's tensor names and metadata keys, references.json (transformers) and references_llamacpp.json
(llama-cpp-python on every GGUF file, F32 and default F16 KV cache).  Unlike the other tiny fixtures, llama.cpp is
recorded here, not by scripts/record_llamacpp.py.  Deterministic: a rerun rewrites identical files (measured:
gemma2 ~20 s, gemma3 ~6 min of seed search on 1 thread, gemma3-mm ~1 min).

Seeds (seed_ok): the first seed from SEED_START whose plain greedy output has >= 4 distinct ids in every case
(no collapse into repeating one token) and a top-1/top-2 logit gap > 0.03 at every greedy step of every prompt,
for the safetensors model and for the GGUF semantics below; for files with a Q8_0 GGUF also for the Q8_0-
dequantized weights, and llama.cpp itself on the Q8_0 file must keep gaps > 0.01 and give the same ids with its
default F16 KV cache (so the recorded llama.cpp Q8_0 greedy text is no knife edge; on the chosen seeds llama.cpp's
Q8_0 greedy equals transformers on the dequantized weights for all 16 steps of every prompt).
Weights: linear N(0, 1/fan_in); (1 + w) norms with w = s - 1, s ~ U(0.6, 1.4) (exact in f32, so the GGUF's w + 1
converts back bit-exactly); final norm s with random signs (tied head, see make_fixtures.random_model);
embeddings N(0, 0.5^2).  gemma2 (no Q/K norm, soft-capped): embeddings N(0, 0.35^2), q_proj/k_proj 1.6x larger
(sharper attention; without it greedy collapses into one repeated token) and the final norm's s scaled 3.5x
(multiples of 2^-10): logits up to ~50, so the final cap 40 bites and gaps stay usable.

All three models: hidden 64, 4 heads / 2 KV heads, head_dim 32 (!= 64/4), query_pre_attn_scalar 24 (!= head_dim,
!= hidden/heads), intermediate 128 GeGLU (gelu_pytorch_tanh), vocab 384, ctx 256, sqrt(hidden) embedding scale,
tied head, four (1 + w) RMSNorms per layer (input, post-attention, pre-feedforward, post-feedforward) with w drawn
around 0 (final norm: random signs, see make_fixtures.random_model), sliding window 8 on the local layers, every
prompt 20-60 tokens (longer than the window, and the 16 greedy steps go further).  Tokenizer: the gemma-tiny
byte-level BPE (tests/fixtures/gemma-tiny/tokenizer.json, same 380 ordinary tokens and merges) with its four
special tokens renamed to Gemma's: <bos>=0, <eos>=1, <start_of_turn>=2, <end_of_turn>=3; Gemma's own chat
templates (bos_token first, `assistant` -> `model`, content trimmed); generation_config eos [<eos>, <end_of_turn>].

  gemma2     Gemma2ForCausalLM, 4 layers, sliding/global alternating (layers 0,2 local; no layer_types in
             config.json: transformers' and llama.cpp's default pattern 2), rope_theta 1e4, attention-logit
             soft-capping 8.0 and final-logit soft-capping 40.0 (both bite: the pre-cap maxima are recorded),
             legacy config.json as gemma-2-2b-it has it (`cache_implementation: hybrid`, eos list), Gemma 2 chat
             template (no system role).  GGUF `gemma2`: F32 and Q8_0.
  gemma3     Gemma3ForCausalLM (model_type gemma3_text), 7 layers with layer_types 5 local : 1 global (layers 0-4
             and 6 local, 5 global: the last layer is local, so "global = last layer" is wrong), Q/K RMSNorm
             (1 + w) per head, rope_theta 1e6 on global layers and rope_local_base_freq 1e4 on local ones, no
             soft-capping, config.json as gemma-3-270m has it (top-level rope_theta, rope_local_base_freq,
             rope_scaling null, layer_types, _sliding_window_pattern 6), Gemma 3 chat template (system text
             prepended to the first user turn).  GGUF `gemma3`: F32 and Q8_0, without rope.freq_base_swa (as the
             real gemma-3-270m GGUF: llama.cpp's default 1e4 applies).
  gemma3-mm  Gemma3ForConditionalGeneration layout (as gemma-3-4b-it): config.json model_type gemma3 with
             text_config (gemma3_text, no layer_types / sliding_window_pattern / rope_theta /
             rope_local_base_freq: the defaults 6, 1e6 and 1e4 apply) and a tiny vision_config; model.safetensors
             with the hub checkpoints' names language_model.model.* for the text model plus
             vision_tower.vision_model.* and multi_modal_projector.* tensors a text-only loader must skip;
             rope_scaling {rope_type: linear, factor: 8}, which transformers (and llama.cpp) apply to the global
             (full_attention) layers only; 7 layers as gemma3.  GGUF `gemma3` F32 with rope.scaling.type linear, rope.scaling.factor 8 and
             rope.freq_base_swa 1e4 (what llama.cpp's current converter writes).  References from transformers
             Gemma3ForConditionalGeneration on text ids, checked equal to Gemma3ForCausalLM on the text config.

GGUF conversion (llama.cpp's conversion/gemma.py, vendored llama.cpp of llama-cpp-python 0.3.36): every
`*norm.weight` (input/post-attention/pre-/post-feedforward, q_norm/k_norm, final norm) stored with +1 added;
no output.weight (tied); Q/K rows not permuted; tensor names
  token_embd, output_norm, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, post_attention_norm,
  ffn_norm (= pre_feedforward_layernorm), ffn_gate, ffn_up, ffn_down, post_ffw_norm} [+ attn_q_norm, attn_k_norm
  for gemma3]
and keys {arch}.context_length / embedding_length / block_count / feed_forward_length / attention.head_count /
attention.head_count_kv / attention.layer_norm_rms_epsilon / attention.key_length / attention.value_length /
attention.sliding_window, gemma2.attn_logit_softcapping, gemma2.final_logit_softcapping (gemma2 has no
rope.freq_base key: llama.cpp's default 1e4), gemma3.rope.freq_base [+ rope.freq_base_swa, rope.scaling.type,
rope.scaling.factor for gemma3-mm].  The local/global pattern is not in the file: llama.cpp uses 2 (gemma2) and
6 (gemma3), layer il local iff il % n < n - 1.

GGUF semantics differ from the safetensors model in one respect: llama.cpp scales attention by
1/sqrt(key_length) (1/sqrt(hidden/heads) only for the 27B layer counts 46 / 62; src/models/gemma2.cpp and
gemma3.cpp) and never reads query_pre_attn_scalar, which no GGUF key carries.  So the GGUF references
(`gguf[<file>].results`) are transformers on the GGUF's dequantized weights with query_pre_attn_scalar :=
head_dim (32), i.e. what llama.cpp computes, and llama.cpp's F32 results are checked against them (greedy equal on
every step; first-step top-5 within ~2e-3 .. 6e-3, which ggml's f16-table GELU explains: transformers with that
GELU emulated is within 3e-4, `first_step_top5_max_abs_diff_vs_transformers_ggml_gelu`); they differ from
`plain` on purpose (0.4-0.6 in first-step logprobs; `sensitivity.query_pre_attn_scalar_head_dim`).
transformers' own GGUF loader (`from_pretrained(dir, gguf_file=...)`) is recorded too
(`gguf[<file>].transformers_gguf_loader`): it reads neither the soft-capping keys nor the rope scaling keys and
leaves query_pre_attn_scalar at its default 256, so it is a third, different model (`config_differences`).

references.json adds to the archs schema: `eos_ids`, `loaded_config` (layer_types and rope parameters as
transformers reads config.json), `sensitivity` (what switching each Gemma feature off does to the greedy ids and
first-step logprobs: sliding window, soft-capping, Q/K norm weights, per-layer-type rope base,
query_pre_attn_scalar), `softcapping` (gemma2: the caps and the pre-cap maxima), `without_rope_scaling` /
`text_only_causal_lm` (gemma3-mm), per GGUF file `metadata`, `greedy_ids_equal_to_plain` and
`transformers_gguf_loader`.  references_llamacpp.json has record_llamacpp.py's archs schema plus
`first_step_top5_max_abs_diff_vs_transformers_plain_qpas24` and (F32) `..._ggml_gelu`.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as M  # sets torch threads, determinism, offline env
import make_fixtures_archs as A
import numpy as np
import torch

FIX = M.FIX
MODELS = ["gemma2", "gemma3", "gemma3-mm"]
FOLDER = {"gemma2": "gemma2-tiny", "gemma3": "gemma3-tiny", "gemma3-mm": "gemma3-mm-tiny"}
GGUF_ARCH = {"gemma2": "gemma2", "gemma3": "gemma3", "gemma3-mm": "gemma3"}
HF_CLASS = {"gemma2": "Gemma2ForCausalLM", "gemma3": "Gemma3ForCausalLM",
            "gemma3-mm": "Gemma3ForConditionalGeneration"}
QUANTS = {"gemma2": ["F32", "Q8_0"], "gemma3": ["F32", "Q8_0"], "gemma3-mm": ["F32"]}
SEED_START = {"gemma2": 10000, "gemma3": 6400, "gemma3-mm": 12000}
N_LAYERS = {"gemma2": 4, "gemma3": 7, "gemma3-mm": 7}

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, CTX = 64, 4, 2, 32, 128, 256
QPAS = 24  # query_pre_attn_scalar: attention scale 1/sqrt(24), neither head_dim (32) nor hidden/heads (16)
SLIDING_WINDOW = 8
ATTN_CAP, FINAL_CAP = 8.0, 40.0  # gemma2 soft-capping; the random model's pre-cap maxima exceed both
ROPE_GLOBAL, ROPE_LOCAL = 1e6, 1e4
LINEAR_FACTOR = 8.0
EPS = 1e-6
# weight draw (see random_model): linear N(0, GAIN^2/fan_in), embeddings N(0, EMBED_STD^2), norms w ~ U(-NORM_W, NORM_W)
# gemma2 (no Q/K norm; soft-capped): q_proj/k_proj drawn QK_GAIN x larger (sharper attention: without it greedy
# collapses into repeating one token), smaller embeddings, and the final norm's (1 + w) scaled by FINAL_NORM_SCALE
# (logits up to ~45, so the final cap 40 bites and greedy top-1/top-2 gaps stay usable)
GAIN, NORM_W = 1.0, 0.4
EMBED_STD = {"gemma2": 0.35, "gemma3": 0.5, "gemma3-mm": 0.5}
QK_GAIN = {"gemma2": 1.6, "gemma3": 1.0, "gemma3-mm": 1.0}
FINAL_NORM_SCALE = {"gemma2": 3.5, "gemma3": 1.0, "gemma3-mm": 1.0}
MIN_DISTINCT = 4  # every case's 16 greedy ids (plain model) hold at least this many distinct tokens
MIN_PROMPT, MAX_PROMPT = 20, 60

SPECIALS = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
RENAME = {"<s>": "<bos>", "</s>": "<eos>", "<|im_start|>": "<start_of_turn>", "<|im_end|>": "<end_of_turn>"}
BOS_ID, EOS_ID, EOT_ID = 0, 1, 3

# llama.cpp's models/templates/google-gemma-2-2b-it.jinja (gemma-2-*-it's tokenizer_config.json chat_template)
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)
# gemma-3-*-it's tokenizer_config.json chat_template
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)
TEMPLATE = {"gemma2": GEMMA2_TEMPLATE, "gemma3": GEMMA3_TEMPLATE, "gemma3-mm": GEMMA3_TEMPLATE}

COMPLETION_CASES = [
    {"name": "train", "prompt": "The morning train left the station at seven, carrying farmers and students."},
    {"name": "fox", "prompt": "The quick brown fox jumps over the lazy dog and the enemy."},
    {"name": "numbers", "prompt": "Hello, world! 123 + 45 = 168.\nNext line: 3.14159"},
    {"name": "unicode", "prompt": "Some words: café, naïve; Tokyo is 東京 🙂 at €5."},
]
CHAT_CASES = {
    "gemma2": [
        {"name": "capital", "messages": [{"role": "user", "content": "What is the capital of France? Answer the "
                                                                     "question briefly and politely."}]},
        {"name": "multiturn", "messages": [
            {"role": "user", "content": "Count to 3."},
            {"role": "assistant", "content": "1, 2, 3."},
            {"role": "user", "content": "Now backwards."}]},
        {"name": "recipe", "messages": [{"role": "user", "content": "  How do I make pancakes with two eggs and a "
                                                                    "cup of milk?  "}]},
    ],
    "gemma3": [
        {"name": "capital", "messages": [{"role": "user", "content": "What is the capital of France? Answer the "
                                                                     "question briefly and politely."}]},
        {"name": "system", "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Say hi to the user."}]},
        {"name": "multiturn", "messages": [
            {"role": "user", "content": "Count to 3."},
            {"role": "assistant", "content": "1, 2, 3."},
            {"role": "user", "content": "Now backwards."}]},
    ],
}
CHAT_CASES["gemma3-mm"] = CHAT_CASES["gemma3"]


# --------------------------------------------------------------------------- tokenizer
class GemmaTok:
    """gemma-tiny's byte-level BPE with Gemma's special-token names (ids 0-3)."""

    def __init__(self):
        from tokenizers import Tokenizer

        src = json.loads((FIX / "gemma-tiny" / "tokenizer.json").read_text())
        tj = copy.deepcopy(src)
        for t in tj["added_tokens"]:
            t["content"] = RENAME[t["content"]]
        tj["model"]["vocab"] = {RENAME.get(k, k): v for k, v in tj["model"]["vocab"].items()}
        pp = tj["post_processor"]
        for part in pp["single"] + pp["pair"]:
            if "SpecialToken" in part:
                part["SpecialToken"]["id"] = RENAME[part["SpecialToken"]["id"]]
        pp["special_tokens"] = {"<bos>": {"id": "<bos>", "ids": [BOS_ID], "tokens": ["<bos>"]}}
        self.json = tj
        self.raw = Tokenizer.from_str(json.dumps(tj))
        old = Tokenizer.from_file(str(FIX / "gemma-tiny" / "tokenizer.json"))
        assert self.raw.get_vocab_size() == old.get_vocab_size() == M.VOCAB_SIZE
        for i, s in enumerate(SPECIALS):
            assert self.raw.token_to_id(s) == i, s
        ov, nv = old.get_vocab(), self.raw.get_vocab()
        assert {k: v for k, v in ov.items() if v >= 4} == {k: v for k, v in nv.items() if v >= 4}
        assert src["model"]["merges"] == tj["model"]["merges"]
        self.table = self._bytes_table()

    def _bytes_table(self) -> list[list[int]]:
        table: list = [None] * M.VOCAB_SIZE
        for s, i in self.raw.get_vocab(with_added_tokens=True).items():
            table[i] = list(s.encode("utf-8")) if s in SPECIALS else [M.UNICODE_TO_BYTE[c] for c in s]
        assert all(t is not None for t in table)
        return table

    def write(self, out: Path, template: str):
        (out / "tokenizer.json").write_text(json.dumps(self.json, ensure_ascii=False, indent=2) + "\n")
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>",
               "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"], "add_bos_token": True,
               "add_eos_token": False, "model_max_length": CTX, "clean_up_tokenization_spaces": False,
               "chat_template": template}
        (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")

    def hf(self, folder: Path, template: str):
        from transformers import PreTrainedTokenizerFast

        t = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), bos_token="<bos>",
                                    eos_token="<eos>")
        t.chat_template = template
        return t

    def cases(self, hf_tok, model: str) -> list[dict]:
        out = []
        for c in COMPLETION_CASES:
            ids = hf_tok(c["prompt"])["input_ids"]
            assert ids == self.raw.encode(c["prompt"]).ids and ids[0] == BOS_ID
            assert hf_tok.decode(ids, skip_special_tokens=True) == c["prompt"]
            out.append({"name": c["name"], "kind": "completion", "prompt": c["prompt"], "prompt_ids": ids})
        for c in CHAT_CASES[model]:
            text = hf_tok.apply_chat_template(c["messages"], add_generation_prompt=True, tokenize=False)
            ids = hf_tok(text, add_special_tokens=False)["input_ids"]
            assert ids == self.raw.encode(text, add_special_tokens=False).ids, c["name"]
            assert ids[0] == BOS_ID and text.endswith("<start_of_turn>model\n")
            out.append({"name": c["name"], "kind": "chat", "messages": c["messages"], "rendered": text,
                        "prompt_ids": ids})
        for c in out:
            assert MIN_PROMPT <= len(c["prompt_ids"]) <= MAX_PROMPT, (c["name"], len(c["prompt_ids"]))
        return out


def add_vocab(w, tok: GemmaTok, template: str):
    vocab = tok.raw.get_vocab(with_added_tokens=True)
    tokens = [None] * len(vocab)
    for s, i in vocab.items():
        tokens[i] = s
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types([3 if t in SPECIALS else 1 for t in tokens])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in tok.json["model"]["merges"]])
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.add_chat_template(template)


# --------------------------------------------------------------------------- configs and models
def text_kwargs(model: str) -> dict:
    return {"vocab_size": M.VOCAB_SIZE, "hidden_size": HIDDEN, "intermediate_size": INTER,
            "num_hidden_layers": N_LAYERS[model], "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "head_dim": HEAD_DIM, "max_position_embeddings": CTX, "tie_word_embeddings": True,
            "bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": None, "query_pre_attn_scalar": QPAS,
            "sliding_window": SLIDING_WINDOW, "rms_norm_eps": EPS, "hidden_activation": "gelu_pytorch_tanh",
            "attention_bias": False}


def hf_config(model: str):
    import transformers as T

    c = text_kwargs(model)
    if model == "gemma2":
        c["eos_token_id"] = [EOS_ID, EOT_ID]
        cfg = T.Gemma2Config(attn_logit_softcapping=ATTN_CAP, final_logit_softcapping=FINAL_CAP,
                             rope_parameters={"rope_type": "default", "rope_theta": ROPE_LOCAL}, **c)
    elif model == "gemma3":
        cfg = T.Gemma3TextConfig(rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": ROPE_GLOBAL},
            "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_LOCAL}}, **c)
    else:
        c["rope_parameters"] = {"full_attention": {"rope_type": "linear", "factor": LINEAR_FACTOR,
                                                   "rope_theta": ROPE_GLOBAL},
                                "sliding_attention": {"rope_type": "default", "rope_theta": ROPE_LOCAL}}
        # a tiny SigLIP tower (2x2 patches of a 4x4 image, 4 image tokens): only there to be skipped
        vc = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": 4, "patch_size": 2, "vision_use_head": False}
        cfg = T.Gemma3Config(text_config=c, vision_config=vc, mm_tokens_per_image=4, image_token_index=M.VOCAB_SIZE,
                             boi_token_index=M.VOCAB_SIZE + 1, eoi_token_index=M.VOCAB_SIZE + 2,
                             eos_token_id=[EOS_ID, EOT_ID], tie_word_embeddings=True)
    # soft-capping needs eager attention; eager everywhere for one code path
    cfg._attn_implementation = "eager"
    text_config(cfg)._attn_implementation = "eager"
    return cfg


def text_config(cfg):
    return cfg.text_config if hasattr(cfg, "text_config") else cfg


def model_cls(model: str):
    import transformers

    return getattr(transformers, HF_CLASS[model])


def random_model(model: str, seed: int):
    cfg = hf_config(model)
    torch.manual_seed(seed)
    m = model_cls(model)(cfg).to(torch.float32).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "vision_tower" in name or "multi_modal_projector" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            elif name in ("model.norm.weight", "model.language_model.norm.weight"):
                # tied head: random signs on the final (1 + w) scale (see make_fixtures.random_model)
                s = (1.0 + (torch.rand(p.shape, generator=g) * 2 - 1) * NORM_W) * (
                    torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1)
                if FINAL_NORM_SCALE[model] != 1.0:  # multiples of 2^-10: s - 1 exact in f32
                    s = torch.round(s * FINAL_NORM_SCALE[model] * 1024) / 1024
                p.copy_(s - 1.0)
                assert torch.equal((p + 1.0) - 1.0, p), name  # the GGUF's w + 1 converts back exactly
            elif name.endswith("norm.weight"):  # (1 + w) RMSNorms, q_norm / k_norm included: w around 0
                # w = s - 1 with s in [0.6, 1.4]: exact in f32, and so is w + 1 == s (the GGUF's stored value)
                p.copy_((1.0 + (torch.rand(p.shape, generator=g) * 2 - 1) * NORM_W) - 1.0)
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g) * EMBED_STD[model])
            else:
                assert p.ndim == 2 and "proj" in name, name
                qk = QK_GAIN[model] if ("q_proj" in name or "k_proj" in name) else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * (GAIN / math.sqrt(p.shape[-1])) * qk)
    assert m.get_output_embeddings().weight.data_ptr() == m.get_input_embeddings().weight.data_ptr()
    return m


def set_head_dim_scale(m):
    """llama.cpp's attention scale: query_pre_attn_scalar := head_dim (in place)."""
    text_config(m.config).query_pre_attn_scalar = HEAD_DIM
    n = 0
    for mod in m.modules():
        if hasattr(mod, "scaling") and hasattr(mod, "q_proj"):
            mod.scaling = HEAD_DIM ** -0.5
            n += 1
    assert n == text_config(m.config).num_hidden_layers


def gguf_semantics(model):
    """The same weights with llama.cpp's attention scale."""
    m2 = copy.deepcopy(model)
    set_head_dim_scale(m2)
    return m2


def text_state_dict(model, name_prefix_out="model.") -> dict[str, np.ndarray]:
    """The text model's tensors under Gemma*ForCausalLM names (model.*), f32 numpy."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.language_model."):
            k = "model." + k[len("model.language_model."):]
        elif not k.startswith("model.layers.") and k not in ("model.embed_tokens.weight", "model.norm.weight"):
            continue
        out[k] = v.detach().to(torch.float32).numpy().copy()
    return out


# --------------------------------------------------------------------------- greedy with the KV cache
@torch.no_grad()
def kv_greedy(model, prompt_ids: list[int], n_steps=M.N_STEPS):
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    past, ids, lps = out.past_key_values, [], []
    for _ in range(n_steps):
        logits = out.logits[0, -1].to(torch.float64)
        lp = torch.log_softmax(logits, -1)
        tid = int(torch.argmax(out.logits[0, -1]))
        ids.append(tid)
        lps.append(lp.numpy())
        out = model(torch.tensor([[tid]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
    return ids, lps


def kv_check(model, cases, res) -> float:
    """Greedy with transformers' KV cache (sliding-window layers use its sliding cache) equals the
    full-recompute reference; returns the max |logprob diff| over each step's recorded top-8."""
    mx = 0.0
    for c, r in zip(cases, res):
        ids, lps = kv_greedy(model, c["prompt_ids"])
        assert ids == r["ids"], (c["name"], ids, r["ids"])
        for lp, st in zip(lps, r["steps"]):
            mx = max(mx, max(abs(lp[t["id"]] - t["logprob"]) for t in st["top"]))
    return mx


# --------------------------------------------------------------------------- probes (does the feature bite?)
class AttnProbe:
    """Records max |q.k * scaling| over unmasked positions, before soft-capping (patched eager attention)."""

    def __init__(self):
        from transformers.models.gemma2 import modeling_gemma2 as g2
        from transformers.models.gemma3 import modeling_gemma3 as g3

        self.mods = [g2, g3]
        self.orig = [g2.eager_attention_forward, g3.eager_attention_forward]
        self.max = 0.0

    def __enter__(self):
        for mod, orig in zip(self.mods, self.orig):
            def f(module, query, key, value, attention_mask, *a, _orig=orig, _mod=mod, **kw):
                k = _mod.repeat_kv(key, module.num_key_value_groups)
                s = torch.matmul(query, k.transpose(2, 3)) * kw["scaling"]
                if attention_mask is not None:
                    s = s.masked_fill(attention_mask[..., : s.shape[-1]] < -1, 0.0)
                self.max = max(self.max, float(s.abs().max()))
                return _orig(module, query, key, value, attention_mask, *a, **kw)
            mod.eager_attention_forward = f
        return self

    def __exit__(self, *exc):
        for mod, orig in zip(self.mods, self.orig):
            mod.eager_attention_forward = orig


@torch.no_grad()
def max_precap_logit(model, cases, res) -> float:
    m2 = copy.deepcopy(model)
    text_config(m2.config).final_logit_softcapping = None
    mx = 0.0
    for c, r in zip(cases, res):
        lg = m2(torch.tensor([c["prompt_ids"] + r["ids"]])).logits[0, len(c["prompt_ids"]) - 1:]
        mx = max(mx, float(lg.abs().max()))
    return mx


def ablation(model, cases, res, mutate, hf_tok, table) -> dict:
    """Greedy of a mutated copy: on which cases the 16 ids change, and the max first-step top-5 change."""
    m2 = copy.deepcopy(model)
    mutate(m2)
    r2, _ = M.run_cases(m2, cases, hf_tok, table)
    return {"cases_with_different_ids": [c["name"] for c, a, b in zip(cases, res, r2) if a["ids"] != b["ids"]],
            "max_first_step_top5_logprob_change": M.rnd(M.max_first_step_diff(r2, res))}


def set_window(m, w):
    tc = text_config(m.config)
    tc.sliding_window = w
    for mod in m.modules():
        if hasattr(mod, "sliding_window") and hasattr(mod, "q_proj") and mod.sliding_window is not None:
            mod.sliding_window = w


# --------------------------------------------------------------------------- saving
def legacy_config(model: str, cfg_json: dict) -> dict:
    """config.json as the real checkpoints have it (pre-transformers-5 keys)."""
    if model == "gemma2":
        c = {k: v for k, v in cfg_json.items() if k not in ("rope_parameters", "layer_types", "dtype",
                                                            "transformers_version", "use_bidirectional_attention")}
        c.update(rope_theta=ROPE_LOCAL, cache_implementation="hybrid", hidden_act="gelu_pytorch_tanh",
                 torch_dtype="float32")
        return c
    if model == "gemma3":
        c = {k: v for k, v in cfg_json.items() if k not in ("rope_parameters", "dtype", "transformers_version")}
        c.update(rope_theta=ROPE_GLOBAL, rope_local_base_freq=ROPE_LOCAL, rope_scaling=None,
                 _sliding_window_pattern=6, torch_dtype="float32")
        return c
    c = {k: v for k, v in cfg_json.items() if k not in ("dtype", "transformers_version")}
    tc = {k: v for k, v in c["text_config"].items() if k not in (
        "rope_parameters", "layer_types", "_sliding_window_pattern", "sliding_window_pattern", "dtype")}
    tc["rope_scaling"] = {"factor": LINEAR_FACTOR, "rope_type": "linear"}
    c["text_config"] = tc
    c["torch_dtype"] = "float32"
    return c


def save_plain(model_obj, model: str, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    model_obj.save_pretrained(str(folder), safe_serialization=True)
    if model == "gemma3-mm":
        # transformers 5 writes the text model as language_model.model.* (as gemma-3-4b-it has it) but the SigLIP
        # tower as vision_tower.*; the hub checkpoints spell it vision_tower.vision_model.* (transformers loads both)
        from safetensors.numpy import load_file, save_file

        st = load_file(str(folder / "model.safetensors"))
        st = {("vision_tower.vision_model." + k[len("vision_tower."):] if k.startswith("vision_tower.") else k): v
              for k, v in st.items()}
        save_file(st, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(legacy_config(model, cfg), indent=2, sort_keys=True) + "\n")
    (folder / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, EOT_ID], "do_sample": False}, indent=2) + "\n")


def load_plain(model: str, folder: Path):
    return model_cls(model).from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager").eval()


def check_loaded_config(model: str, m):
    tc = text_config(m.config)
    n = N_LAYERS[model]
    want = ["sliding_attention" if (i + 1) % (2 if model == "gemma2" else 6) else "full_attention" for i in range(n)]
    assert tc.layer_types == want, tc.layer_types
    assert tc.query_pre_attn_scalar == QPAS and tc.sliding_window == SLIDING_WINDOW and tc.head_dim == HEAD_DIM
    rp = tc.rope_parameters
    if model == "gemma2":
        assert tc.attn_logit_softcapping == ATTN_CAP and tc.final_logit_softcapping == FINAL_CAP
        assert rp["rope_theta"] == ROPE_LOCAL and rp["rope_type"] == "default", rp
        return {"layer_types": tc.layer_types, "rope_parameters": rp}
    assert tc.attn_logit_softcapping is None and tc.final_logit_softcapping is None
    assert rp["sliding_attention"] == {"rope_type": "default", "rope_theta": ROPE_LOCAL}, rp
    fa = rp["full_attention"]
    assert fa["rope_theta"] == ROPE_GLOBAL
    if model == "gemma3-mm":
        assert fa["rope_type"] == "linear" and fa["factor"] == LINEAR_FACTOR, fa
    else:
        assert fa["rope_type"] == "default", fa
    rot = m.model.language_model.rotary_emb if model == "gemma3-mm" else m.model.rotary_emb
    inv = {lt: getattr(rot, f"{lt}_inv_freq").double().numpy() for lt in ("sliding_attention", "full_attention")}
    j = np.arange(0, HEAD_DIM, 2, dtype=np.float64) / HEAD_DIM
    assert np.allclose(inv["sliding_attention"], 1.0 / ROPE_LOCAL ** j, rtol=1e-5)
    f = LINEAR_FACTOR if model == "gemma3-mm" else 1.0
    assert np.allclose(inv["full_attention"], 1.0 / ROPE_GLOBAL ** j / f, rtol=1e-5)
    return {"layer_types": tc.layer_types, "rope_parameters": rp,
            "inv_freq": "local layers 1/1e4^(2i/32); global layers 1/1e6^(2i/32)" + (
                " / 8 (linear: positions divided by 8, global layers only)" if model == "gemma3-mm" else "")}


# --------------------------------------------------------------------------- GGUF
def to_gguf(model: str, sd: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """model.* (Gemma*ForCausalLM names) -> llama.cpp tensors; every *norm.weight + 1 (conversion/gemma.py)."""
    out = [("token_embd.weight", sd["model.embed_tokens.weight"])]
    for i in range(N_LAYERS[model]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out += [(b + "attn_norm.weight", sd[p + "input_layernorm.weight"] + 1.0),
                (b + "attn_q.weight", sd[p + "self_attn.q_proj.weight"]),
                (b + "attn_k.weight", sd[p + "self_attn.k_proj.weight"]),
                (b + "attn_v.weight", sd[p + "self_attn.v_proj.weight"])]
        if model != "gemma2":
            out += [(b + "attn_q_norm.weight", sd[p + "self_attn.q_norm.weight"] + 1.0),
                    (b + "attn_k_norm.weight", sd[p + "self_attn.k_norm.weight"] + 1.0)]
        out += [(b + "attn_output.weight", sd[p + "self_attn.o_proj.weight"]),
                (b + "post_attention_norm.weight", sd[p + "post_attention_layernorm.weight"] + 1.0),
                (b + "ffn_norm.weight", sd[p + "pre_feedforward_layernorm.weight"] + 1.0),
                (b + "ffn_gate.weight", sd[p + "mlp.gate_proj.weight"]),
                (b + "ffn_up.weight", sd[p + "mlp.up_proj.weight"]),
                (b + "ffn_down.weight", sd[p + "mlp.down_proj.weight"]),
                (b + "post_ffw_norm.weight", sd[p + "post_feedforward_layernorm.weight"] + 1.0)]
    out.append(("output_norm.weight", sd["model.norm.weight"] + 1.0))
    return out


def from_gguf(model: str, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of to_gguf (dequantized llama.cpp tensors -> model.* names, norm weights - 1)."""
    back = {g: s for s, g in name_pairs(model)}
    assert set(back) == set(t), set(t) ^ set(back)
    return {back[g]: np.ascontiguousarray(arr - 1.0 if g.endswith("norm.weight") else arr, dtype=np.float32)
            for g, arr in t.items()}


def name_pairs(model: str) -> list[tuple[str, str]]:
    pairs = [("model.embed_tokens.weight", "token_embd.weight"), ("model.norm.weight", "output_norm.weight")]
    for i in range(N_LAYERS[model]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        m = {"input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
             "post_feedforward_layernorm": "post_ffw_norm"}
        if model != "gemma2":
            m.update({"self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm"})
        pairs += [(p + k + ".weight", b + v + ".weight") for k, v in m.items()]
    return pairs


def gguf_metadata(model: str) -> dict:
    a = GGUF_ARCH[model]
    md = {f"{a}.context_length": CTX, f"{a}.embedding_length": HIDDEN, f"{a}.block_count": N_LAYERS[model],
          f"{a}.feed_forward_length": INTER, f"{a}.attention.head_count": HEADS,
          f"{a}.attention.head_count_kv": KV_HEADS, f"{a}.attention.layer_norm_rms_epsilon": EPS,
          f"{a}.attention.key_length": HEAD_DIM, f"{a}.attention.value_length": HEAD_DIM,
          f"{a}.attention.sliding_window": SLIDING_WINDOW}
    if model == "gemma2":
        md.update({"gemma2.attn_logit_softcapping": ATTN_CAP, "gemma2.final_logit_softcapping": FINAL_CAP})
    else:
        md["gemma3.rope.freq_base"] = ROPE_GLOBAL
    if model == "gemma3-mm":
        md.update({"gemma3.rope.freq_base_swa": ROPE_LOCAL, "gemma3.rope.scaling.type": "linear",
                   "gemma3.rope.scaling.factor": LINEAR_FACTOR})
    return md


def write_gguf(model: str, path: Path, sd: dict[str, np.ndarray], qname: str, tok: GemmaTok):
    import gguf

    GT = gguf.GGMLQuantizationType
    qtype = {"F32": GT.F32, "Q8_0": GT.Q8_0}[qname]
    ftype = {"F32": gguf.LlamaFileType.ALL_F32, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[qname]
    a = GGUF_ARCH[model]
    w = gguf.GGUFWriter(str(path), a)
    w.add_name(FOLDER[model])
    w.add_vocab_size(M.VOCAB_SIZE)
    w.add_context_length(CTX)
    w.add_embedding_length(HIDDEN)
    w.add_block_count(N_LAYERS[model])
    w.add_feed_forward_length(INTER)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_layer_norm_rms_eps(EPS)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_sliding_window(SLIDING_WINDOW)
    if model == "gemma2":
        w.add_attn_logit_softcapping(ATTN_CAP)
        w.add_final_logit_softcapping(FINAL_CAP)
    else:
        w.add_rope_freq_base(ROPE_GLOBAL)
    if model == "gemma3-mm":
        w.add_rope_freq_base_swa(ROPE_LOCAL)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(LINEAR_FACTOR)
    w.add_file_type(int(ftype))
    add_vocab(w, tok, TEMPLATE[model])
    for tname, arr in to_gguf(model, sd):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if arr.ndim == 1 or qtype == GT.F32:
            w.add_tensor(tname, arr)
        else:
            q = gguf.quants.quantize(arr, qtype)
            w.add_tensor(tname, q, raw_shape=q.shape, raw_dtype=qtype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def read_gguf_metadata(path: Path, keys) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    out = {}
    for k in keys:
        v = r.fields[k].contents()
        out[k] = v
    return out


def causal_model_from_sd(model: str, sd: dict[str, np.ndarray], gguf_sem: bool):
    """A Gemma2/Gemma3ForCausalLM (eager) with the model's text config and these model.* weights."""
    import transformers as T

    cfg = copy.deepcopy(text_config(hf_config(model)))
    if gguf_sem:
        cfg.query_pre_attn_scalar = cfg.head_dim
    cls = T.Gemma2ForCausalLM if model == "gemma2" else T.Gemma3ForCausalLM
    m = cls(cfg).to(torch.float32).eval()
    missing, unexpected = m.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    m.tie_weights()
    assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    return m


def transformers_gguf_loader(folder: Path, fname: str):
    """transformers' own GGUF loader, from a folder holding only the GGUF (so no config.json is read)."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as td:
        (Path(td) / fname).symlink_to(folder / fname)
        m = AutoModelForCausalLM.from_pretrained(td, gguf_file=fname, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    return m


# --------------------------------------------------------------------------- llama.cpp
def ggml_gelu(x: torch.Tensor) -> torch.Tensor:
    """ggml's CPU GELU (GGML_GELU_FP16, ggml-cpu/vec.h ggml_vec_geglu_f32): 0 for x <= -10, x for x >= 10, else
    the f16 table entry of the f16-rounded input, i.e. f16(gelu_tanh(f16(x)))."""
    x16 = x.to(torch.float16).to(torch.float32)
    c = math.sqrt(2.0 / math.pi)
    g = (0.5 * x16 * (1.0 + torch.tanh(c * x16 * (1.0 + 0.044715 * x16 * x16)))).to(torch.float16).to(torch.float32)
    return torch.where(x <= -10.0, torch.zeros_like(x), torch.where(x >= 10.0, x, g))


class GgmlGelu(torch.nn.Module):
    def forward(self, x):
        return ggml_gelu(x)


def with_ggml_gelu(model):
    m2 = copy.deepcopy(model)
    n = 0
    for mod in m2.modules():
        if hasattr(mod, "act_fn") and hasattr(mod, "gate_proj"):
            mod.act_fn = GgmlGelu()
            n += 1
    assert n == text_config(m2.config).num_hidden_layers
    return m2


def record_llamacpp(path: Path, cases, ref_results, plain_results, decode, gelu_results=None) -> dict:
    """llama.cpp greedy on one GGUF; compared with the GGUF reference (and, for the F32 file, with the same
    reference computed with ggml's f16-table GELU, which isolates everything else)."""
    import record_llamacpp as R

    llm = R.load(path, CTX, f32_kv=True)
    llm16 = R.load(path, CTX, f32_kv=False)
    results, mx, mx_plain, mx_gelu = [], 0.0, 0.0, 0.0
    for k, (case, rres, pres) in enumerate(zip(cases, ref_results, plain_results)):
        pids = case["prompt_ids"]
        if case["kind"] == "completion":
            lt = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=True, special=False)
        else:
            lt = llm.tokenize(case["rendered"].encode("utf-8"), add_bos=False, special=True)
        steps, first = R.greedy(llm, pids)
        steps16, first16 = R.greedy(llm16, pids)
        ids, ids16 = [s["id"] for s in steps], [s["id"] for s in steps16]
        ref_first = rres["first_step_logprobs"]
        top5 = np.argsort(-ref_first, kind="stable")[:5]
        diff = float(np.max(np.abs(first[top5] - ref_first[top5])))
        diff16 = float(np.max(np.abs(first16[top5] - ref_first[top5])))
        ptop5 = np.argsort(-pres["first_step_logprobs"], kind="stable")[:5]
        dplain = float(np.max(np.abs(first[ptop5] - pres["first_step_logprobs"][ptop5])))
        mx, mx_plain = max(mx, diff), max(mx_plain, dplain)
        same = 0
        while same < M.N_STEPS and ids[same] == rres["ids"][same]:
            same += 1
        results.append({
            "name": case["name"], "ids": ids, "text": decode(ids),
            "text_llamacpp_detokenize": llm.detokenize(ids).decode("utf-8", errors="replace"),
            "steps": steps, "first_step_logprobs": [R.rnd(v) for v in first.tolist()],
            "tokenize_matches_reference": lt == pids, "ids_f16_kv_cache": ids16, "f16_kv_cache_agrees": ids16 == ids,
            "first_step_top5_max_abs_diff_f16_kv_vs_transformers": R.rnd(diff16),
            "steps_equal_to_transformers_reference": same,
            "first_step_top5_max_abs_diff_vs_transformers": R.rnd(diff),
            "first_step_top5_max_abs_diff_vs_transformers_plain_qpas24": R.rnd(dplain),
        })
        if gelu_results is not None:
            gfirst = gelu_results[k]["first_step_logprobs"]
            dg = float(np.max(np.abs(first[top5] - gfirst[top5])))
            mx_gelu = max(mx_gelu, dg)
            results[-1]["first_step_top5_max_abs_diff_vs_transformers_ggml_gelu"] = R.rnd(dg)
        print(f"  llama.cpp {path.name} {case['name']}: tok ok={lt == pids} first-step top5 diff={diff:.2e} "
              f"(f16 kv {diff16:.2e}; vs plain qpas=24 {dplain:.2e}) agree w/ transformers for {same} steps, "
              f"min gap={min(s['gap'] for s in steps):.4f}, f16-kv agrees={ids16 == ids}")
        assert lt == pids, (case["name"], lt, pids)
    del llm, llm16
    out = {"results": results, "first_step_top5_max_abs_diff_vs_transformers": R.rnd(mx),
           "first_step_top5_max_abs_diff_vs_transformers_plain_qpas24": R.rnd(mx_plain),
           "min_greedy_gap": min(s["gap"] for r in results for s in r["steps"])}
    if gelu_results is not None:
        out["first_step_top5_max_abs_diff_vs_transformers_ggml_gelu"] = R.rnd(mx_gelu)
    return out


# --------------------------------------------------------------------------- seed search
LLAMACPP_Q8_MIN_GAP = 0.01


def q8_roundtrip(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import gguf

    out = {}
    for k, v in sd.items():
        if v.ndim == 2:
            q = gguf.quants.quantize(np.ascontiguousarray(v), gguf.GGMLQuantizationType.Q8_0)
            v = gguf.quants.dequantize(q, gguf.GGMLQuantizationType.Q8_0).reshape(v.shape).astype(np.float32)
        out[k] = v
    return out


def seed_ok(model: str, seed: int, cases, hf_tok, table, tok) -> tuple[bool, str]:
    """At least MIN_DISTINCT distinct ids in every case's greedy output (no collapse into repeating one token)
    and every greedy step's top-1/top-2 logit gap > MIN_GAP for: the safetensors model, the GGUF semantics
    (query_pre_attn_scalar := head_dim), and (files with a Q8_0 GGUF) the Q8_0-dequantized weights in the GGUF
    semantics; then llama.cpp itself on the Q8_0 file: gap > LLAMACPP_Q8_MIN_GAP on every step and the same
    greedy ids with its default F16 KV cache (so the recorded llama.cpp Q8_0 text is not a knife edge)."""
    import record_llamacpp as R

    m = random_model(model, seed)
    gaps = []
    res, g = M.run_cases(m, cases, hf_tok, table)
    gaps.append(g)
    if g <= M.MIN_GAP:
        return False, f"plain gap {g:.4f}"
    distinct = min(len(set(r["ids"])) for r in res)
    if distinct < MIN_DISTINCT:
        return False, f"plain gap {g:.4f}, {distinct} distinct ids"
    _, g = M.run_cases(gguf_semantics(m), cases, hf_tok, table)
    if g <= M.MIN_GAP:
        return False, f"plain gap {gaps[0]:.4f}, head_dim-scale gap {g:.4f}"
    if "Q8_0" not in QUANTS[model]:
        return True, f"plain gap {gaps[0]:.4f}, head_dim-scale gap {g:.4f}"
    sd = text_state_dict(m)
    _, gq = M.run_cases(causal_model_from_sd(model, q8_roundtrip(sd), gguf_sem=True), cases, hf_tok, table)
    if gq <= M.MIN_GAP:
        return False, f"plain gap {gaps[0]:.4f}, head_dim-scale gap {g:.4f}, Q8_0-dequantized gap {gq:.4f}"
    with tempfile.TemporaryDirectory() as td:
        path = Path(td) / "q8.gguf"
        write_gguf(model, path, sd, "Q8_0", tok)
        llm, llm16 = R.load(path, CTX, f32_kv=True), R.load(path, CTX, f32_kv=False)
        lg, agree = float("inf"), True
        for c in cases:
            st, _ = R.greedy(llm, c["prompt_ids"])
            st16, _ = R.greedy(llm16, c["prompt_ids"])
            lg = min([lg] + [x["gap"] for x in st])
            agree = agree and [x["id"] for x in st] == [x["id"] for x in st16]
        del llm, llm16
    why = (f"plain gap {gaps[0]:.4f}, head_dim-scale gap {g:.4f}, Q8_0-dequantized gap {gq:.4f}, llama.cpp Q8_0 "
           f"gap {lg:.4f}, F16-KV agrees {agree}")
    return lg > LLAMACPP_Q8_MIN_GAP and agree, why


# --------------------------------------------------------------------------- one model
def serialize(cases, res, with_first: bool):
    out = []
    for c, r in zip(cases, res):
        e = {"name": c["name"], "ids": r["ids"], "text": r["text"], "steps": M.serialize_steps(r["steps"])}
        if with_first:
            e["first_step_logprobs"] = [M.rnd(v) for v in r["first_step_logprobs"].tolist()]
        out.append(e)
    return out


def all_ids_equal(a, b) -> bool:
    return all(x["ids"] == y["ids"] for x, y in zip(a, b))


def build(model: str, seed: int | None):
    t0 = time.time()
    d = FIX / FOLDER[model]
    d.mkdir(parents=True, exist_ok=True)
    tok = GemmaTok()
    tok.write(d, TEMPLATE[model])
    hf_tok = tok.hf(d, TEMPLATE[model])
    cases = tok.cases(hf_tok, model)
    table = tok.table
    for c in cases:
        print(f"  {model} {c['name']}: {len(c['prompt_ids'])} prompt tokens")

    if seed is None:
        for s in range(SEED_START[model], SEED_START[model] + 2000):
            ok, why = seed_ok(model, s, cases, hf_tok, table, tok)
            print(f"  {model} seed {s}: {why}")
            if ok:
                seed = s
                break
        else:
            raise SystemExit(f"{model}: no seed found")
    mem = random_model(model, seed)
    save_plain(mem, model, d)
    ref = load_plain(model, d)
    assert type(ref).__name__ == HF_CLASS[model]
    msd, rsd = mem.state_dict(), ref.state_dict()
    assert set(msd) == set(rsd)
    assert all(torch.equal(msd[k], rsd[k]) for k in msd)
    loaded = check_loaded_config(model, ref)
    plain_res, gap = M.run_cases(ref, cases, hf_tok, table)
    mem_res, _ = M.run_cases(mem, cases, hf_tok, table)
    assert all_ids_equal(plain_res, mem_res) and M.max_first_step_diff(plain_res, mem_res) == 0.0
    kv_diff = kv_check(ref, cases, plain_res)
    print(f"{model} seed {seed}, min gap {gap:.4f}; KV-cache greedy equal, max logprob diff {kv_diff:.2e}")

    # safetensors tensor names
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "np") as f:
        st_names = sorted(f.keys())
    sd = text_state_dict(ref)
    extra = {}
    if model == "gemma3-mm":
        assert all(n.startswith(("language_model.model.", "vision_tower.vision_model.", "multi_modal_projector."))
                   for n in st_names), st_names
        # the text model alone (Gemma3ForCausalLM on text_config, same weights) gives the same outputs
        causal = causal_model_from_sd(model, sd, gguf_sem=False)
        c_res, _ = M.run_cases(causal, cases, hf_tok, table)
        cdiff = M.max_first_step_diff(c_res, plain_res)
        assert all_ids_equal(c_res, plain_res) and cdiff < 1e-5, cdiff
        # the rope scaling must matter: the same weights without it (global rope unscaled)
        unscaled = copy.deepcopy(causal)
        rot = unscaled.model.rotary_emb
        rot.full_attention_inv_freq = rot.full_attention_inv_freq * LINEAR_FACTOR
        u_res, _ = M.run_cases(unscaled, cases, hf_tok, table)
        extra["text_only_causal_lm"] = {"ids_equal": True, "max_first_step_top5_diff": M.rnd(cdiff)}
        extra["without_rope_scaling"] = {
            "cases_with_different_ids": [c["name"] for c, a, b in zip(cases, plain_res, u_res) if a["ids"] != b["ids"]],
            "max_first_step_top5_logprob_change": M.rnd(M.max_first_step_diff(u_res, plain_res))}
        print(f"  text-only Gemma3ForCausalLM = ConditionalGeneration (first-step diff {cdiff:.1e}); without the "
              f"linear scaling: {extra['without_rope_scaling']}")
    else:
        assert st_names == sorted(sd), set(st_names) ^ set(sd)

    # what each Gemma feature does to this model (documentation that the fixture is sensitive to it)
    probe_model = causal_model_from_sd(model, sd, gguf_sem=False) if model == "gemma3-mm" else ref
    sens = {"no_sliding_window": ablation(probe_model, cases, plain_res, lambda m: set_window(m, CTX), hf_tok, table)}
    if model == "gemma2":
        with AttnProbe() as pr, torch.no_grad():
            for c, r in zip(cases, plain_res):
                ref(torch.tensor([c["prompt_ids"] + r["ids"]]))
        pre_attn = pr.max
        pre_logit = max_precap_logit(ref, cases, plain_res)
        print(f"  soft-capping: max |pre-cap attention score| {pre_attn:.2f} (cap {ATTN_CAP}), "
              f"max |pre-cap logit| {pre_logit:.2f} (cap {FINAL_CAP})")
        assert pre_attn > ATTN_CAP and pre_logit > FINAL_CAP, (pre_attn, pre_logit)

        def no_attn_cap(m):
            text_config(m.config).attn_logit_softcapping = None
            for mod in m.modules():
                if hasattr(mod, "attn_logit_softcapping") and hasattr(mod, "q_proj"):
                    mod.attn_logit_softcapping = None

        sens["no_attn_logit_softcapping"] = ablation(ref, cases, plain_res, no_attn_cap, hf_tok, table)
        sens["no_final_logit_softcapping"] = ablation(
            ref, cases, plain_res, lambda m: setattr(text_config(m.config), "final_logit_softcapping", None),
            hf_tok, table)
        extra["softcapping"] = {"attn_logit_softcapping": ATTN_CAP, "final_logit_softcapping": FINAL_CAP,
                                "max_abs_precap_attention_score": M.rnd(pre_attn),
                                "max_abs_precap_logit": M.rnd(pre_logit)}
    else:
        def qk_norm_off(m):
            for mod in m.modules():
                if hasattr(mod, "q_norm") and hasattr(mod, "q_proj"):
                    mod.q_norm.weight.data.zero_()
                    mod.k_norm.weight.data.zero_()

        def one_rope_base(m):
            rot = m.model.rotary_emb
            rot.sliding_attention_inv_freq = rot.full_attention_inv_freq.clone()

        sens["q_k_norm_weights_zeroed"] = ablation(probe_model, cases, plain_res, qk_norm_off, hf_tok, table)
        sens["local_layers_with_global_rope_base"] = ablation(probe_model, cases, plain_res, one_rope_base, hf_tok,
                                                              table)
    sens["query_pre_attn_scalar_head_dim"] = ablation(probe_model, cases, plain_res, set_head_dim_scale, hf_tok,
                                                      table)
    for k, v in sens.items():
        print(f"  ablation {k}: {v}")
        assert v["max_first_step_top5_logprob_change"] > 1e-3, (k, v)

    # GGUF files
    back = from_gguf(model, dict(to_gguf(model, sd)))
    assert set(back) == set(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
    gsem = gguf_semantics(probe_model)
    gsem_res, gsem_gap = M.run_cases(gsem, cases, hf_tok, table)
    gg, lc_files = {}, {}
    for qname in QUANTS[model]:
        fname = f"{FOLDER[model]}-{qname.lower()}.gguf"
        write_gguf(model, d / fname, sd, qname, tok)
        md = read_gguf_metadata(d / fname, list(gguf_metadata(model)) + ["general.architecture"])
        assert md.pop("general.architecture") == GGUF_ARCH[model]
        for k, v in gguf_metadata(model).items():
            assert (md[k] == v) if not isinstance(v, float) else abs(md[k] - v) <= 1e-6 * max(1.0, abs(v)), (k, md[k])
        gt = A.read_gguf(d / fname)
        gsd = from_gguf(model, gt)
        werr = max(float(np.max(np.abs(gsd[k] - sd[k]))) for k in sd)
        rel = max(float(np.max(np.abs(gsd[k] - sd[k])) / max(1e-12, np.max(np.abs(sd[k])))) for k in sd)
        print(f"  {fname}: dequantized vs safetensors max abs err {werr:.2e} (max relative to tensor max {rel:.2e})")
        if qname == "F32":
            assert werr == 0.0
        else:
            assert rel < 1.0 / 200, rel  # Q8_0: |error| <= block max / 254 (+ f16 scale rounding)
        m_deq = causal_model_from_sd(model, gsd, gguf_sem=True)
        res, qgap = M.run_cases(m_deq, cases, hf_tok, table)
        vs_sem = M.max_first_step_diff(res, gsem_res)
        vs_plain = M.max_first_step_diff(res, plain_res)
        same = sum(a["ids"] == b["ids"] for a, b in zip(res, gsem_res))
        same_plain = sum(a["ids"] == b["ids"] for a, b in zip(res, plain_res))
        print(f"  {fname}: vs safetensors with qpas=head_dim first-step top5 diff {vs_sem:.2e}, greedy equal "
              f"{same}/{len(cases)}; vs plain (qpas 24) {vs_plain:.2e}, greedy equal {same_plain}/{len(cases)}; "
              f"min gap {qgap:.4f}")
        if qname == "F32":
            assert vs_sem == 0.0 and same == len(cases)
        # transformers' own GGUF loader
        tfl = {}
        try:
            m_tf = transformers_gguf_loader(d, fname)
            tcf = text_config(m_tf.config)
            res_tf, _ = M.run_cases(m_tf, cases, hf_tok, table)
            cfg_diff = {}
            for k, want in (("query_pre_attn_scalar", HEAD_DIM), ("attn_logit_softcapping",
                                                                  ATTN_CAP if model == "gemma2" else None),
                            ("final_logit_softcapping", FINAL_CAP if model == "gemma2" else None),
                            ("sliding_window", SLIDING_WINDOW), ("head_dim", HEAD_DIM),
                            ("layer_types", text_config(ref.config).layer_types),
                            ("rope_parameters", text_config(ref.config).rope_parameters),
                            ("rms_norm_eps", EPS), ("tie_word_embeddings", True)):
                got = getattr(tcf, k, None)
                if isinstance(want, float) and isinstance(got, float):
                    same_v = abs(got - want) <= 1e-6 * abs(want)
                else:
                    same_v = got == want
                if not same_v:
                    cfg_diff[k] = {"transformers_gguf": got, "llama_cpp": want}
            tsd = text_state_dict(m_tf)
            wdiff = max(float(np.max(np.abs(tsd[k] - gsd[k]))) for k in gsd)
            tfl = {"class": type(m_tf).__name__, "config_differences": cfg_diff,
                   "weights_max_abs_diff_vs_own_dequantization": M.rnd(wdiff),
                   "results": [{"name": c["name"], "ids": r["ids"], "text": r["text"]} for c, r in zip(cases, res_tf)],
                   "ids_equal_to_reference": [a["ids"] == b["ids"] for a, b in zip(res_tf, res)],
                   "max_first_step_top5_diff_vs_reference": M.rnd(M.max_first_step_diff(res_tf, res))}
            print(f"  transformers GGUF loader on {fname}: {tfl['class']}, weights diff {wdiff:.1e}, config "
                  f"differences {cfg_diff}; greedy equal to the llama.cpp-semantics reference on "
                  f"{sum(tfl['ids_equal_to_reference'])}/{len(cases)} cases")
        except Exception as e:  # noqa: BLE001
            tfl = {"error": repr(e)}
            print(f"  transformers GGUF loader on {fname} fails: {e!r}")
        gg[fname] = {
            "source": ("gguf.quants.dequantize - 1 on every norm weight, loaded into transformers "
                       f"{'Gemma2ForCausalLM' if model == 'gemma2' else 'Gemma3ForCausalLM'} (eager, f32, CPU) with "
                       "the model's text config except query_pre_attn_scalar := head_dim (32), as llama.cpp "
                       "computes (it scales attention by 1/sqrt(key_length) and has no query_pre_attn_scalar); "
                       "greedy recomputing the sequence every step"),
            "tensor_types": M.gguf_tensor_types(d / fname),
            "metadata": {k: (M.rnd(v) if isinstance(v, float) else v) for k, v in md.items()},
            "results": serialize(cases, res, with_first=True),
            "max_abs_diff_vs_plain_first_step_top5": M.rnd(vs_plain),
            "max_abs_diff_vs_plain_with_head_dim_scale_first_step_top5": M.rnd(vs_sem),
            "greedy_ids_equal_to_plain": [a["ids"] == b["ids"] for a, b in zip(res, plain_res)],
            "dequantized_weights_max_abs_err": M.rnd(werr),
            "min_greedy_gap": M.rnd(qgap),
            "transformers_gguf_loader": tfl,
        }
        gg[fname]["_res"] = res
        if qname == "F32":
            gg[fname]["_gelu"], _ = M.run_cases(with_ggml_gelu(m_deq), cases, hf_tok, table, n_steps=1)

    # llama.cpp
    import llama_cpp

    for fname, info in gg.items():
        lc = record_llamacpp(d / fname, cases, info["_res"], plain_res,
                             lambda ids: hf_tok.decode(ids, skip_special_tokens=True), info.get("_gelu"))
        lc_files[fname] = lc
        if fname.endswith("-f32.gguf"):
            # llama.cpp's f16-table GELU accounts for most of its deviation: with it emulated, 1e-5 .. 3e-4
            assert lc["first_step_top5_max_abs_diff_vs_transformers_ggml_gelu"] < 1e-3, lc[
                "first_step_top5_max_abs_diff_vs_transformers_ggml_gelu"]
            assert lc["first_step_top5_max_abs_diff_vs_transformers"] < 2e-2, lc[
                "first_step_top5_max_abs_diff_vs_transformers"]
            assert all(r["steps_equal_to_transformers_reference"] == M.N_STEPS for r in lc["results"])
            assert lc["first_step_top5_max_abs_diff_vs_transformers_plain_qpas24"] > 1e-2
        print(f"== {fname}: llama.cpp max first-step top5 |llama.cpp - transformers| = "
              f"{lc['first_step_top5_max_abs_diff_vs_transformers']:.2e}; vs the plain (qpas 24) model "
              f"{lc['first_step_top5_max_abs_diff_vs_transformers_plain_qpas24']:.2e}")

    doc = {
        "schema": 1, "n_steps": M.N_STEPS, "vocab_bytes": table, "special_tokens": {s: i for i, s in enumerate(SPECIALS)},
        "bos_id": BOS_ID, "eos_id": EOS_ID, "eos_ids": [EOS_ID, EOT_ID], "cases": [M.case_entry(c) for c in cases],
        "plain": {"source": f"transformers {HF_CLASS[model]} (eager attention, f32, CPU) on model.safetensors, greedy "
                            "recomputing the whole sequence every step; checked equal to greedy with transformers' "
                            f"KV cache (max logprob diff {kv_diff:.1e})",
                  "results": serialize(cases, plain_res, with_first=False)},
        "gguf": {f: {k: v for k, v in info.items() if not k.startswith("_")} for f, info in gg.items()},
        "loaded_config": loaded,
        "sensitivity": sens,
        "seed": seed, "model": FOLDER[model], "arch": model.split("-")[0], "gguf_architecture": GGUF_ARCH[model],
        "hf_class": HF_CLASS[model], "sliding_window": SLIDING_WINDOW, "query_pre_attn_scalar": QPAS,
        "head_dim": HEAD_DIM, "min_greedy_gap": M.rnd(gap), "min_greedy_gap_head_dim_scale": M.rnd(gsem_gap),
        "versions": versions(),
    }
    doc.update(extra)
    lc_doc = {"schema": 1, "n_steps": M.N_STEPS,
              "source": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp), n_threads=2, n_ctx 256, F32 KV "
                        "cache (and the default F16 KV cache: ids_f16_kv_cache), no flash attention; prompt ids fed "
                        "as tokens in one batch, greedy argmax of llama_get_logits_ith(ctx,-1), EOS ignored; "
                        "compared with references.json gguf[<file>] (query_pre_attn_scalar := head_dim)",
              "files": lc_files}
    (d / "references.json").write_text(json.dumps(doc, separators=(",", ":"), ensure_ascii=False) + "\n")
    (d / "references_llamacpp.json").write_text(json.dumps(lc_doc, separators=(",", ":"), ensure_ascii=False) + "\n")
    total = 0
    for p in sorted(d.iterdir()):
        total += p.stat().st_size
        print(f"  {p.relative_to(M.ROOT)}  {p.stat().st_size:>9}  {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}")
    print(f"  {FOLDER[model]} total {total} bytes, {time.time() - t0:.0f} s")
    assert total < 4_500_000, total


def versions() -> dict:
    import importlib.metadata as md

    import gguf  # noqa: F401
    import transformers

    return {"transformers": transformers.__version__, "torch": torch.__version__, "gguf": md.version("gguf"),
            "tokenizers": md.version("tokenizers"), "llama_cpp_python": md.version("llama_cpp_python")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--seed", type=int, default=None, help="use this seed (one model only)")
    args = ap.parse_args()
    if args.seed is not None and len(args.models) != 1:
        ap.error("--seed needs exactly one model")
    for m in args.models:
        if m not in MODELS:
            ap.error(f"unknown model {m}; known: {', '.join(MODELS)}")
        build(m, args.seed)


if __name__ == "__main__":
    main()
