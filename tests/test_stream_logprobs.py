"""Streamed logprobs (issue 26): the chunks of a streamed request carry, together, the logprob of every
generated token, as OpenAI's streamed `logprobs.content` does, and they equal the non-streamed answer's.

llama-tiny's byte-level vocabulary splits UTF-8 characters across tokens, so some steps add no text: the
engine holds those bytes back until the character is whole, and the token's logprob must go out with
the next chunk rather than be dropped."""

from __future__ import annotations

from mistralrs import CompletionRequest, Runner, Which


def test_streamed_logprobs_cover_every_token(tiny_gguf):
    r = Runner(which=Which.GGUF(tok_model_id=None, quantized_model_id=str(tiny_gguf.parent),
                                quantized_filename=tiny_gguf.name), kv_cache_mb=4)
    try:
        common = dict(prompt="hello there", model="m", max_tokens=20, temperature=0.0, ignore_eos=True,
                      logprobs=True, top_logprobs=3)
        whole = r.send_completion_request(CompletionRequest(**common)).choices[0]
        chunks = list(r.send_completion_request(CompletionRequest(stream=True, **common)))
        # Some steps of this output end inside a character: fewer chunks than tokens.
        assert len(chunks) < 20
        streamed = [lp for c in chunks if c.choices[0].logprobs for lp in c.choices[0].logprobs.content]
        key = lambda lp: (bytes(lp.bytes), round(lp.logprob, 5), [bytes(t.bytes) for t in lp.top_logprobs])
        assert [key(lp) for lp in streamed] == [key(lp) for lp in whole.logprobs.content]
        assert len(streamed) == 20
        assert "".join(c.choices[0].text for c in chunks) == whole.text
    finally:
        r.close()
