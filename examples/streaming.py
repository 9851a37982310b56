"""Stream a chat completion token by token (SmolLM2-135M-Instruct, GGUF).

python examples/streaming.py ["your prompt"]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from fetch_models import model_path
from mistralrs import ChatCompletionRequest, Runner, Which

gguf = model_path("smollm2")
prompt = sys.argv[1] if len(sys.argv) > 1 else "Write a haiku about the sea."

with Runner(
    which=Which.GGUF(tok_model_id=None, quantized_model_id=str(gguf.parent), quantized_filename=gguf.name)
) as runner:
    stream = runner.send_chat_completion_request(
        ChatCompletionRequest(
            model="smollm2",
            messages=[{"role": "user", "content": prompt}],
            max_tokens=256,
            temperature=0.7,
            top_p=0.9,
            seed=42,
            stream=True,
        )
    )
    usage = None
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            print(delta, end="", flush=True)
        if chunk.usage is not None:
            usage = chunk.usage
    print()
    if usage is not None:
        print(f"[{usage.completion_tokens} tokens, {usage.avg_compl_tok_per_sec:.1f} tok/s]")
