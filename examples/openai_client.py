"""Talk to the OpenAI-compatible server with the official `openai` client.

Start the server in one terminal (pip install 'mistralrs[server]' openai):

    python -m mistralrs serve --gguf .models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --port 8000

then, in another:

    python examples/openai_client.py ["your prompt"] [--base-url http://127.0.0.1:8000/v1] [--api-key KEY]
"""

import argparse
import asyncio
import os

import openai

p = argparse.ArgumentParser()
p.add_argument("prompt", nargs="?", default="Write a haiku about the sea.")
p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
p.add_argument("--api-key", default=os.environ.get("MISTRALRS_API_KEY", "none"))
args = p.parse_args()

client = openai.OpenAI(base_url=args.base_url, api_key=args.api_key)
try:
    model = client.models.list().data[0].id  # the server serves one model; ask it which
except openai.APIConnectionError:
    raise SystemExit(f"no server at {args.base_url}: start one with `python -m mistralrs serve --gguf FILE`") from None
messages = [{"role": "user", "content": args.prompt}]

# A whole answer (greedy), with its token counts.
res = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=128)
print(res.choices[0].message.content)
print(f"[{res.usage.prompt_tokens} prompt + {res.usage.completion_tokens} generated tokens]\n")

# Streamed, sampled with a seed; the last chunk carries the usage when asked for.
stream = client.chat.completions.create(
    model=model, messages=messages, temperature=0.7, top_p=0.9, seed=42, max_tokens=128,
    stream=True, stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
    if chunk.usage:
        print(f"\n[{chunk.usage.completion_tokens} tokens streamed]\n")

# The legacy completions API, with logprobs of the two likeliest tokens at each step.
res = client.completions.create(model=model, prompt="The capital of France is", max_tokens=5, temperature=0, logprobs=2)
print(repr(res.choices[0].text), [f"{t!r}: {lp:.2f}" for t, lp in zip(res.choices[0].logprobs.tokens,
                                                                     res.choices[0].logprobs.token_logprobs)])


# asyncio: four questions at once; the engine batches them.
async def ask_all(questions: list) -> list:
    aclient = openai.AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)
    answers = await asyncio.gather(*(
        aclient.chat.completions.create(model=model, messages=[{"role": "user", "content": q}], temperature=0, max_tokens=32)
        for q in questions
    ))
    return [a.choices[0].message.content for a in answers]


questions = ["What is 2 + 2?", "Name a primary color.", "What do bees make?", "What is the capital of Germany?"]
for q, a in zip(questions, asyncio.run(ask_all(questions))):
    print(f"\n{q}\n  {a}")

# Errors come back in OpenAI's shape, raised as the client's own exceptions.
try:
    client.chat.completions.create(model=model, messages=messages, top_p=0)
except openai.BadRequestError as e:
    print(f"\n400 as expected: {e.message}")
