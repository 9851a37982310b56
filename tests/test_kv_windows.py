"""Sliding-window layers keep only their window (issue 25): Gemma 3's local layers look at the last 512
positions, so the keys and values they cached before that are given back to the OS once no future query
of the sequence can see them (`Runner.stats()["kv_blocks_thinned"]`), as llama.cpp keeps a window-sized
cache for such layers.

Reference: the same requests with every block kept whole (`MISTRALRS_KV_KEEP_WINDOWS=1`, the engine as it
was): a long prompt's greedy continuation and logprobs are identical; the same prompt again reuses its
cached blocks and continues identically; a request sharing only the start of that prompt, where the window
before the shared part's end was thinned, gets no cached prefix and equals a fresh runner's answer."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import model_path
from mistralrs import CompletionRequest, Runner, Which

WINDOW = 512  # Gemma 3 270M's sliding_window
BLOCK = 16
WORDS = ("river mountain city engine market history science garden window music winter summer ocean forest "
         "language number system people government company problem question student teacher morning evening "
         "bridge castle village island valley desert library museum hospital station kitchen painting").split()


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(i * 7 + seed * 13 + i // 5) % len(WORDS)] for i in range(n_words))


def runner(keep: bool, kv_cache_mb: int = 512, max_seqs: int = 2) -> Runner:
    p = model_path("gemma3-270m")
    old = os.environ.get("MISTRALRS_KV_KEEP_WINDOWS")
    os.environ["MISTRALRS_KV_KEEP_WINDOWS"] = "1" if keep else "0"
    try:
        return Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(p.parent), quantized_filename=p.name),
                      kv_cache_mb=kv_cache_mb, max_seqs=max_seqs)
    finally:
        if old is None:
            del os.environ["MISTRALRS_KV_KEEP_WINDOWS"]
        else:
            os.environ["MISTRALRS_KV_KEEP_WINDOWS"] = old


def stream(r: Runner, prompt: str, watch: bool = False):
    """Text, per-token logprobs, and (watch) the most blocks held outside the thinned ones while decoding
    (from the 8th chunk to the 20th: the prompt's last 512-token chunk, written while the window before it
    was still being read, has been thinned by then)."""
    req = CompletionRequest(prompt=prompt, model="m", max_tokens=24, temperature=0.0, ignore_eos=True,
                            logprobs=True, stream=True)
    out, lps, whole = [], [], 0
    for i, chunk in enumerate(r.send_completion_request(req)):
        out.append(chunk.choices[0].text)
        if chunk.choices[0].logprobs:
            lps += [round(lp.logprob, 4) for lp in chunk.choices[0].logprobs.content]
        if watch and 8 <= i <= 20:
            s = r.stats()
            whole = max(whole, s["kv_blocks_used"] - s["kv_blocks_thinned"])
    return "".join(out), lps, whole


def test_local_layers_keep_their_window_and_outputs_do_not_change():
    thin, keep = runner(keep=False), runner(keep=True)
    try:
        long_prompt = text(6100, 1)
        n = len(thin.tokenize(long_prompt))
        assert n >= 6000, n
        got, got_lp, whole = stream(thin, long_prompt, watch=True)
        want, want_lp, _ = stream(keep, long_prompt)
        assert (got, got_lp) == (want, want_lp)
        # Mid-generation the sequence held its blocks, all but about a window's worth thinned: the window
        # before the prompt's end (kept for the prefix cache) and the current one overlap in this short
        # generation; a block of slack, and the blocks of the 24 new tokens.
        assert whole <= WINDOW // BLOCK + 6, whole
        assert thin.stats()["kv_blocks_thinned"] >= (n - 2 * WINDOW) // BLOCK, thin.stats()
        assert keep.stats()["kv_blocks_thinned"] == 0
        # The whole prompt again: the window before its end was kept, so its cached blocks serve it.
        hits = thin.stats()["prefix_cache_hit_tokens"]
        assert stream(thin, long_prompt)[:2] == (want, want_lp)
        assert thin.stats()["prefix_cache_hit_tokens"] - hits >= n - 2 * BLOCK
        # A request sharing the first half of that prompt: the window before the end of that shared part
        # was thinned, so no cached prefix may serve it (its first new tokens would read zeros there); it
        # is computed afresh, exactly as by a runner that never saw the long prompt.
        half = long_prompt[: len(long_prompt) // 2] + " " + text(40, 2)
        hits = thin.stats()["prefix_cache_hit_tokens"]
        got_half = stream(thin, half)[:2]
        assert thin.stats()["prefix_cache_hit_tokens"] == hits
        fresh = runner(keep=True)
        try:
            assert got_half == stream(fresh, half)[:2]
        finally:
            fresh.close()
    finally:
        thin.close()
        keep.close()


def concurrent(r: Runner, prompts: list[str]):
    """Greedy texts of `prompts` sent at once, and what `r.stats()` showed while they ran: the most blocks
    held, the most sequences running, and each poll's budget (bytes used + cached + free)."""
    outs: list[str | None] = [None] * len(prompts)

    def go(i: int) -> None:
        req = CompletionRequest(prompt=prompts[i], model="m", max_tokens=8, temperature=0.0, ignore_eos=True)
        outs[i] = r.send_completion_request(req).choices[0].text

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    held = running = 0
    budgets = set()
    while any(t.is_alive() for t in threads):
        s = r.stats()
        held, running = max(held, s["kv_blocks_used"]), max(running, s["seqs_running"])
        budgets.add(s["kv_bytes_used"] + s["kv_bytes_cached"] + s["kv_bytes_free"])
        time.sleep(0.005)
    for t in threads:
        t.join()
    return outs, held, running, budgets


def test_thinned_blocks_count_back_in_the_budget():
    """96 MB holds 170 whole blocks (2,720 tokens) of Gemma 3 270M's f32 cache: one 1,900-token prompt at a
    time with every layer kept. A thinned block costs only its 3 global layers of 18, so three such prompts
    run together in the same budget, and answer as the engine that keeps every block does."""
    thin, keep = runner(keep=False, kv_cache_mb=96, max_seqs=3), runner(keep=True, kv_cache_mb=96, max_seqs=3)
    try:
        prompts = [text(1900, seed) for seed in (3, 4, 5)]
        assert all(1800 <= len(thin.tokenize(p)) <= 2000 for p in prompts)
        total = thin.stats()["kv_blocks_total"]
        budget = total * thin.stats()["kv_block_bytes"]
        assert total == 96 * 2**20 // thin.stats()["kv_block_bytes"] == 170
        got, held, running, budgets = concurrent(thin, prompts)
        want, keep_held, _, _ = concurrent(keep, prompts)
        assert got == want
        # Together the three held far more blocks than the budget has whole ones, within the same bytes.
        assert held > 1.5 * total and running == 3, (held, running)
        assert budgets == {budget}
        assert keep_held <= total
        s, k = thin.stats(), keep.stats()
        assert s["preemptions"] < k["preemptions"], (s["preemptions"], k["preemptions"])
        assert s["kv_bytes_used"] == 0 and s["kv_bytes_cached"] + s["kv_bytes_free"] == budget
    finally:
        thin.close()
        keep.close()


def test_one_prompt_longer_than_the_whole_blocks_runs_alone():
    """The same 96 MB holds 2,720 tokens with every block whole. One 4,000-token prompt is admitted all the
    same: beyond two windows and a step's tokens its blocks cost only their 3 global layers of 18, so it can
    always finish alone. It answers as the engine that keeps every block does in a budget that holds it
    whole. Where blocks stay whole (every block kept, or two choices sharing the prompt's blocks) the same
    request is refused when sent, as before."""
    thin, keep_small, keep_big = (runner(keep=False, kv_cache_mb=96), runner(keep=True, kv_cache_mb=96),
                                  runner(keep=True, kv_cache_mb=512))
    try:
        prompt = text(4000, 6)
        n = len(thin.tokenize(prompt))
        assert 2720 + 512 < n < 5000, n

        def ask(r: Runner, **kw):
            req = CompletionRequest(prompt=prompt, model="m", max_tokens=24, temperature=0.0, ignore_eos=True,
                                    logprobs=True, **kw)
            c = r.send_completion_request(req).choices[0]
            return c.text, [round(lp.logprob, 4) for lp in c.logprobs.content]

        got = ask(thin)
        assert got == ask(keep_big)
        s = thin.stats()
        assert s["kv_blocks_thinned"] > 0 and s["preemptions"] == 0
        for r, kw in ((keep_small, {}), (thin, {"n_choices": 2})):
            with pytest.raises(ValueError, match="does not fit in the KV cache"):
                ask(r, **kw)
    finally:
        for r in (thin, keep_small, keep_big):
            r.close()
