"""In-situ quantization (SPEC §1 `in_situ_quant`, `send_re_isq`).

- `in_situ_quant="Q8_0"` on the plain tiny llama equals the Q8_0 GGUF of the same weights that the `gguf`
  package (a port of ggml's reference quantizer) wrote, tests/fixtures/llama-tiny/tiny-q8_0.gguf: every tensor
  there is Q8_0 as ISQ makes them (embeddings and output head included), so equal blocks give equal logprobs,
  and any rounding difference in one block would show.
- Every type runs on the well-conditioned 256-wide llama of tests/fixtures/quant-types/ (so K-quants get whole
  256-blocks; scripts/make_fixtures_quant.py) and its first-step top-5 logprobs stay within 1.5x of llama.cpp's
  own deviation from the f32 model on the same weights quantized to that type by llama.cpp's quantizer
  (`llama_model_quantize`, every tensor of the one type) — a floor of 0.02 for the near-lossless types.
  Q8_K, which llama.cpp does not write as a weight type, gets Q8_0's bound.
- `in_situ_quant="Q6K"` equals llama.cpp's Q6_K file of the same weights (ggml's Q6_K quantizer, ported).
- `send_re_isq` while 4 streaming requests run: they all complete, and later greedy output changes.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from mistralrs import ChatCompletionRequest, CompletionRequest, Runner, Which
from reference_support import by_name, content, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
TINY = FIX / "llama-tiny"
TINY256 = FIX / "llama-tiny-256"
ISQ_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2K", "Q3K", "Q4K", "Q5K", "Q6K", "Q8K"]
QT = FIX / "quant-types"
GGUF_NAME = {"Q2K": "Q2_K", "Q3K": "Q3_K", "Q4K": "Q4_K", "Q5K": "Q5_K", "Q6K": "Q6_K", "Q8K": "Q8_0"}


def refs(folder: Path) -> dict:
    return json.loads((folder / "references.json").read_text())


def test_isq_q8_0_equals_the_q8_0_gguf():
    isq = Runner(which=Which.Plain(model_id=str(TINY), arch="llama"), in_situ_quant="Q8_0")
    gguf = Runner(which=Which.GGUF(tok_model_id=str(TINY), quantized_model_id=str(TINY),
                                   quantized_filename="tiny-q8_0.gguf"))
    for case in refs(TINY)["cases"]:
        a, b = content(send_greedy(isq, case, 16)), content(send_greedy(gguf, case, 16))
        assert [list(x.bytes) for x in a] == [list(x.bytes) for x in b], case["name"]
        for x, y in zip(a, b):
            assert abs(x.logprob - y.logprob) < 1e-5, (case["name"], x.logprob, y.logprob)
            assert [t.logprob for t in x.top_logprobs] == pytest.approx([t.logprob for t in y.top_logprobs], abs=1e-5)


def top5_dev(got: dict, ref_top: list[dict]) -> float:
    """Max |logprob difference| over the reference's top-5 tokens that `got` (bytes -> logprob) has."""
    worst = 0.0
    for t in sorted(ref_top, key=lambda t: -t["logprob"])[:5]:
        if tuple(t["bytes"]) in got:
            worst = max(worst, abs(got[tuple(t["bytes"])] - t["logprob"]))
    return worst


@pytest.mark.parametrize("qtype", ISQ_TYPES)
def test_isq_type_first_step_within_bound(qtype):
    if not (QT / "references.json").exists():
        pytest.fail("missing tests/fixtures/quant-types; run scripts/make_fixtures_quant.py")
    r = refs(QT)
    gname = GGUF_NAME.get(qtype, qtype)
    f32 = {c["name"]: c for c in r["f32_ref"]["results"]}
    # llama.cpp on its own quantization of the same weights, against the f32 model (its top-5 at every id).
    bound = max(0.02, 1.5 * r["files"][gname]["llamacpp_dev_vs_f32_ref"])
    runner = Runner(which=Which.Plain(model_id=str(QT), arch="llama"), in_situ_quant=qtype)
    ours = 0.0
    for case in r["cases"]:
        got = {tuple(t.bytes): t.logprob for t in content(send_greedy(runner, case, 1))[0].top_logprobs}
        ours = max(ours, top5_dev(got, f32[case["name"]]["top"]))
    assert ours <= bound, f"{qtype}: {ours:.4f} from f32 (bound {bound:.4f} from llama.cpp's {gname} file)"


def test_isq_q6k_equals_llama_cpp_q6_k_file():
    """ggml's Q6_K quantizer is ours too: ISQ of the plain model gives the same output as llama.cpp's Q6_K file of
    the same weights (every tensor Q6_K in both), so the blocks are llama.cpp's."""
    r = refs(QT)
    isq = Runner(which=Which.Plain(model_id=str(QT), arch="llama"), in_situ_quant="Q6K")
    gguf = Runner(which=Which.GGUF(tok_model_id=str(QT), quantized_model_id=str(QT),
                                   quantized_filename=r["files"]["Q6_K"]["file"]))
    for case in r["cases"]:
        a, b = content(send_greedy(isq, case, 8)), content(send_greedy(gguf, case, 8))
        assert [list(x.bytes) for x in a] == [list(x.bytes) for x in b], case["name"]
        assert max(abs(x.logprob - y.logprob) for x, y in zip(a, b)) < 1e-5, case["name"]


def test_bad_isq_name_is_value_error():
    with pytest.raises(ValueError, match="IQ4_XS"):
        Runner(which=Which.Plain(model_id=str(TINY), arch="llama"), in_situ_quant="IQ4_XS")


def _greedy_text(runner, prompt="Once upon a time"):
    req = CompletionRequest(model="tiny", prompt=prompt, max_tokens=24, temperature=0.0, ignore_eos=True)
    return runner.send_completion_request(req).choices[0].text


def test_send_re_isq_while_streaming():
    runner = Runner(which=Which.Plain(model_id=str(TINY), arch="llama"))
    before = _greedy_text(runner)
    results: list = [None] * 4
    started = threading.Barrier(5)

    def stream(i):
        req = ChatCompletionRequest(model="tiny", messages=[{"role": "user", "content": f"Tell story {i}"}],
                                    max_tokens=120, temperature=0.0, ignore_eos=True, stream=True)
        chunks = []
        it = runner.send_chat_completion_request(req)
        chunks.append(next(it))
        started.wait()
        chunks.extend(it)
        results[i] = chunks

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    started.wait()  # every stream has its first chunk
    runner.send_re_isq("Q4_0")
    for t in threads:
        t.join()
    for i, chunks in enumerate(results):
        assert chunks is not None, i
        assert chunks[-1].choices[0].finish_reason == "length", i
        assert chunks[-1].usage.completion_tokens == 120, i
    after = _greedy_text(runner)
    assert after != before
    # The re-quantized model is the Q4_0 ISQ model: same text as loading it quantized.
    assert after == _greedy_text(Runner(which=Which.Plain(model_id=str(TINY), arch="llama"), in_situ_quant="Q4_0"))
    with pytest.raises(ValueError, match="Q9"):
        runner.send_re_isq("Q9")
