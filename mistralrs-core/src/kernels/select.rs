//! Which of the engine's own CPU kernels run: chosen once per process from
//! what the CPU offers, unless `MISTRALRS_CPU_KERNELS` says otherwise:
//! - `auto` (or unset): the widest SIMD the CPU has;
//! - `scalar`: our kernels without SIMD, the code a CPU without AVX2 runs
//!   (there is no such CPU at hand to test on, so this forces it);
//! - `candle`: none of ours; candle's tensor ops throughout, the path that
//!   CUDA and Metal take, checkable on the CPU.
//!
//! Every SIMD body is behind `#[target_feature]` and entered only when this
//! module says so: the crate itself is compiled for baseline x86-64.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelChoice {
    Auto,
    Scalar,
    Candle,
}

pub const ENV: &str = "MISTRALRS_CPU_KERNELS";

fn parse(v: Option<&str>) -> Result<KernelChoice, String> {
    match v.map(str::trim) {
        None | Some("") | Some("auto") => Ok(KernelChoice::Auto),
        Some("scalar") => Ok(KernelChoice::Scalar),
        Some("candle") => Ok(KernelChoice::Candle),
        Some(other) => Err(format!(
            "{ENV}={other:?}: expected \"auto\", \"scalar\" or \"candle\""
        )),
    }
}

/// The choice, or why the environment variable is not one.
pub fn check_env() -> Result<KernelChoice, String> {
    parse(std::env::var(ENV).ok().as_deref())
}

/// The choice in force (an unparsable value counts as `auto`; `Runner`
/// refuses it before anything runs).
pub fn choice() -> KernelChoice {
    static CHOICE: OnceLock<KernelChoice> = OnceLock::new();
    *CHOICE.get_or_init(|| check_env().unwrap_or(KernelChoice::Auto))
}

/// Whether the engine's own kernels run at all.
pub fn own_kernels() -> bool {
    choice() != KernelChoice::Candle
}

struct Simd {
    avx2: bool,
    avx512_vnni: bool,
}

fn simd() -> &'static Simd {
    static SIMD: OnceLock<Simd> = OnceLock::new();
    SIMD.get_or_init(|| {
        if choice() != KernelChoice::Auto {
            return Simd {
                avx2: false,
                avx512_vnni: false,
            };
        }
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            let avx512_vnni = avx2
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512vl")
                && std::is_x86_feature_detected!("avx512bw")
                && std::is_x86_feature_detected!("avx512vnni");
            Simd { avx2, avx512_vnni }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Simd {
                avx2: false,
                avx512_vnni: false,
            }
        }
    })
}

/// AVX2 + FMA + F16C bodies may run.
pub fn avx2() -> bool {
    simd().avx2
}

/// The AVX-512 VNNI panel kernels may run (AVX2 as well).
pub fn avx512_vnni() -> bool {
    simd().avx512_vnni
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_variable() {
        assert_eq!(parse(None), Ok(KernelChoice::Auto));
        assert_eq!(parse(Some("scalar")), Ok(KernelChoice::Scalar));
        assert_eq!(parse(Some(" candle ")), Ok(KernelChoice::Candle));
        assert!(parse(Some("avx9"))
            .unwrap_err()
            .contains("MISTRALRS_CPU_KERNELS"));
    }
}
