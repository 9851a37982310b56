"""LoRA and X-LoRA adapters: merged, switched per request, and mixed per token.

Runs on the committed tiny test model and its PEFT adapters (tests/fixtures/lora/llama/), so it needs nothing
from the network; the outputs are random text, and equal PEFT's (that is what tests/test_lora.py checks). With
real adapters the calls are the same: point `adapters_model_id` at a folder (or hub repo) holding
`<name>/adapter_config.json` + `<name>/adapter_model.safetensors` per adapter, and `order` at an ordering file.

python examples/adapters.py
"""

import pathlib

from mistralrs import CompletionRequest, Runner, Which

FIX = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
BASE = FIX / "llama-tiny"
LORA = FIX / "lora" / "llama"


def complete(runner, adapters=None):
    req = CompletionRequest(model="tiny", prompt="The quick brown fox", max_tokens=8, temperature=0.0,
                            adapters=adapters)
    return repr(runner.send_completion_request(req).choices[0].text)


# 1. Merged: the ordering file has no `preload_adapters`, so `order`'s adapters are added into the weights at
#    load (W += alpha/r * B A); the same works over a GGUF base with Which.LoraGGUF (re-quantized per tensor).
with Runner(which=Which.Lora(arch="llama", model_id=str(BASE), adapters_model_id=str(LORA / "adapters"),
                             order=str(LORA / "order_attn.json"))) as runner:
    print("merged attn:       ", complete(runner))

# 2. Unmerged: `preload_adapters` keeps every adapter apart; `activate_adapters` sets the default set and a
#    request's `adapters` overrides it. Requests with different sets are batched in the same forward steps.
with Runner(which=Which.Lora(arch="llama", model_id=str(BASE), adapters_model_id=str(LORA / "adapters"),
                             order=str(LORA / "order_preload.json"))) as runner:
    print("loaded adapters:   ", runner.adapters)
    print("default (attn):    ", complete(runner))
    print("request [mlp]:     ", complete(runner, ["mlp"]))
    print("request [] (base): ", complete(runner, []))
    runner.activate_adapters(["attn", "mlp"])
    print("active attn+mlp:   ", complete(runner))

# 3. X-LoRA: a classifier mixes the adapters per token from the base model's hidden states.
#    tgt_non_granular_index=k freezes the mix after k generated tokens.
xlora = LORA / "xlora" / "layerwise_d2"
with Runner(which=Which.XLora(arch="llama", model_id=str(BASE), xlora_model_id=str(xlora),
                              order=str(xlora / "order.json"), tgt_non_granular_index=2)) as runner:
    print("X-LoRA:            ", complete(runner))
    print("scaling passes:    ", runner.stats()["xlora_scaling_passes"])
