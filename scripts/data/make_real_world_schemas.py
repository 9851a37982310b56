#!/usr/bin/env python3
"""Rebuild scripts/data/real_world_schemas.jsonl from a SchemaStore checkout (the sample is deterministic).

    git clone https://github.com/SchemaStore/schemastore /tmp/schemastore
    python scripts/data/make_real_world_schemas.py /tmp/schemastore [--commit SHA]

Every file of src/schemas/json/ in sorted name order that
  * parses as JSON, is an object, and is at most MAX_BYTES bytes,
  * has no `$ref` outside itself (every `$ref` starts with "#"),
  * is itself a valid schema for its `$schema` draft (jsonschema's check_schema),
is a candidate; the sample is every STEP-th candidate, stored compact (one line each) with its
name, source URL and the schema.  SchemaStore is Apache-2.0.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess

import jsonschema

MAX_BYTES = 32 * 1024
STEP = 6


def refs(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkout")
    ap.add_argument("--commit", default=None)
    ap.add_argument("--out", default=str(pathlib.Path(__file__).with_name("real_world_schemas.jsonl")))
    args = ap.parse_args()
    root = pathlib.Path(args.checkout)
    commit = args.commit or subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, check=True).stdout.strip()
    candidates = []
    skipped = {"size": 0, "json": 0, "remote_ref": 0, "invalid_schema": 0}
    for p in sorted((root / "src/schemas/json").glob("*.json")):
        raw = p.read_bytes()
        if len(raw) > MAX_BYTES:
            skipped["size"] += 1
            continue
        try:
            schema = json.loads(raw)
        except ValueError:
            skipped["json"] += 1
            continue
        if not isinstance(schema, dict):
            skipped["json"] += 1
            continue
        if any(not r.startswith("#") for r in refs(schema)):
            skipped["remote_ref"] += 1
            continue
        try:
            jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
        except Exception:  # noqa: BLE001 - unknown draft or invalid schema
            skipped["invalid_schema"] += 1
            continue
        candidates.append((p.stem, schema))
    sample = candidates[::STEP]
    with open(args.out, "w") as f:
        for name, schema in sample:
            url = f"https://github.com/SchemaStore/schemastore/blob/{commit}/src/schemas/json/{name}.json"
            f.write(json.dumps({"name": name, "source": url, "schema": schema}, separators=(",", ":"),
                               ensure_ascii=False) + "\n")
    print(f"{len(candidates)} candidates (skipped {skipped}), wrote {len(sample)} to {args.out}")


if __name__ == "__main__":
    main()
