"""What the reference-comparison tests share: sending a recorded case greedily and checking the
engine's steps against a recorded greedy run (transformers or llama.cpp)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import mistralrs
import pytest

from mistralrs import ChatCompletionRequest, CompletionRequest, Runner, Which

# The llama.cpp comparisons were settled on the CPU's SIMD kernels. Other kernels
# (MISTRALRS_CPU_KERNELS=scalar or candle, or another device) round differently, and
# the tiny random models have near ties (llama.cpp itself flips some with its KV-cache
# type): there a greedy run may take the runner-up once its lead is under NEAR_TIE.
OTHER_KERNELS = mistralrs.build_info()["cpu_kernels"] != "auto" or bool(os.environ.get("MISTRALRS_TEST_DEVICE"))
NEAR_TIE = 0.1


def by_name(results: list[dict], name: str) -> dict:
    return next(r for r in results if r["name"] == name)


def choice_text(res, kind: str) -> str:
    ch = res.choices[0]
    return ch.text if kind == "completion" else ch.message.content


def content(res) -> list:
    ch = res.choices[0]
    assert ch.logprobs is not None, "logprobs=True but the choice carries no logprobs"
    return list(ch.logprobs.content)


def send_greedy(runner: Runner, case: dict, n_steps: int):
    """The case's prompt (completion text or chat messages), greedy, n_steps tokens ignoring EOS, top-5 logprobs."""
    common = dict(model="tiny", max_tokens=n_steps, temperature=0.0, logprobs=True, top_logprobs=5, ignore_eos=True)
    if case["kind"] == "completion":
        return runner.send_completion_request(CompletionRequest(prompt=case["prompt"], **common))
    return runner.send_chat_completion_request(ChatCompletionRequest(messages=case["messages"], **common))


def greedy_agrees(res, want: list[list[int]], label: str) -> bool:
    """The engine's greedy tokens (bytes) equal `want`, the reference's. With OTHER_KERNELS a step may
    instead take a near tie the other way (the reference's token is the engine's runner-up within
    NEAR_TIE); the comparison ends there, since later steps follow another prefix. Returns whether
    every step was equal."""
    lps = content(res)
    for i, (step, w) in enumerate(zip(lps, want)):
        g = list(step.bytes)
        if g == w:
            continue
        alts = {tuple(t.bytes): t.logprob for t in step.top_logprobs}
        near = tuple(w) in alts and step.logprob - alts[tuple(w)] <= NEAR_TIE
        assert OTHER_KERNELS and near, f"{label}: step {i}: got bytes {g}, the reference chose {w}"
        return False
    assert len(lps) == len(want), label
    return True


def bytes_to_ids(vocab_bytes: list[list[int]]) -> dict[tuple, set[int]]:
    """Token bytes -> ids (a SentencePiece vocabulary has several ids for some byte strings: a piece and its
    <0xNN> byte-fallback token)."""
    out: dict[tuple, set[int]] = {}
    for i, b in enumerate(vocab_bytes):
        out.setdefault(tuple(b), set()).add(i)
    return out


def check_greedy_steps(res, case: dict, ref_steps: list[dict], ref_text: str, tol: float, label: str,
                       vocab_bytes: list[list[int]], n_steps: int):
    """Greedy steps equal (token bytes), chosen and top-5 logprobs within tol, text equal."""
    b2i = bytes_to_ids(vocab_bytes)
    assert res.usage.prompt_tokens == len(case["prompt_ids"]), (label, res.usage.prompt_tokens)
    assert res.usage.completion_tokens == n_steps
    assert res.choices[0].finish_reason == "length"
    lps = content(res)
    assert len(lps) == n_steps, (label, len(lps))
    for i, (got, ref) in enumerate(zip(lps, ref_steps)):
        where = f"{label} step {i}"
        assert list(got.bytes) == ref["bytes"], (
            f"{where}: token bytes {list(got.bytes)} ({got.token!r}) != reference id {ref['id']} bytes {ref['bytes']}")
        assert ref["id"] in b2i[tuple(got.bytes)]
        assert vocab_bytes[ref["id"]] == ref["bytes"]
        try:
            assert got.token == bytes(ref["bytes"]).decode("utf-8"), f"{where}: token text {got.token!r}"
        except UnicodeDecodeError:
            pass  # a partial UTF-8 token: its text form is not pinned down here
        assert abs(got.logprob - ref["logprob"]) <= tol, f"{where}: logprob {got.logprob} vs {ref['logprob']}"
        # top-5: sorted, each alternative within tol of the reference logprob of a token with those bytes
        tops = list(got.top_logprobs)
        assert len(tops) == 5, (where, len(tops))
        vals = [t.logprob for t in tops]
        assert vals == sorted(vals, reverse=True), f"{where}: top_logprobs not sorted: {vals}"
        assert list(tops[0].bytes) == ref["bytes"], f"{where}: greedy token is not the top alternative"
        ref_top: dict[tuple, list[float]] = {}
        for t in ref["top"]:
            ref_top.setdefault(tuple(t["bytes"]), []).append(t["logprob"])
        for t in tops:
            key = tuple(t.bytes)
            assert key in ref_top, f"{where}: alternative {t.token!r} {list(t.bytes)} not in reference top-{len(ref['top'])}"
            assert min(abs(t.logprob - v) for v in ref_top[key]) <= tol, (
                f"{where}: alternative {t.token!r} {t.logprob} vs {ref_top[key]}")
        # every reference top-5 token clearly above the reference's 6th must be returned
        ref_sorted = sorted(ref["top"], key=lambda t: -t["logprob"])
        sixth = ref_sorted[5]["logprob"]
        got_keys = {tuple(t.bytes) for t in tops}
        for t in ref_sorted[:5]:
            if t["logprob"] > sixth + 2 * tol:
                assert tuple(t["bytes"]) in got_keys, f"{where}: reference alternative id {t['id']} missing"
    assert choice_text(res, case["kind"]) == ref_text, f"{label}: text differs"


class RunnerCache:
    """Runners by key, each loaded once (loading is the slow part), and each (key, case name)'s greedy output sent
    once and shared by the tests that check it.  `which_for(key)` says what to load, `case_for(key, name)` which
    recorded case to send."""

    def __init__(self, which_for: Callable[[tuple], Which], case_for: Callable[[tuple, str], dict], n_steps: int):
        self.which_for, self.case_for, self.n_steps = which_for, case_for, n_steps
        self.runners: dict[tuple, Runner] = {}
        self.outputs: dict[tuple, object] = {}

    def get(self, key: tuple) -> Runner:
        if key not in self.runners:
            self.runners[key] = Runner(which=self.which_for(key))
        return self.runners[key]

    def run(self, key: tuple, name: str):
        okey = key + (name,)
        if okey not in self.outputs:
            self.outputs[okey] = send_greedy(self.get(key), self.case_for(key, name), self.n_steps)
        return self.outputs[okey]

    def close(self):
        for r in self.runners.values():
            r.close()


class TinyModels:
    """A test module's committed tiny models: `fix/<name>-tiny/` with model.safetensors, `<name>-tiny-f32.gguf` /
    `<name>-tiny-q8_0.gguf`, references.json (transformers) and references_llamacpp.json (llama.cpp), written by
    `made_by`.  `arch[name]`: the `arch` the plain model is loaded with (default: the name)."""

    def __init__(self, fix: Path, names: list[str], made_by: str, arch: dict[str, str] | None = None):
        self.fix, self.made_by, self.arch = fix, made_by, arch or {}
        self.names = [n for n in names if (self.folder(n) / "references.json").exists()]
        self._json: dict[Path, dict] = {}

    def folder(self, name: str) -> Path:
        return self.fix / f"{name}-tiny"

    def f32_file(self, name: str) -> str:
        return f"{name}-tiny-f32.gguf"

    def q8_file(self, name: str) -> str:
        return f"{name}-tiny-q8_0.gguf"

    def _load(self, path: Path) -> dict:
        if path not in self._json:
            if not path.exists():
                pytest.fail(f"missing fixture {path}; run {self.made_by}")
            self._json[path] = json.loads(path.read_text())
        return self._json[path]

    def refs(self, name: str) -> dict:
        return self._load(self.folder(name) / "references.json")

    def lcpp(self, name: str) -> dict:
        return self._load(self.folder(name) / "references_llamacpp.json")

    def cases(self, names: list[str] | None = None, kind: str | None = None) -> list[tuple[str, str]]:
        """(model, case name) of every recorded case (of `kind`: completion or chat)."""
        return [(n, c["name"]) for n in (self.names if names is None else names) for c in self.refs(n)["cases"]
                if kind is None or c["kind"] == kind]

    def get_case(self, name: str, case: str) -> dict:
        return next(c for c in self.refs(name)["cases"] if c["name"] == case)

    def which_for(self, key: tuple) -> Which:
        """("plain", name) or ("gguf", name, file)."""
        kind, name = key[0], key[1]
        d = self.folder(name)
        if kind == "plain":
            return Which.Plain(model_id=str(d), arch=self.arch.get(name, name))
        if not (d / key[2]).exists():
            pytest.fail(f"missing fixture {d / key[2]}")
        return Which.GGUF(tok_model_id=None, quantized_model_id=str(d), quantized_filename=key[2])

    def runners(self, n_steps: int) -> RunnerCache:
        return RunnerCache(self.which_for, lambda key, case: self.get_case(key[1], case), n_steps)
