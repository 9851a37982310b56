"""Type stubs for mistralrs (SPEC.md §1). Keep in step with mistralrs-pyo3."""

from typing import Any, ClassVar, Generic, Literal, Mapping, Sequence, TypeAlias, TypeVar

__version__: str

# ----------------------------------------------------------------------------- Architecture

class Architecture:
    """A model architecture. Every ``arch`` parameter also accepts the lowercase value."""

    Mistral: ClassVar[Architecture]
    Gemma: ClassVar[Architecture]
    Mixtral: ClassVar[Architecture]
    Llama: ClassVar[Architecture]
    Phi2: ClassVar[Architecture]
    Phi3: ClassVar[Architecture]
    Qwen2: ClassVar[Architecture]
    Gemma2: ClassVar[Architecture]
    Gemma3: ClassVar[Architecture]
    @property
    def value(self) -> Literal["mistral", "gemma", "mixtral", "llama", "phi2", "phi3", "qwen2", "gemma2", "gemma3"]: ...

ArchLike: TypeAlias = Architecture | Literal["mistral", "gemma", "mixtral", "llama", "phi2", "phi3", "qwen2", "gemma2", "gemma3"]

# ----------------------------------------------------------------------------- Which

class Which:
    """Which model to load and from where. Immutable value objects; each
    ``*_model_id`` is a local path or a Hugging Face hub id."""

    class Plain(Which):
        """A safetensors model (``config.json`` + ``model.safetensors``)."""

        def __init__(
            self,
            *,
            model_id: str,
            arch: ArchLike,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def model_id(self) -> str: ...
        @property
        def arch(self) -> ArchLike: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class XLora(Which):
        """A plain model with X-LoRA adapters; ``model_id=None`` means the ordering file's base model."""

        def __init__(
            self,
            *,
            arch: ArchLike,
            xlora_model_id: str,
            order: str,
            tgt_non_granular_index: int | None = None,
            model_id: str | None = None,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def arch(self) -> ArchLike: ...
        @property
        def xlora_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def tgt_non_granular_index(self) -> int | None: ...
        @property
        def model_id(self) -> str | None: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class Lora(Which):
        """A plain model with LoRA adapters; ``model_id=None`` means the ordering file's base model."""

        def __init__(
            self,
            *,
            arch: ArchLike,
            adapters_model_id: str,
            order: str,
            model_id: str | None = None,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def arch(self) -> ArchLike: ...
        @property
        def adapters_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def model_id(self) -> str | None: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class GGUF(Which):
        """A GGUF file. ``tok_model_id=None``: tokenizer and chat template from the GGUF metadata."""

        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class XLoraGGUF(Which):
        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            xlora_model_id: str,
            order: str,
            tgt_non_granular_index: int | None = None,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def xlora_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def tgt_non_granular_index(self) -> int | None: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class LoraGGUF(Which):
        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            adapters_model_id: str,
            order: str,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def adapters_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class GGML(Which):
        """A pre-GGUF llama.cpp file (ggml, ggmf, ggjt v1-v3); the tokenizer from ``tok_model_id``."""

        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class XLoraGGML(Which):
        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            xlora_model_id: str,
            order: str,
            tgt_non_granular_index: int | None = None,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def xlora_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def tgt_non_granular_index(self) -> int | None: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

    class LoraGGML(Which):
        def __init__(
            self,
            *,
            tok_model_id: str | None,
            quantized_model_id: str,
            quantized_filename: str,
            adapters_model_id: str,
            order: str,
            tokenizer_json: str | None = None,
            repeat_last_n: int = 64,
        ) -> None: ...
        @property
        def tok_model_id(self) -> str | None: ...
        @property
        def quantized_model_id(self) -> str: ...
        @property
        def quantized_filename(self) -> str: ...
        @property
        def adapters_model_id(self) -> str: ...
        @property
        def order(self) -> str: ...
        @property
        def tokenizer_json(self) -> str | None: ...
        @property
        def repeat_last_n(self) -> int: ...

# ----------------------------------------------------------------------------- requests

# {"role": "system" | "user" | "assistant" | "tool", "content": str}; an assistant turn may carry
# "tool_calls" (OpenAI's shape, "content" then None) and a tool turn "tool_call_id" (and "name").
Message: TypeAlias = Mapping[str, Any]
# OpenAI's function tool: {"type": "function", "function": {"name", "description", "parameters", "strict"}}.
Tool: TypeAlias = Mapping[str, Any]
# "auto" (the default with tools), "none", "required", or {"type": "function", "function": {"name": ...}}.
ToolChoice: TypeAlias = str | Mapping[str, Any]
GrammarType: TypeAlias = Literal["regex", "json_schema", "lark"]
# A regex or Lark grammar as text; a JSON Schema as a dict or its JSON text. Every choice's output
# then matches it (an invalid grammar raises ValueError with llguidance's message).
Grammar: TypeAlias = str | Mapping[str, Any]
# OpenAI's response_format: {"type": "text"}, {"type": "json_object"} or
# {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}.
ResponseFormat: TypeAlias = Mapping[str, Any]
# A request with a bad value raises ValueError (when sent) carrying two attributes besides its message:
# ``param: str | None``, the field at fault under the names below ("top_p", "n_choices"), and
# ``code: str | None``, OpenAI's error code where it has one ("context_length_exceeded").

class ChatCompletionRequest:
    def __init__(
        self,
        messages: Sequence[Message] | str,
        model: str,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        max_tokens: int | None = None,
        n_choices: int = 1,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        stop_seqs: Sequence[str] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        stream: bool = False,
        grammar: Grammar | None = None,
        grammar_type: GrammarType | None = None,
        adapters: Sequence[str] | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
        response_format: ResponseFormat | None = None,
        tools: Sequence[Tool] | None = None,
        tool_choice: ToolChoice | None = None,
        parallel_tool_calls: bool | None = None,
    ) -> None:
        """``tools``: functions the model may call. They reach the model through its chat template (its
        ``tools`` variable); the calls it writes come back in ``message.tool_calls`` with
        ``finish_reason="tool_calls"``. Once the model opens a call, decoding is constrained to calls of
        these tools whose arguments validate against their ``parameters`` schemas; ``tool_choice="required"``
        or a named function constrains the whole answer to calls; ``"none"`` hides the tools.
        ``parallel_tool_calls`` (default True) allows several calls in one answer."""
    messages: Sequence[Message] | str
    model: str
    logit_bias: Mapping[int, float] | None
    logprobs: bool
    top_logprobs: int | None
    max_tokens: int | None
    n_choices: int
    presence_penalty: float | None
    frequency_penalty: float | None
    repetition_penalty: float | None
    stop_seqs: Sequence[str] | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    stream: bool
    grammar: Grammar | None
    grammar_type: GrammarType | None
    adapters: Sequence[str] | None
    seed: int | None
    ignore_eos: bool
    response_format: ResponseFormat | None
    tools: Sequence[Tool] | None
    tool_choice: ToolChoice | None
    parallel_tool_calls: bool | None

class CompletionRequest:
    def __init__(
        self,
        prompt: str | Sequence[int],
        model: str,
        echo_prompt: bool = False,
        best_of: int | None = None,
        max_tokens: int | None = None,
        n_choices: int = 1,
        logit_bias: Mapping[int, float] | None = None,
        logprobs: bool = False,
        top_logprobs: int | None = None,
        presence_penalty: float | None = None,
        frequency_penalty: float | None = None,
        repetition_penalty: float | None = None,
        stop_seqs: Sequence[str] | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        top_k: int | None = None,
        min_p: float | None = None,
        suffix: str | None = None,
        stream: bool = False,
        grammar: Grammar | None = None,
        grammar_type: GrammarType | None = None,
        adapters: Sequence[str] | None = None,
        seed: int | None = None,
        ignore_eos: bool = False,
        response_format: ResponseFormat | None = None,
    ) -> None: ...
    prompt: str | list[int]
    model: str
    echo_prompt: bool
    best_of: int | None  # None: n_choices (as OpenAI and vLLM)
    max_tokens: int | None
    n_choices: int
    logit_bias: Mapping[int, float] | None
    logprobs: bool
    top_logprobs: int | None
    presence_penalty: float | None
    frequency_penalty: float | None
    repetition_penalty: float | None
    stop_seqs: Sequence[str] | None
    temperature: float | None
    top_p: float | None
    top_k: int | None
    min_p: float | None
    suffix: str | None
    stream: bool
    grammar: Grammar | None
    grammar_type: GrammarType | None
    adapters: Sequence[str] | None
    seed: int | None
    ignore_eos: bool
    response_format: ResponseFormat | None

# ----------------------------------------------------------------------------- responses

FinishReason: TypeAlias = Literal["stop", "length"]

class Usage:
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def total_tokens(self) -> int: ...
    @property
    def avg_tok_per_sec(self) -> float: ...
    @property
    def avg_prompt_tok_per_sec(self) -> float: ...
    @property
    def avg_compl_tok_per_sec(self) -> float: ...
    @property
    def total_time_sec(self) -> float: ...
    @property
    def total_prompt_time_sec(self) -> float: ...
    @property
    def total_completion_time_sec(self) -> float: ...
    @property
    def prompt_tokens_details(self) -> PromptTokensDetails: ...
    @property
    def acceptance_rate(self) -> float | None:
        """Speculative decoding: the share of the draft model's proposed tokens the target accepted
        (None without ``which_draft``, or when nothing was proposed)."""

class PromptTokensDetails:
    @property
    def cached_tokens(self) -> int:
        """Prompt tokens whose keys and values came from the prefix cache (`Runner(prefix_cache_n=...)`)."""

class TopLogprob:
    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...
    @property
    def bytes(self) -> list[int]: ...

class ResponseLogprob:
    @property
    def token(self) -> str: ...
    @property
    def logprob(self) -> float: ...
    @property
    def bytes(self) -> list[int]: ...
    @property
    def top_logprobs(self) -> list[TopLogprob]: ...

class Logprobs:
    @property
    def content(self) -> list[ResponseLogprob]: ...

class FunctionCall:
    @property
    def name(self) -> str: ...
    @property
    def arguments(self) -> str:
        """The arguments as JSON text (``json.loads`` them)."""

class ToolCall:
    @property
    def id(self) -> str: ...
    @property
    def type(self) -> Literal["function"]: ...
    @property
    def function(self) -> FunctionCall: ...

class FunctionCallDelta:
    @property
    def name(self) -> str | None:
        """On a call's first delta only."""
    @property
    def arguments(self) -> str:
        """A fragment of the arguments' JSON text (empty on the first delta)."""

class ToolCallDelta:
    @property
    def index(self) -> int:
        """Which call of the choice this piece belongs to."""
    @property
    def id(self) -> str | None: ...
    @property
    def type(self) -> Literal["function"] | None: ...
    @property
    def function(self) -> FunctionCallDelta: ...

class ResponseMessage:
    @property
    def role(self) -> Literal["assistant"]: ...
    @property
    def content(self) -> str | None:
        """The text; None when the answer is only tool calls."""
    @property
    def tool_calls(self) -> list[ToolCall] | None: ...

class Choice:
    @property
    def index(self) -> int: ...
    @property
    def finish_reason(self) -> FinishReason: ...
    @property
    def message(self) -> ResponseMessage: ...
    @property
    def logprobs(self) -> Logprobs | None: ...

class ChatCompletionResponse:
    @property
    def id(self) -> str: ...
    @property
    def object(self) -> Literal["chat.completion"]: ...
    @property
    def created(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def system_fingerprint(self) -> str: ...
    @property
    def choices(self) -> list[Choice]: ...
    @property
    def usage(self) -> Usage: ...

class Delta:
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> str | None:
        """The new text; None in chunks that carry tool-call deltas."""
    @property
    def tool_calls(self) -> list[ToolCallDelta] | None: ...

class ChunkChoice:
    @property
    def index(self) -> int: ...
    @property
    def delta(self) -> Delta: ...
    @property
    def finish_reason(self) -> FinishReason | None: ...
    @property
    def logprobs(self) -> Logprobs | None: ...

class ChatCompletionChunkResponse:
    @property
    def id(self) -> str: ...
    @property
    def object(self) -> Literal["chat.completion.chunk"]: ...
    @property
    def created(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def choices(self) -> list[ChunkChoice]: ...
    @property
    def usage(self) -> Usage | None: ...

class CompletionChoice:
    @property
    def index(self) -> int: ...
    @property
    def text(self) -> str: ...
    @property
    def finish_reason(self) -> FinishReason | None: ...
    @property
    def logprobs(self) -> Logprobs | None: ...

class CompletionResponse:
    @property
    def id(self) -> str: ...
    @property
    def object(self) -> Literal["text_completion"]: ...
    @property
    def created(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def system_fingerprint(self) -> str: ...
    @property
    def choices(self) -> list[CompletionChoice]: ...
    @property
    def usage(self) -> Usage | None:
        """Always set on a whole response; on a streamed chunk only on the last one."""

# ----------------------------------------------------------------------------- Runner

QuantType: TypeAlias = Literal["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2K", "Q3K", "Q4K", "Q5K", "Q6K", "Q8K"]

class Runner:
    """Loads a model and runs its engine thread (continuous batching).

    Loading raises FileNotFoundError (missing files), ValueError (bad or
    unsupported content) or RuntimeError, each naming the file and the reason.
    The send methods release the GIL and are safe to call from many threads.
    """

    def __init__(
        self,
        which: Which,
        max_seqs: int = 16,
        no_kv_cache: bool = False,
        prefix_cache_n: int = 16,
        token_source: str = "cache",
        speculative_gamma: int = 32,
        which_draft: Which | None = None,
        chat_template: str | None = None,
        num_device_layers: Sequence[str] | None = None,
        in_situ_quant: QuantType | None = None,
        seed: int | None = None,
        device: str | None = None,
        kv_cache_mb: int | None = None,
        dtype: Literal["f32", "f16", "bf16", "auto"] | None = None,
        tool_call_format: Literal["hermes", "llama3_json", "mistral", "generic"] | None = None,
        kv_cache_dtype: Literal["auto", "f32", "f16", "bf16", "q8_0"] | None = None,
        prefix_cache_mb: int | None = None,
    ) -> None:
        """``device``: ``"cpu"``, ``"cuda:N"`` or ``"metal"`` (default: the accelerator this build was compiled
        for, else the CPU); ValueError when the build lacks it or the device does not exist.

        ``dtype``: the compute dtype of dense weights and activations. Default: f32 on the CPU;
        on CUDA/Metal the checkpoint's ``torch_dtype`` (plain models) or f32 (GGUF/GGML, whose quantized
        weights run on candle's GPU kernels). See ``Runner.device`` / ``Runner.dtype`` for the choice made.

        ``num_device_layers``: ``["ORDINAL:LAYERS", ...]``; ValueError on a build without CUDA or for a device
        that does not exist; splitting layers is not implemented yet (NotImplementedError).

        ``kv_cache_dtype``: how cached keys and values are stored, as llama.cpp's ``--cache-type-k/-v``:
        "f32", "f16", "bf16" or "q8_0" (blocks of 32 values: one f16 scale and 32 bytes; head sizes that are
        multiples of 32, CPU only). "auto" or None: the compute dtype (``Runner.dtype``), which keeps outputs
        equal to the f32 references; "f16" halves the cache and speeds up decoding at long contexts (see
        README: Long contexts). The attention kernel reads the stored values in place and
        accumulates in f32; ``kv_cache_mb`` counts the stored bytes. See ``Runner.kv_cache_dtype``.

        ``kv_cache_mb``: megabytes of paged KV cache (blocks of 16 tokens) shared by all sequences; by
        default a quarter of the memory available at load (printed). When it runs out, the newest sequences
        are preempted and recomputed later; a request that cannot fit even alone raises ValueError.

        ``prefix_cache_n`` / ``prefix_cache_mb``: the prefix cache keeps the full blocks of the last
        ``prefix_cache_n`` finished (or preempted) sequences, so a request whose prompt starts the same way
        (the next turn of a chat, a shared system prompt) skips computing that part
        (``Usage.prompt_tokens_details.cached_tokens``). Its memory: up to ``prefix_cache_mb`` megabytes
        (default 64) beyond the most the running sequences held at once; past that, a new block reuses the
        cached block released longest ago. Servers with many concurrent conversations want more (their
        prefixes are otherwise evicted between turns); all of it stays within ``kv_cache_mb``.

        ``which_draft``: a smaller model with the same vocabulary (ValueError otherwise) that proposes up to
        ``speculative_gamma`` tokens per decoding step; the target verifies them in one forward pass. Greedy
        output is the target's own; sampled output follows the target's distribution (the standard
        acceptance rule). ``Usage.acceptance_rate`` says how many proposals were kept.

        ``tool_call_format``: how the model writes tool calls; by default the one its chat template teaches
        (``<tool_call>`` blocks: "hermes", as Qwen 2.5; ``[TOOL_CALLS]``: "mistral"; Llama 3.x's JSON:
        "llama3_json"), or "generic" for a template without tools (see README: Tool calling)."""
    def send_chat_completion_request(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | ResponseIterator[ChatCompletionChunkResponse]:
        """A ChatCompletionResponse, or with ``stream=True`` an iterator of chunks."""
    def send_completion_request(
        self, request: CompletionRequest
    ) -> CompletionResponse | ResponseIterator[CompletionResponse]:
        """A CompletionResponse, or with ``stream=True`` an iterator of partial ones."""
    async def send_chat_completion_request_async(
        self, request: ChatCompletionRequest
    ) -> ChatCompletionResponse | AsyncResponseIterator[ChatCompletionChunkResponse]:
        """The asyncio form: ``await`` gives the response, or with ``stream=True`` an async iterator of
        chunks (``async for``). Awaiting holds no thread: the engine wakes the event loop (Unix). Cancelling
        the task, or ``aclose()`` on the iterator, cancels the request."""
    async def send_completion_request_async(
        self, request: CompletionRequest
    ) -> CompletionResponse | AsyncResponseIterator[CompletionResponse]:
        """The asyncio form of ``send_completion_request`` (see ``send_chat_completion_request_async``)."""
    def send_re_isq(self, dtype: QuantType) -> None:
        """Re-quantizes the loaded model to ``dtype``: it is loaded again quantized while requests keep being
        served, then swapped in between two engine steps. Returns once later requests run on the new weights."""
    def activate_adapters(self, names: Sequence[str]) -> None:
        """Sets the LoRA adapters of requests that name none (unmerged LoRA: the ordering file has
        `preload_adapters`); `[]` runs the base model. ValueError for an adapter that is not loaded, for
        merged adapters and for X-LoRA."""
    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters (`order`, then `preload_adapters`)."""
    @property
    def device(self) -> str:
        """The device the model runs on: ``"cpu"``, ``"cuda:N"`` or ``"metal"``."""
    @property
    def tool_call_format(self) -> Literal["hermes", "llama3_json", "mistral", "generic"]: ...
    @property
    def dtype(self) -> Literal["f32", "f16", "bf16"]:
        """The compute dtype (dense weights, activations); quantized weights keep their types."""
    @property
    def kv_cache_dtype(self) -> Literal["f32", "f16", "bf16", "q8_0"]:
        """How the KV cache stores keys and values (``Runner(kv_cache_dtype=...)`` with "auto" resolved)."""
    @property
    def checkpoint_dtype(self) -> Literal["f32", "f16", "bf16"] | None:
        """The dtype the checkpoint's config.json names (``torch_dtype``); None for GGUF/GGML files."""
    def stats(self) -> dict[str, int]:
        """Engine counters: steps, sequence_steps, max_batch, mixed_adapter_steps (steps whose sequences used
        different adapter sets), preemptions (sequences whose KV blocks were taken back, to be recomputed),
        kv_blocks_total / kv_blocks_used (held by sequences after the last step) / kv_blocks_cached (kept by
        the prefix cache, held by none) / kv_blocks_resident (touched so far: the pool's memory in use, at most; a thinned block keeps only its layers without a window) / kv_blocks_thinned (blocks whose
        sliding-window layers' keys and values, out of every window, were given back to the OS) /
        kv_block_tokens / kv_block_bytes (one block over all layers, keys and values, in the cache's storage
        type; multiply for bytes), kv_bytes_used / kv_bytes_cached / kv_bytes_free (the KV budget in bytes: held
        by sequences, kept by the prefix cache, left; a thinned block counts only its layers without a window,
        so sequences of a sliding-window model can together hold more blocks than kv_blocks_total), shared_prompts (choices
        that started from another choice's prompt blocks), prefix_cache_hit_tokens, requests_cancelled
        (dropped by their callers before finishing), the gauges seqs_running / seqs_waiting (after the last
        step) and, for X-LoRA, xlora_scaling_passes (one per sequence per step that ran it)."""
    def apply_chat_template(
        self,
        messages: Sequence[Message],
        tools: Sequence[Tool] | None = None,
        add_generation_prompt: bool = True,
        tool_choice: ToolChoice | None = None,
    ) -> str:
        """The prompt text ``messages`` (and ``tools``) render to with the model's chat template, as
        transformers' ``apply_chat_template(messages, tools=..., tokenize=False)`` gives it (the prompt a
        chat request runs on; tokenize it with ``add_special_tokens=False``)."""
    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def detokenize(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...
    def close(self) -> None: ...
    def __enter__(self) -> Runner: ...
    def __exit__(self, *exc: object) -> None: ...

_T = TypeVar("_T")

class ResponseIterator(Generic[_T]):
    """The chunks of a streamed response, in order (``stream=True``)."""

    def __iter__(self) -> ResponseIterator[_T]: ...
    def __next__(self) -> _T:
        """The next chunk. Raises the request's error, RuntimeError when the runner is closed before the
        request finished, and KeyboardInterrupt on Ctrl-C (which cancels the request)."""
    def close(self) -> None:
        """Cancels the request; its KV cache blocks are freed before the engine's next step. Dropping the
        iterator does the same."""

class AsyncResponseIterator(Generic[_T]):
    """The chunks of a streamed response for ``async for`` (from the ``*_async`` send methods)."""

    def __aiter__(self) -> AsyncResponseIterator[_T]: ...
    async def __anext__(self) -> _T: ...
    async def aclose(self) -> None:
        """Cancels the request; its KV cache blocks are freed before the engine's next step."""

def build_info() -> dict[str, object]:
    """How this build was compiled and what it runs on: ``version``, ``features``
    (cuda, metal, mkl, ...), ``devices`` (those compiled in), ``default_device``, ``cuda_device_count``,
    ``default_dtype``, ``simd`` (CPU extensions the kernels may use), ``cpu_kernels`` (``auto``, or what
    ``MISTRALRS_CPU_KERNELS`` forces: ``scalar`` or ``candle``), ``cpu_threads``, and ``kernels``: for each
    weight type (``"Q4_K"``, ...) the kernel its products run on with this CPU."""
