"""X-LoRA (SPEC §3) checked against PEFT's XLoraModel.

Fixtures: tests/fixtures/lora/<arch>/xlora/<config>/ written by scripts/make_fixtures_lora.py (peft 0.21.2): three
adapters "0", "1", "2" (attention r 4, MLP r 8, every projection r 2 with rsLoRA), a random classifier, and
references from a full-recompute greedy loop over PEFT's XLoraModel (scaling pass + real pass over the whole
sequence each step; PEFT generates with use_cache=False). Configurations:
  flat_d1       one classifier layer, one scaling per adapter broadcast over the adapted layers
  layerwise_d2  a hidden layer of 32 with ReLU, a scaling per adapted layer and adapter
  topk          layerwise, top_k_lora 2, softmax_temperature 0.7, global_scaling_weight 0.8
`frozen_k2` (layerwise_d2): the reference with the scalings frozen after 2 generated tokens
(tgt_non_granular_index=2), computed by overriding PEFT's classifier output for later positions.

Checks: greedy token bytes and text equal PEFT's, logprobs within 1e-3, on the plain base and on the F32 GGUF base
(`Which.XLoraGGUF`); with tgt_non_granular_index=2 the output equals `frozen_k2` and the scaling pass runs exactly
3 times (counted by `Runner.stats()`); bad X-LoRA files raise ValueError.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mistralrs import Runner, Which
from reference_support import check_greedy_steps, send_greedy

FIX = Path(__file__).resolve().parent / "fixtures"
LORA = FIX / "lora"
CONFIGS = ["flat_d1", "layerwise_d2", "topk"]
ARCHS = [a for a in ["llama", "qwen2"] if (LORA / a / "xlora" / "flat_d1" / "references.json").exists()]
PARAMS = [(a, c) for a in ARCHS for c in CONFIGS]
N_STEPS = 16
TOL = 1e-3


def base_dir(arch: str) -> Path:
    return FIX / f"{arch}-tiny"


def folder(arch: str, config: str) -> Path:
    return LORA / arch / "xlora" / config


def refs(arch: str, config: str) -> dict:
    return json.loads((folder(arch, config) / "references.json").read_text())


def xlora_which(arch: str, config: str, **kw) -> Which:
    d = folder(arch, config)
    return Which.XLora(arch=arch, xlora_model_id=str(d), order=str(d / "order.json"),
                       model_id=kw.pop("model_id", str(base_dir(arch))), **kw)


def check_all(runner, arch, r: dict, results: list[dict], label: str):
    want = {x["name"]: x for x in results}
    for case in r["cases"]:
        res = send_greedy(runner, case, N_STEPS)
        w = want[case["name"]]
        check_greedy_steps(res, case, w["steps"], w["text"], TOL, f"{label}/{case['name']}", r["vocab_bytes"], N_STEPS)


@pytest.mark.parametrize("arch,config", PARAMS)
def test_xlora_matches_peft(arch, config):
    r = refs(arch, config)
    runner = Runner(which=xlora_which(arch, config))
    assert runner.adapters == ["0", "1", "2"]
    check_all(runner, arch, r, r["results"], f"{arch}/{config}")


@pytest.mark.parametrize("arch,config", PARAMS)
def test_xlora_gguf_f32_matches_peft(arch, config):
    # The F32 GGUF holds the same weights as model.safetensors (llama, qwen2), so PEFT's references apply.
    r = refs(arch, config)
    d = folder(arch, config)
    fname = "tiny-f32.gguf" if arch == "llama" else f"{arch}-tiny-f32.gguf"
    runner = Runner(which=Which.XLoraGGUF(tok_model_id=None, quantized_model_id=str(base_dir(arch)),
                                          quantized_filename=fname, xlora_model_id=str(d), order=str(d / "order.json")))
    check_all(runner, arch, r, r["results"], f"{arch}/{config}/gguf-f32")


@pytest.mark.parametrize("arch", ARCHS)
def test_xlora_frozen_scalings_after_k_tokens(arch):
    r = refs("llama" if arch == "llama" else arch, "layerwise_d2")
    frozen = r.get("frozen_k2")
    if frozen is None:
        pytest.fail("the layerwise_d2 fixture has no frozen_k2 reference")
    runner = Runner(which=xlora_which(arch, "layerwise_d2", tgt_non_granular_index=2))
    results = frozen["results"] if isinstance(frozen, dict) else frozen
    want = {x["name"]: x for x in results}
    for case in r["cases"]:
        before = runner.stats()["xlora_scaling_passes"]
        res = send_greedy(runner, case, N_STEPS)
        # The prompt's pass, then one for each of the first 2 generated tokens; none after.
        assert runner.stats()["xlora_scaling_passes"] - before == 3, case["name"]
        w = want[case["name"]]
        check_greedy_steps(res, case, w["steps"], w["text"], TOL, f"{arch}/frozen_k2/{case['name']}",
                           r["vocab_bytes"], N_STEPS)


def test_xlora_without_freezing_runs_the_scaling_pass_every_step():
    arch = ARCHS[0]
    runner = Runner(which=xlora_which(arch, "flat_d1"))
    case = refs(arch, "flat_d1")["cases"][0]
    send_greedy(runner, case, N_STEPS)
    assert runner.stats()["xlora_scaling_passes"] == N_STEPS  # the prompt, then each token fed back


def test_xlora_refuses_adapter_sets():
    runner = Runner(which=xlora_which(ARCHS[0], "flat_d1"))
    with pytest.raises(ValueError, match="X-LoRA"):
        runner.activate_adapters(["0"])


def _copy(tmp_path: Path, arch: str, config: str) -> Path:
    d = tmp_path / config
    shutil.copytree(folder(arch, config), d)
    return d


def test_missing_classifier_is_value_error(tmp_path):
    arch = ARCHS[0]
    d = _copy(tmp_path, arch, "flat_d1")
    (d / "xlora_classifier.safetensors").unlink()
    with pytest.raises(ValueError, match="xlora_classifier.safetensors"):
        Runner(which=Which.XLora(arch=arch, xlora_model_id=str(d), order=str(d / "order.json"),
                                 model_id=str(base_dir(arch))))


def test_ordering_layers_not_matching_the_adapters_is_value_error(tmp_path):
    # X-LoRA numbers every adapted module; an adapter whose target modules the ordering file does not list
    # (here: the MLP modules of adapter "1" dropped from `layers`) cannot be mixed.
    arch = ARCHS[0]
    d = _copy(tmp_path, arch, "flat_d1")
    order = json.loads((d / "order.json").read_text())
    order["layers"] = {m: i for i, m in enumerate(x for x in order["layers"] if "mlp" not in x)}
    (d / "order.json").write_text(json.dumps(order))
    with pytest.raises(ValueError, match=r"adapter `1`.*mlp"):
        Runner(which=Which.XLora(arch=arch, xlora_model_id=str(d), order=str(d / "order.json"),
                                 model_id=str(base_dir(arch))))


def test_classifier_of_the_wrong_size_is_value_error(tmp_path):
    # A layerwise classifier read as a flat one: `last` has n_adapters * n_layers outputs, not n_adapters.
    arch = ARCHS[0]
    d = _copy(tmp_path, arch, "topk")
    cfg = json.loads((d / "xlora_config.json").read_text())
    cfg["layerwise_scalings"] = False
    (d / "xlora_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="last.weight"):
        Runner(which=Which.XLora(arch=arch, xlora_model_id=str(d), order=str(d / "order.json"),
                                 model_id=str(base_dir(arch))))
