"""A raw text completion with logprobs (SmolLM2-135M-Instruct, GGUF).

python examples/completion.py
"""

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from fetch_models import model_path
from mistralrs import CompletionRequest, Runner, Which

gguf = model_path("smollm2")

with Runner(
    which=Which.GGUF(tok_model_id=None, quantized_model_id=str(gguf.parent), quantized_filename=gguf.name)
) as runner:
    res = runner.send_completion_request(
        CompletionRequest(
            model="smollm2",
            prompt="The three primary colors are",
            max_tokens=16,
            temperature=0.0,
            logprobs=True,
            top_logprobs=3,
        )
    )

choice = res.choices[0]
print(repr(choice.text))
for lp in choice.logprobs.content:
    alts = ", ".join(f"{t.token!r} {math.exp(t.logprob):.2f}" for t in lp.top_logprobs)
    print(f"{lp.token!r:>14} p={math.exp(lp.logprob):.2f}   [{alts}]")
