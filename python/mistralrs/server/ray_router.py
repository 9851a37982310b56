"""``PrefixAffinityRouter``: Ray Serve request routing that follows the replicas' prefix caches.

A replica's engine keeps the KV blocks of prompts it has served (SPEC §6, the prefix cache), so a
request is cheapest where its prompt's leading part was computed before: the second turn of a chat,
or any request sharing a long system prompt. The router cannot see the replicas' token blocks (the
prompt is tokenized only in the replica), so it predicts them from its own routing, as Ray's
``PrefixCacheAffinityRouter`` and vLLM's production router do: each prompt is cut into segments (each
message's text in pieces of ``segment_chars``, message boundaries always cut), the segments are
chained by hash like the engine's blocks (a segment's key hashes every segment before it), and each
key remembers the replicas that requests holding it went to. A request goes to the least busy of the
replicas holding its deepest known key, unless that one has more requests in flight than the least
busy replica overall by more than a tolerance; then, and for requests without a known prefix, to the
least busy replica.

The tolerance depends on whose prefix it is. A conversation's own history (its deepest key has been
followed by one continuation only) is worth ``imbalance`` (4) more requests in flight: the engine
batches, and the cached prompt saves its whole prefill; but an idle replica next to a busy one (a
replica that just started) must take conversations over. A prefix many requests share (a system prompt: its key
has been followed by different continuations) is worth one: it costs each replica one prefill to
learn, and following it would pile every new conversation onto the replica that saw it first.

Routing state lives in the process of the handle (the ingress replica); with several ingress replicas
each learns from the requests it routes.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Any, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

# The ``Model`` methods that generate; everything else (tokenize, stats) goes to the least busy.
_GENERATING = frozenset({"generate", "stream"})


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def prompt_segments(request: Any, segment_chars: int) -> list[str]:
    """The pieces of what ``request`` (a ``ChatCompletionRequest`` or ``CompletionRequest``) puts at
    the head of its prompt, in order: tools and each message for a chat, the text (or token ids) of a
    completion."""
    messages = getattr(request, "messages", None)
    if messages is None:
        parts = [_canonical(request.prompt)]
    else:
        tools = getattr(request, "tools", None)
        parts = ([_canonical(tools)] if tools else []) + [
            _canonical(m) if not isinstance(m, dict) else
            f"{m.get('role')}\x1f{_canonical(m.get('content'))}\x1f{_canonical(m.get('tool_calls') or '')}"
            for m in messages
        ]
    segments: list[str] = []
    for part in parts:
        segments += [part[i:i + segment_chars] for i in range(0, max(len(part), 1), segment_chars)]
    return segments


def prefix_keys(request: Any, segment_chars: int) -> list[bytes]:
    """Chained keys of ``request``'s segments: key i identifies segments 0..i, as the engine's block
    hashes identify a block with everything before it."""
    keys: list[bytes] = []
    previous = b""
    for segment in prompt_segments(request, segment_chars):
        previous = hashlib.blake2b(previous + segment.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        keys.append(previous)
    return keys


class _Key:
    """What routing learnt of one prefix key: the replicas it went to, and whether different
    continuations have followed it (a shared prefix) or one only so far (``next``)."""

    __slots__ = ("holders", "next", "shared")

    def __init__(self) -> None:
        self.holders: set[str] = set()
        self.next: Optional[bytes] = None
        self.shared = False


class PrefixAffinityRouter(FIFOMixin, RequestRouter):
    """Routes a generation to the replica most likely to hold its prompt's prefix (see the module)."""

    def initialize_state(self, imbalance: int = 4, segment_chars: int = 256, max_keys: int = 1_000_000) -> None:
        self.imbalance = imbalance
        self.segment_chars = segment_chars
        self.max_keys = max_keys
        # key -> what routing learnt of it; least recently routed key first.
        self._keys: collections.OrderedDict[bytes, _Key] = collections.OrderedDict()
        # request id -> (its keys, the replica chosen for it) until Serve has sent it (bounded: a
        # request cancelled before that leaves its entry).
        self._decided: collections.OrderedDict[str, tuple[list[bytes], str]] = collections.OrderedDict()
        # Requests chosen for each replica and not sent yet. Serve decides for many requests before it
        # sends any (a burst of new conversations), and its queue lengths count only those sent.
        self._undelivered: collections.Counter[str] = collections.Counter()

    def _load(self, replica: RunningReplica) -> int:
        """Requests in flight at ``replica`` (Serve's count, else what the replica last reported), plus
        those this router has chosen it for and Serve has not sent yet."""
        ongoing = self.replica_queue_len_cache.get(replica.replica_id)
        if ongoing is None:
            stats = replica.routing_stats or {}
            ongoing = int(stats.get("seqs_running", 0)) + int(stats.get("seqs_waiting", 0))
        return int(ongoing) + self._undelivered[replica.replica_id.unique_id]

    def _request(self, pending: PendingRequest) -> Optional[Any]:
        if pending.metadata.call_method not in _GENERATING or not pending.args:
            return None
        return pending.args[0]

    def _learn_continuations(self, keys: list[bytes]) -> None:
        """Marks the keys that different requests continue differently (shared prefixes), as soon as
        a request is seen: the requests of a burst must see each other."""
        for key, after in zip(keys, keys[1:]):
            known = self._keys.get(key)
            if known is None or known.shared:
                continue
            if known.next is None:
                known.next = after
            elif known.next != after:
                known.shared = True

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: Optional[PendingRequest] = None,
    ) -> list[list[RunningReplica]]:
        if not candidate_replicas:
            return []
        request = self._request(pending_request) if pending_request is not None else None
        if request is None:
            return [candidate_replicas]  # Ray picks the one with the shortest queue
        request_id = pending_request.metadata.internal_request_id
        decided = self._decided.pop(request_id, None)
        if decided is None:
            keys = prefix_keys(request, self.segment_chars)
            self._learn_continuations(keys)
        else:  # Serve asks again (the replica chosen before was full): that choice is void
            keys = decided[0]
            self._undelivered[decided[1]] -= 1
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {rid: self._load(r) for rid, r in by_id.items()}
        ranked = sorted(candidate_replicas, key=lambda r: loads[r.replica_id.unique_id])
        choice = ranked[0]
        for key in reversed(keys):
            known = self._keys.get(key)
            holders = [by_id[h] for h in known.holders if h in by_id] if known else []
            if not holders:
                continue
            best = min(holders, key=lambda r: loads[r.replica_id.unique_id])
            tolerance = 1 if known.shared else self.imbalance
            if loads[best.replica_id.unique_id] <= loads[choice.replica_id.unique_id] + tolerance:
                choice = best
            break
        self._decided[request_id] = (keys, choice.replica_id.unique_id)
        self._undelivered[choice.replica_id.unique_id] += 1
        if len(self._decided) > 10_000:
            _, (_, stale) = self._decided.popitem(last=False)
            self._undelivered[stale] -= 1
        return [[choice], [r for r in ranked if r is not choice]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: Any, result: Any) -> None:
        decided = self._decided.pop(pending_request.metadata.internal_request_id, None)
        if decided is None:
            return
        keys, chosen = decided
        self._undelivered[chosen] -= 1
        replica = replica_id.unique_id
        for key in keys:
            known = self._keys.get(key)
            if known is None:
                known = self._keys[key] = _Key()
            else:
                self._keys.move_to_end(key)
            known.holders.add(replica)
        self._learn_continuations(keys)  # the continuations of keys that were new until now
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def on_replica_actor_died(self, replica_id: Any) -> None:
        super().on_replica_actor_died(replica_id)
        gone = replica_id.unique_id
        for key, known in list(self._keys.items()):
            known.holders.discard(gone)
            if not known.holders:
                del self._keys[key]
