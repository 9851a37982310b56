"""mistralrs: fast LLM inference in Rust, used from Python.

    from mistralrs import Runner, Which, ChatCompletionRequest
"""

from mistralrs._mistralrs import (
    Architecture,
    ChatCompletionChunkResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    Choice,
    ChunkChoice,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    Logprobs,
    PromptTokensDetails,
    ResponseIterator,
    ResponseLogprob,
    ResponseMessage,
    Runner,
    TopLogprob,
    Usage,
    Which,
    __version__,
    build_info,
)

__all__ = [
    "Architecture",
    "ChatCompletionChunkResponse",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "Choice",
    "ChunkChoice",
    "CompletionChoice",
    "CompletionRequest",
    "CompletionResponse",
    "Delta",
    "Logprobs",
    "PromptTokensDetails",
    "ResponseIterator",
    "ResponseLogprob",
    "ResponseMessage",
    "Runner",
    "TopLogprob",
    "Usage",
    "Which",
    "__version__",
    "build_info",
]
