"""Child process of tests/test_hostile_files.py: loads one (possibly corrupt) model under an
address-space cap and reports what happened as one JSON line on stdout.

Usage: python tests/hostile_child.py '<json spec>'

spec = {"which": "GGUF" | "Plain" | ...,   # a Which variant
        "which_kwargs": {...},             # its keyword arguments
        "runner_kwargs": {...},            # extra Runner(...) keyword arguments (chat_template, ...)
        "chat": true,                      # after a successful load, send one small greedy chat request
        "max_tokens": 3,
        "rlimit_as": 4294967296}           # RLIMIT_AS in bytes, set before mistralrs is imported

The report line starts with RESULT_PREFIX and holds {"phase": "import" | "load" | "chat",
"outcome": "error" | "ok", "type", "message"} (errors) or {"outcome": "ok", "text",
"completion_tokens"}. Any Python exception, MemoryError included, is reported this way and the
child exits 0; an abort, a signal or a nonzero exit therefore means the Rust side took the
process down, which the parent reports as a failure with this child's stderr.
"""

from __future__ import annotations

import json
import os
import resource
import sys

RESULT_PREFIX = "HOSTILE-RESULT "


def report(**fields) -> None:
    sys.stdout.write(RESULT_PREFIX + json.dumps(fields) + "\n")
    sys.stdout.flush()


def error(phase: str, e: BaseException) -> None:
    report(phase=phase, outcome="error", type=type(e).__name__, message=str(e))


def main() -> int:
    spec = json.loads(sys.argv[1])
    cap = int(spec["rlimit_as"])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    os.environ["HF_HUB_OFFLINE"] = "1"

    try:
        from mistralrs import ChatCompletionRequest, Runner, Which
    except BaseException as e:  # noqa: BLE001 - everything is reported
        error("import", e)
        return 0

    try:
        which = getattr(Which, spec["which"])(**spec["which_kwargs"])
        runner = Runner(which=which, **spec.get("runner_kwargs", {}))
    except BaseException as e:  # noqa: BLE001
        error("load", e)
        return 0

    if not spec.get("chat", True):
        report(phase="load", outcome="ok", text=None, completion_tokens=None)
        runner.close()
        return 0

    try:
        req = ChatCompletionRequest(
            model="m",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=int(spec.get("max_tokens", 3)),
            temperature=0.0,
            ignore_eos=True,
        )
        res = runner.send_chat_completion_request(req)
        report(
            phase="chat",
            outcome="ok",
            text=res.choices[0].message.content,
            completion_tokens=res.usage.completion_tokens,
        )
    except BaseException as e:  # noqa: BLE001
        error("chat", e)
    runner.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
