#!/usr/bin/env bash
# Builds the `mistralrs-cuda` wheel on a machine with no GPU and no system CUDA:
# the toolkit (nvcc, headers, cudart, cuBLAS, cuRAND, NVRTC) comes from PyPI.
#
#   bash scripts/build_cuda.sh            # wheel into dist/cuda/
#   bash scripts/build_cuda.sh --check    # only `cargo check --features cuda` (the pre-submission check)
#
# Environment (all optional):
#   CUDA_VENV      where the toolkit is pip-installed      (default: target/cuda-venv)
#   CUDA_TARGET    cargo target dir for the CUDA build      (default: target/cuda)
#   CUDA_SASS      extra SASS architectures for the statically compiled GGUF/MoE kernels (default: 90)
#   MANYLINUX      the platform tag claimed for the wheel, checked with auditwheel (default: manylinux_2_34)
#
# What it takes and why:
# - The toolkit is pinned to the CUDA 13.0 line: the GPU machines run driver 580 (CUDA 13.0), which
#   rejects PTX from a newer toolkit ("Unsupported .version"), and cudarc 0.19 knows toolkits up to 13.4.
#   `nvidia-nvvm` and `nvidia-cuda-crt` are pinned with it, else they float to the newest release.
# - candle's build scripts want one CUDA root (CUDA_ROOT, nvcc on PATH, lib64/ with unversioned .so
#   names); the PyPI packages put everything under site-packages/nvidia/cu13/{bin,include,lib,nvvm},
#   so a root of links is made beside the venv.
# - libcuda.so belongs to the driver, not to PyPI. The link needs a stub with the driver's soname
#   (libcuda.so.1) that exports the driver API; it is generated from the toolkit's own cuda.h, and
#   every entry point returns CUDA_ERROR_STUB_LIBRARY (34), as NVIDIA's own stub does, so a process
#   that loads it by mistake gets a clear error instead of garbage. At run time the real driver's
#   libcuda.so.1 is found by the loader as usual; the stub folder is never on the RPATH.
# - Kernels: candle's JIT-loaded kernels are PTX for compute_80, which the driver compiles for Ampere
#   and anything newer (Hopper included). Its statically linked GGUF/MoE kernels are SASS, built for
#   sm_80 by candle and, through an nvcc wrapper, also for each architecture in CUDA_SASS (sm_90 by
#   default), so one wheel runs on A100 and H100/H200.
# - The extension finds cuBLAS, cuRAND and cudart (all it links: NVRTC is not) through a RUNPATH to the `nvidia/cu13/lib`
#   folder of the same site-packages; the wheel depends on the PyPI packages that put them there.
#   `LD_LIBRARY_PATH` works as well where those libraries live elsewhere.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"

MODE=wheel
[ "${1:-}" = "--check" ] && MODE=check

CUDA_VENV="${CUDA_VENV:-$ROOT/target/cuda-venv}"
CUDA_TARGET="${CUDA_TARGET:-$ROOT/target/cuda}"
CUDA_SASS="${CUDA_SASS:-90}"
# The wheel's platform tag: the glibc this build machine's symbols need (checked after the build).
MANYLINUX="${MANYLINUX:-manylinux_2_34}"
PYTHON="${PYTHON:-python3}"

# The 13.0 line, matched to driver 580. cuda-toolkit's extras pull the components.
TOOLKIT="cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,cccl]==13.0.2"
PINNED=("nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88")

start=$(date +%s)
if [ ! -x "$CUDA_VENV/bin/python" ]; then
    echo "==> creating $CUDA_VENV"
    "$PYTHON" -m venv "$CUDA_VENV"
fi
echo "==> installing the CUDA 13.0 toolkit from PyPI into $CUDA_VENV"
"$CUDA_VENV/bin/python" -m pip install -q --disable-pip-version-check "$TOOLKIT" "${PINNED[@]}" "maturin>=1.7,<2" auditwheel
CU13="$("$CUDA_VENV/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')"
[ -x "$CU13/bin/nvcc" ] || { echo "nvcc not found under $CU13" >&2; exit 1; }

# One CUDA root made of links into the packages.
CUDA_ROOT="$CUDA_VENV/cuda-root"
mkdir -p "$CUDA_ROOT/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$CU13/$d" "$CUDA_ROOT/$d"; done
for f in "$CU13"/lib/lib*.so.*; do
    base="$(basename "$f")"
    ln -sf "$f" "$CUDA_ROOT/lib64/$base"
    ln -sf "$f" "$CUDA_ROOT/lib64/${base%%.so.*}.so"    # libcublas.so.13 -> libcublas.so
done
for f in "$CU13"/lib/*.a; do ln -sf "$f" "$CUDA_ROOT/lib64/$(basename "$f")"; done

# The driver stub: every cu* function cuda.h declares, after its _v2/_v3 renaming macros.
STUB="$CUDA_ROOT/lib64/stubs/libcuda.so"
if [ ! -f "$STUB" ] || [ "$CU13/include/cuda.h" -nt "$STUB" ]; then
    echo "==> generating the libcuda.so.1 link stub from cuda.h"
    { gcc -E -P "$CU13/include/cuda.h"; gcc -E -P -D__CUDA_API_VERSION_INTERNAL "$CU13/include/cuda.h"; } \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d '( \t' | sort -u \
        | awk '{ print "int " $0 "(void) { return 34; }" }' > "$CUDA_ROOT/lib64/stubs/libcuda_stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB" "$CUDA_ROOT/lib64/stubs/libcuda_stub.c"
    echo "    $(wc -l < "$CUDA_ROOT/lib64/stubs/libcuda_stub.c") entry points"
fi
ln -sf libcuda.so "$CUDA_ROOT/lib64/stubs/libcuda.so.1"

# nvcc with the extra SASS architectures added to whole-object compiles (never to --ptx, which
# takes exactly one architecture).
WRAP="$CUDA_ROOT/nvcc-multiarch"
EXTRA=""
for sm in $CUDA_SASS; do EXTRA+=" -gencode=arch=compute_${sm},code=sm_${sm}"; done
cat > "$WRAP" <<WRAPPER
#!/usr/bin/env bash
case " \$* " in
    *" --ptx "*|*" -ptx "*) exec "$CUDA_ROOT/bin/nvcc" "\$@" ;;
    *" -c "*) exec "$CUDA_ROOT/bin/nvcc" "\$@"$EXTRA ;;
    *) exec "$CUDA_ROOT/bin/nvcc" "\$@" ;;
esac
WRAPPER
chmod +x "$WRAP"

export CUDA_ROOT CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" NVCC="$WRAP"
export PATH="$CUDA_ROOT/bin:$PATH"
export LIBRARY_PATH="$CUDA_ROOT/lib64:$CUDA_ROOT/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP=80 CUDARC_CUDA_VERSION=13000
export CARGO_TARGET_DIR="$CUDA_TARGET"
# `$ORIGIN` is the folder of mistralrs/_mistralrs.abi3.so; its sibling `nvidia/` is where the PyPI
# CUDA packages install. The stub folder is for the link only.
export RUSTFLAGS="-C link-arg=-Wl,-rpath,\$ORIGIN/../nvidia/cu13/lib -C link-arg=-L$CUDA_ROOT/lib64/stubs"
echo "==> toolkit ready after $(( $(date +%s) - start )) s: $(nvcc --version | tail -1)"

if [ "$MODE" = check ]; then
    echo "==> cargo check --features cuda (mistralrs-core and the binding)"
    cargo check --release -p mistralrs-pyo3 --features cuda
    echo "==> cuda check passed in $(( $(date +%s) - start )) s"
    exit 0
fi

# The distribution is `mistralrs-cuda`: the name and the runtime libraries' packages go into a copy
# of pyproject.toml that is put back afterwards.
mkdir -p "$CUDA_TARGET"
cp pyproject.toml "$CUDA_TARGET/pyproject.toml.orig"
trap 'cp "$CUDA_TARGET/pyproject.toml.orig" pyproject.toml' EXIT
"$CUDA_VENV/bin/python" - <<'PY'
import pathlib, re
p = pathlib.Path("pyproject.toml")
text = p.read_text()
text, n = re.subn(r'(?m)^name = "mistralrs"$', 'name = "mistralrs-cuda"', text, count=1)
assert n == 1, "no `name = \"mistralrs\"` in pyproject.toml"
deps = ('dependencies = [\n'
        '    "nvidia-cuda-runtime>=13.0,<13.1",\n'
        '    "nvidia-cublas>=13.0,<13.1",\n'
        '    "nvidia-curand>=10.4.0,<10.4.1",\n'
        ']\n')
text = text.replace('dynamic = ["version"]\n', 'dynamic = ["version"]\n' + deps, 1)
p.write_text(text)
PY

echo "==> maturin build --release --features cuda"
mkdir -p dist/cuda
rm -f dist/cuda/mistralrs_cuda-*.whl
"$CUDA_VENV/bin/maturin" build --release --strip --features cuda --auditwheel skip --compatibility "$MANYLINUX" -o dist/cuda
wheel="$(ls dist/cuda/mistralrs_cuda-*.whl)"
# The tag is claimed, not repaired (the CUDA libraries come from their PyPI packages, as torch's do),
# so the glibc symbol versions the extension needs are checked against it here.
"$CUDA_VENV/bin/python" -m auditwheel show "$wheel" > "$CUDA_TARGET/auditwheel.txt" 2>&1 || true
if ! tr -s ' \n' ' ' < "$CUDA_TARGET/auditwheel.txt" | grep -q "constrains the platform tag to \"${MANYLINUX}_x86_64\""; then
    echo "the extension needs newer glibc symbols than $MANYLINUX:" >&2
    cat "$CUDA_TARGET/auditwheel.txt" >&2
    rm -f "$wheel"
    exit 1
fi
echo "==> built $wheel ($(du -h "$wheel" | cut -f1)) in $(( $(date +%s) - start )) s"
