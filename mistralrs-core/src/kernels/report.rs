//! Which kernel each weight type runs on this CPU, for `build_info()`.
//!
//! This mirrors the run-time dispatch of the code that does the products:
//! our own kernels (`legacy_quant.rs`, `legacy_panels.rs`, `kquant_panels.rs`) for Q4_K, Q6_K and Q4_0/Q4_1/Q5_0/Q5_1/Q8_0,
//! and candle 0.11's `k_quants.rs` (AVX2+FMA dot products chosen at run time
//! on x86-64, NEON on aarch64) and `repack_x86.rs` (interleaved tiles for
//! Q4_K and Q6_K with several rows) for the K-quants. Dense types (F32, F16, BF16) are expanded to f32 at load and run
//! on the `gemm` crate, which also picks its SIMD at run time.

/// (ggml type, kernel) for every type the engine runs.
pub fn kernel_report() -> Vec<(&'static str, String)> {
    let cpu = Cpu::detect();
    let candle_dot = if cpu.avx2_fma {
        "candle AVX2+FMA dot product"
    } else if cpu.neon {
        "candle NEON dot product"
    } else {
        "candle scalar dot product"
    };
    let tiles = |what: &str| -> Option<String> {
        let level = if cpu.avx512_vnni {
            "AVX-512 VNNI"
        } else if cpu.avx_vnni && cpu.avx2_fma {
            "AVX-VNNI"
        } else if cpu.avx2_fma {
            "AVX2"
        } else {
            return None;
        };
        Some(format!("candle repacked {level} tiles{what}"))
    };
    let legacy = if super::select::own_kernels() { super::legacy_quant::path_name() } else { candle_dot };
    let gemm = if cpu.avx2_fma { "f32 gemm (AVX2+FMA), expanded at load" } else { "f32 gemm, expanded at load" };
    let mut v: Vec<(&'static str, String)> = vec![("F32", gemm.into()), ("F16", gemm.into()), ("BF16", gemm.into())];
    for t in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"] {
        v.push((t, legacy.into()));
    }
    for t in ["Q2_K", "Q3_K", "Q5_K", "Q8_K"] {
        v.push((t, candle_dot.into()));
    }
    // Our K-quant panels where the CPU has AVX2 (`kquant_panels.rs`), else candle's.
    let ours = if super::select::avx512_vnni() {
        Some("mistralrs AVX-512 VNNI 8-row panels (llama.cpp's Q8_K activations)")
    } else if super::select::avx2() {
        Some("mistralrs AVX2 8-row panels (llama.cpp's Q8_K activations)")
    } else if super::select::choice() == super::select::KernelChoice::Scalar {
        Some("mistralrs scalar (llama.cpp's Q8_K activations)")
    } else {
        None
    };
    let q4k = ours.map(String::from).unwrap_or_else(|| tiles("").unwrap_or_else(|| candle_dot.into()));
    v.push(("Q4_K", q4k));
    let q6k = ours.map(String::from).unwrap_or_else(|| match tiles(" for several rows") {
        Some(t) => format!("{t}, {candle_dot} for one row"),
        None => candle_dot.into(),
    });
    v.push(("Q6_K", q6k));
    v
}

struct Cpu {
    avx2_fma: bool,
    avx_vnni: bool,
    avx512_vnni: bool,
    neon: bool,
}

impl Cpu {
    fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2_fma = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            Self {
                avx2_fma,
                avx_vnni: std::is_x86_feature_detected!("avxvnni"),
                avx512_vnni: std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512vnni"),
                neon: false,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Self { avx2_fma: false, avx_vnni: false, avx512_vnni: false, neon: cfg!(target_feature = "neon") }
        }
    }
}
