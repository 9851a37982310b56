#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer, stable toolchain) of the loaders and
# the request path; see fuzz/Cargo.toml. Not part of the default test run.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (1800) each, FUZZ_JOBS (2) at a time
#   scripts/fuzz.sh gguf request    just these
#   scripts/fuzz.sh server_bodies   the server's JSON bodies (fuzz/server_bodies.py, atheris in
#                                   $FUZZ_PYTHON, default .venv/bin/python: pip install atheris)
#   FUZZ_SECONDS=60 scripts/fuzz.sh a short smoke run
#
# Each target starts from fuzz/corpus/<target>: the committed corpus
# (fuzz/corpus.tar.xz, unpacked on first use; the seeds in it come from
# fuzz/make_corpus.py). New inputs that reach new code are added, the corpus
# is minimized at the end and packed back into fuzz/corpus.tar.xz. A crash,
# an abort (e.g. a failed allocation under the 8 GiB address-space cap), a
# hang (-timeout) or an RSS above 4 GiB stops the target and leaves the
# input in fuzz/artifacts/<target>/; it becomes a regression test in
# tests/test_fuzz_regressions.py. Logs: fuzz/logs/<target>.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

SECONDS_EACH="${FUZZ_SECONDS:-1800}"
JOBS="${FUZZ_JOBS:-2}"
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(gguf ggml safetensors json request server_bodies)
FUZZ_PYTHON="${FUZZ_PYTHON:-$PWD/../.venv/bin/python}"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"

# The coverage passes are stable codegen options; `--target` keeps them off
# build scripts and proc macros, which run on the host.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
[ -d corpus ] || { echo "==> unpacking corpus.tar.xz"; tar xJf corpus.tar.xz; }
echo "==> building the fuzz targets"
cargo build --release --target "$TRIPLE" --bins
BIN="target/$TRIPLE/release"

run_one() {
    local t="$1"
    mkdir -p "corpus/$t" "artifacts/$t" logs
    if [ "$t" = server_bodies ]; then
        # libFuzzer's merge re-runs argv[0], which a Python harness is not; its
        # inputs are already reduced as it runs, so the corpus is kept as is.
        "$FUZZ_PYTHON" server_bodies.py "corpus/$t" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 \
            -print_final_stats=1 -artifact_prefix="artifacts/$t/" >"logs/$t.log" 2>&1
        local rc=$?
        echo "==> $t: exit $rc; $(grep -a 'stat::number_of_executed_units' "logs/$t.log" | tail -1)"
        return $rc
    fi
    # A child shell so the address-space cap holds for this target only.
    (
        ulimit -v $((8 << 20))
        # -handle_segv=0: Rust's own SIGSEGV handler runs on an alternate
        # stack, so a stack overflow is reported ("has overflowed its stack",
        # then an abort libFuzzer catches and saves); libFuzzer's handler
        # has no such stack and the process would die without a word.
        "$BIN/$t" "corpus/$t" -max_total_time="$SECONDS_EACH" -timeout=30 -rss_limit_mb=4096 \
            -max_len=65536 -handle_segv=0 -print_final_stats=1 -artifact_prefix="artifacts/$t/"
    ) >"logs/$t.log" 2>&1
    local rc=$?
    # Keep only the inputs that add coverage.
    mkdir -p "corpus/$t.min"
    "$BIN/$t" -merge=1 "corpus/$t.min" "corpus/$t" >>"logs/$t.log" 2>&1 && rm -rf "corpus/$t" && mv "corpus/$t.min" "corpus/$t"
    echo "==> $t: exit $rc; $(grep -E 'stat::number_of_executed_units|Done [0-9]+ runs' "logs/$t.log" | tail -1)"
    return $rc
}

status=0
running=0
for t in "${TARGETS[@]}"; do
    run_one "$t" || status=1 &
    running=$((running + 1))
    if [ "$running" -ge "$JOBS" ]; then
        wait -n || status=1
        running=$((running - 1))
    fi
done
wait || status=1
echo "==> packing corpus.tar.xz"
tar cf - --sort=name corpus | xz -6 -T2 >corpus.tar.xz
ls artifacts/*/ 2>/dev/null | grep -E 'crash|oom|timeout|leak' && status=1
exit $status
