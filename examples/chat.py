"""One chat completion on SmolLM2-135M-Instruct (GGUF Q4_1), greedy.

The tokenizer and the chat template come from the GGUF file itself
(tok_model_id=None).  The model is fetched by scripts/fetch_models.py.

    python examples/chat.py ["your question"]
"""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "scripts"))
from fetch_models import model_path
from mistralrs import ChatCompletionRequest, Runner, Which

gguf = model_path("smollm2")  # .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
question = sys.argv[1] if len(sys.argv) > 1 else "What is the capital of Germany?"

with Runner(
    which=Which.GGUF(
        tok_model_id=None,
        quantized_model_id=str(gguf.parent),
        quantized_filename=gguf.name,
    )
) as runner:
    res = runner.send_chat_completion_request(
        ChatCompletionRequest(
            model="smollm2",
            messages=[{"role": "user", "content": question}],
            max_tokens=128,
            temperature=0.0,  # greedy
        )
    )

print(f"Q: {question}")
print(f"A: {res.choices[0].message.content}")
u = res.usage
print(
    f"[{u.prompt_tokens} prompt tokens at {u.avg_prompt_tok_per_sec:.1f} tok/s, "
    f"{u.completion_tokens} completion tokens at {u.avg_compl_tok_per_sec:.1f} tok/s, "
    f"finish_reason={res.choices[0].finish_reason}]"
)
