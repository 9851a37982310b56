"""LoRA adapters (SPEC §3) checked against PEFT.

Fixtures: tests/fixtures/lora/<arch>/ written by scripts/make_fixtures_lora.py (peft 0.21.2, transformers 5.23,
torch CPU f32) over the tiny random bases of tests/fixtures/<arch>-tiny/; see tests/fixtures/lora/README.md.
Bases: llama, mistral, phi3, qwen2, gemma (min greedy gap 0.005: its logits are ~8x smaller) and phi2.
Three PEFT adapters per base: `attn` (r 4, attention projections), `mlp` (r 8, MLP projections) and `all`
(r 2, every projection, rsLoRA), each changing the greedy text of every prompt. References are PeftModel's greedy
runs (16 steps, EOS ignored) with one adapter or two (`attn+mlp`, both active) on the plain base and on the F32
GGUF base, and PEFT's first step on the Q8_0 GGUF base (dequantized).

- Merged (`Which.Lora` / `Which.LoraGGUF`, ordering file without `preload_adapters`): greedy token bytes and text
  equal PEFT's, logprobs within 1e-3, on the plain base and on the F32 GGUF base; on the Q8_0 GGUF base the
  merged weight is re-quantized to Q8_0 and the first step's top-5 logprobs are within Q8_0_BOUND of PEFT's on the
  dequantized Q8_0 base (see the constant for the measured figures).
- Unmerged (`preload_adapters`): `activate_adapters` switches between sets and back to the base, a request's
  `adapters` overrides it, each output equal to PEFT's with that set; 8 concurrent requests with different sets
  each get their sequential output while sharing forward steps (`Runner.stats()`).
- Bad adapter files and requests raise ValueError naming the adapter and what is wrong; the process and other
  runners keep working.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from mistralrs import CompletionRequest, Runner, Which
from reference_support import check_greedy_steps, content, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
LORA = FIX / "lora"
ALL_ARCHS = ["llama", "mistral", "phi3", "qwen2", "gemma", "phi2"]
ARCHS = [a for a in ALL_ARCHS if (LORA / a / "references.json").exists()]
SETS = ["attn", "mlp", "all", "attn+mlp"]
N_STEPS = 16
F32_TOL = 1e-3
# First-step top-5 logprobs of the merged, re-quantized Q8_0 model against PEFT on the dequantized Q8_0 base.
# The engine differs from that reference twice: the merged weight is rounded to Q8_0 again, and activations are
# quantized to Q8_0 as llama.cpp does (the bases alone are 0.19-0.30 off their f32 references through that, see
# test_reference_archs.py).  These random tiny models magnify rounding; measured maxima per base over the four
# adapter sets: llama 0.32, mistral 0.42, phi3 0.56, qwen2 0.40.
Q8_0_BOUND = 0.65


def base_dir(arch: str) -> Path:
    return FIX / f"{arch}-tiny"


def gguf_name(arch: str, kind: str) -> str:
    return f"tiny-{kind}.gguf" if arch == "llama" else f"{arch}-tiny-{kind}.gguf"


_REFS: dict[str, dict] = {}


def refs(arch: str) -> dict:
    if arch not in _REFS:
        _REFS[arch] = json.loads((LORA / arch / "references.json").read_text())
    return _REFS[arch]


def lora_which(arch: str, order: str, **kw) -> Which:
    return Which.Lora(arch=arch, adapters_model_id=str(LORA / arch / "adapters"), order=str(LORA / arch / order),
                      model_id=kw.pop("model_id", str(base_dir(arch))), **kw)


def check_case(res, arch: str, case: dict, result: dict, label: str):
    check_greedy_steps(res, case, result["steps"], result["text"], F32_TOL, label, refs(arch)["vocab_bytes"], N_STEPS)


def results_of(arch: str, table: str, set_name: str) -> dict[str, dict]:
    return {r["name"]: r for r in refs(arch)[table][set_name]["results"]}


# ----------------------------------------------------------------------------- merged


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merged_lora_plain_matches_peft(arch, set_name):
    runner = Runner(which=lora_which(arch, f"order_{set_name}.json"))
    want = results_of(arch, "lora", set_name)
    base = results_of(arch, "lora", "base")
    for case in refs(arch)["cases"]:
        res = send_greedy(runner, case, N_STEPS)
        check_case(res, arch, case, want[case["name"]], f"{arch}/{set_name}/{case['name']}")
        assert want[case["name"]]["ids"] != base[case["name"]]["ids"]  # the adapter matters
    assert runner.adapters == refs(arch)["sets"][set_name]


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merged_lora_gguf_f32_matches_peft(arch, set_name):
    runner = Runner(which=Which.LoraGGUF(
        tok_model_id=None, quantized_model_id=str(base_dir(arch)), quantized_filename=gguf_name(arch, "f32"),
        adapters_model_id=str(LORA / arch / "adapters"), order=str(LORA / arch / f"order_{set_name}.json")))
    want = results_of(arch, "gguf_f32", set_name)
    for case in refs(arch)["cases"]:
        res = send_greedy(runner, case, N_STEPS)
        check_case(res, arch, case, want[case["name"]], f"{arch}/gguf-f32/{set_name}/{case['name']}")


@pytest.mark.parametrize("set_name", SETS)
@pytest.mark.parametrize("arch", ARCHS)
def test_merged_lora_q8_0_first_step_within_bound(arch, set_name):
    runner = Runner(which=Which.LoraGGUF(
        tok_model_id=None, quantized_model_id=str(base_dir(arch)), quantized_filename=gguf_name(arch, "q8_0"),
        adapters_model_id=str(LORA / arch / "adapters"), order=str(LORA / arch / f"order_{set_name}.json")))
    want = results_of(arch, "q8_0_first_step", set_name)
    worst = 0.0
    for case in refs(arch)["cases"]:
        ref = want[case["name"]]
        res = send_greedy(runner, case, 1)
        step = content(res)[0]
        ref_lp = {t["id"]: t["logprob"] for t in ref["top"]}
        got = {tuple(t.bytes): t.logprob for t in step.top_logprobs}
        for t in ref["top"][:5]:
            key = tuple(t["bytes"])
            if key in got:
                worst = max(worst, abs(got[key] - ref_lp[t["id"]]))
        assert list(step.bytes) == ref["bytes"] or ref["gap"] < 2 * Q8_0_BOUND, (case["name"], step.token)
    assert worst <= Q8_0_BOUND, f"{arch}/{set_name}: max first-step top-5 logprob difference {worst}"


def test_model_id_none_uses_the_ordering_files_base(tmp_path):
    arch = ARCHS[0]
    order = json.loads((LORA / arch / "order_attn.json").read_text())
    order["base_model_id"] = str(base_dir(arch))
    (tmp_path / "order.json").write_text(json.dumps(order))
    runner = Runner(which=Which.Lora(arch=arch, adapters_model_id=str(LORA / arch / "adapters"),
                                     order=str(tmp_path / "order.json"), model_id=None))
    case = refs(arch)["cases"][0]
    check_case(send_greedy(runner, case, N_STEPS), arch, case, results_of(arch, "lora", "attn")[case["name"]], "model_id=None")


# ----------------------------------------------------------------------------- unmerged


@pytest.fixture(scope="module")
def preload_runner():
    # order: ["attn"] (active by default); preload_adapters: mlp, all (loaded inactive).
    arch = ARCHS[0]
    return Runner(which=lora_which(arch, "order_preload.json"), max_seqs=8)


def _check_set(runner, set_name: str, label: str, adapters=None):
    arch = ARCHS[0]
    want = results_of(arch, "lora", set_name)
    for case in refs(arch)["cases"][:3]:
        res = send_greedy_with(runner, case, adapters)
        check_case(res, arch, case, want[case["name"]], f"{label}/{case['name']}")


def send_greedy_with(runner, case, adapters):
    from mistralrs import ChatCompletionRequest

    common = dict(model="tiny", max_tokens=N_STEPS, temperature=0.0, logprobs=True, top_logprobs=5, ignore_eos=True,
                  adapters=adapters)
    if case["kind"] == "completion":
        return runner.send_completion_request(CompletionRequest(prompt=case["prompt"], **common))
    return runner.send_chat_completion_request(ChatCompletionRequest(messages=case["messages"], **common))


def test_unmerged_activate_adapters_switches_sets(preload_runner):
    r = preload_runner
    assert r.adapters == ["attn", "mlp", "all"]
    _check_set(r, "attn", "default (order)")
    r.activate_adapters(["mlp"])
    _check_set(r, "mlp", "activate mlp")
    r.activate_adapters(["attn", "mlp"])
    _check_set(r, "attn+mlp", "activate attn+mlp")
    r.activate_adapters([])
    _check_set(r, "base", "activate [] (base)")
    r.activate_adapters(["all"])
    _check_set(r, "all", "activate all")
    r.activate_adapters(["attn"])


def test_unmerged_request_adapters_override_active_set(preload_runner):
    r = preload_runner
    r.activate_adapters(["mlp"])
    try:
        _check_set(r, "all", "request all", adapters=["all"])
        _check_set(r, "base", "request []", adapters=[])
        _check_set(r, "mlp", "active set again")
    finally:
        r.activate_adapters(["attn"])


def test_unmerged_concurrent_sets_share_steps(preload_runner):
    """8 concurrent requests over 4 adapter sets (base included) each equal their sequential output, and the
    engine ran sequences with different sets in the same forward steps."""
    arch = ARCHS[0]
    r = preload_runner
    sets = [["attn"], ["mlp"], ["attn", "mlp"], [], ["all"], ["mlp"], [], ["attn"]]
    names = {("attn",): "attn", ("mlp",): "mlp", ("attn", "mlp"): "attn+mlp", (): "base", ("all",): "all"}
    cases = refs(arch)["cases"]
    jobs = [(cases[i % len(cases)], s) for i, s in enumerate(sets)]
    sequential = [send_greedy_with(r, c, s) for c, s in jobs]
    before = r.stats()
    out: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i):
        barrier.wait()
        out[i] = send_greedy_with(r, jobs[i][0], jobs[i][1])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = r.stats()
    for i, (case, s) in enumerate(jobs):
        label = f"concurrent {i} {s}"
        check_case(out[i], arch, case, results_of(arch, "lora", names[tuple(s)])[case["name"]], label)
        a, b = content(out[i]), content(sequential[i])
        assert [list(x.bytes) for x in a] == [list(x.bytes) for x in b], label
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b)) < 1e-4, label
    assert after["mixed_adapter_steps"] > before["mixed_adapter_steps"]
    assert after["max_batch"] >= 4
    # Sharing steps: far fewer forward steps than sequence-steps.
    steps = after["steps"] - before["steps"]
    seq_steps = after["sequence_steps"] - before["sequence_steps"]
    assert steps < seq_steps / 2, (steps, seq_steps)


def test_unknown_adapter_in_request_is_value_error(preload_runner):
    with pytest.raises(ValueError, match=r"no adapter `nope`.*attn, mlp, all"):
        send_greedy_with(preload_runner, refs(ARCHS[0])["cases"][0], ["nope"])
    with pytest.raises(ValueError, match="nope"):
        preload_runner.activate_adapters(["attn", "nope"])
    _check_set(preload_runner, "attn", "after the bad request")


def test_merged_runner_refuses_switching():
    runner = Runner(which=lora_which(ARCHS[0], "order_attn.json"))
    with pytest.raises(ValueError, match="merged"):
        runner.activate_adapters(["attn"])
    with pytest.raises(ValueError, match="merged"):
        send_greedy_with(runner, refs(ARCHS[0])["cases"][0], ["attn"])


# ----------------------------------------------------------------------------- bad adapters


def _bad(case: str, **kw):
    d = LORA / "bad" / case
    return Which.Lora(arch="llama", adapters_model_id=str(d), order=str(d / "order.json"),
                      model_id=str(base_dir("llama")), **kw)


@pytest.mark.parametrize("case,pattern", [
    ("shape", r"attn.*lora_A.*64"),
    ("rank", r"attn.*rank mismatch"),
    ("dora", r"attn.*use_dora"),
    ("bias_all", r"attn.*`bias`"),
    ("unknown_module", r"attn.*fc1"),
])
def test_bad_adapter_is_value_error(case, pattern):
    if not (LORA / "bad" / case).exists():
        pytest.fail(f"missing fixture tests/fixtures/lora/bad/{case}")
    with pytest.raises(ValueError, match=pattern):
        Runner(which=_bad(case))


def test_ordering_file_naming_a_missing_adapter(tmp_path):
    arch = ARCHS[0]
    order = json.loads((LORA / arch / "order_attn.json").read_text())
    order["order"] = ["attn", "ghost"]
    (tmp_path / "order.json").write_text(json.dumps(order))
    with pytest.raises(ValueError, match="ghost"):
        Runner(which=Which.Lora(arch=arch, adapters_model_id=str(LORA / arch / "adapters"),
                                order=str(tmp_path / "order.json"), model_id=str(base_dir(arch))))


def test_adapter_for_another_architecture_is_value_error(tmp_path):
    # phi3's fused qkv_proj does not exist in a llama.
    if "phi3" not in ARCHS:
        pytest.skip("no phi3 LoRA fixture")
    with pytest.raises(ValueError, match=r"qkv_proj"):
        Runner(which=Which.Lora(arch="llama", adapters_model_id=str(LORA / "phi3" / "adapters"),
                                order=str(LORA / "phi3" / "order_attn.json"), model_id=str(base_dir("llama"))))


# ----------------------------------------------------------------------------- adapters with in-situ quantization


@pytest.mark.parametrize("order,sets", [("order_attn+mlp.json", [None]), ("order_preload.json", [["mlp"], ["all"], []])])
def test_adapters_with_in_situ_quantization(order, sets):
    """ISQ wraps the adapters: merged deltas are quantized with the base (Q8_0 here), unmerged adapters stay f32
    beside the quantized base; first steps stay within the Q8_0 bound of PEFT's f32 references."""
    arch = ARCHS[0]
    runner = Runner(which=lora_which(arch, order), in_situ_quant="Q8_0")
    names = {None: "attn+mlp", ("mlp",): "mlp", ("all",): "all", (): "base"}
    for s in sets:
        want = results_of(arch, "lora", names[tuple(s) if s is not None else None])
        for case in refs(arch)["cases"]:
            step = content(send_greedy_with(runner, case, s))[0]
            got = {tuple(t.bytes): t.logprob for t in step.top_logprobs}
            ref = want[case["name"]]["steps"][0]
            for t in sorted(ref["top"], key=lambda t: -t["logprob"])[:5]:
                if tuple(t["bytes"]) in got:
                    assert abs(got[tuple(t["bytes"])] - t["logprob"]) <= Q8_0_BOUND, (order, s, case["name"])
