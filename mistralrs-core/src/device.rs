//! Devices by name (`"cpu"`, `"cuda:N"`, `"metal"`), checked when opened,
//! and the per-thread CUDA context binding the engine's threads need.

use candle_core::{DType, Device, Tensor};

use crate::error::{candle_message, Error, Result};

/// What this build can run on, for messages and `build_info()`.
pub fn compiled_devices() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "metal") {
        v.push("metal");
    }
    v
}

/// The device a Runner takes when none is named: the accelerator this build
/// was compiled for, else the CPU.
pub fn default_device_name() -> &'static str {
    if cfg!(feature = "cuda") {
        "cuda:0"
    } else if cfg!(feature = "metal") {
        "metal"
    } else {
        "cpu"
    }
}

/// `device` as `open` takes it: "cpu", "cuda:N" or "metal".
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { .. } => "metal".to_string(),
        candle_core::DeviceLocation::Cpu => "cpu".to_string(),
    }
}

/// CUDA devices the driver reports (0 without the `cuda` feature or a driver).
pub fn cuda_device_count() -> usize {
    cuda_devices().unwrap_or(0)
}

/// CUDA devices the driver reports, or why the driver cannot say.
fn cuda_devices() -> std::result::Result<usize, String> {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda::cudarc::driver::{result, CudaContext};
        result::init().map_err(|e| format!("{e:?}"))?;
        CudaContext::device_count()
            .map(|n| n.max(0) as usize)
            .map_err(|e| format!("{e:?}"))
    }
    #[cfg(not(feature = "cuda"))]
    Ok(0)
}

/// Opens `name` and proves it usable with a round trip through its memory,
/// so that a missing driver, a driver stub or a device in a bad state fails
/// here with the device named, not at the first weight.
pub fn open(name: &str) -> Result<Device> {
    let build = || {
        format!(
            "this build of mistralrs has {}",
            compiled_devices().join(", ")
        )
    };
    let device = match name {
        "cpu" => return Ok(Device::Cpu),
        "metal" => {
            if !cfg!(feature = "metal") {
                return Err(Error::invalid(format!(
                    "device \"metal\" needs the Metal build (pip install mistralrs-metal); {}",
                    build()
                )));
            }
            Device::new_metal(0).map_err(|e| unavailable(name, &e))?
        }
        _ => {
            let ordinal = match name
                .strip_prefix("cuda:")
                .or((name == "cuda").then_some("0"))
            {
                Some(n) => n.parse::<usize>().map_err(|_| {
                    Error::invalid(format!("bad device `{name}`: expected \"cuda:N\""))
                })?,
                None => {
                    return Err(Error::invalid(format!(
                        "device must be \"cpu\", \"cuda:N\" or \"metal\", got `{name}`"
                    )))
                }
            };
            if !cfg!(feature = "cuda") {
                return Err(Error::invalid(format!(
                    "device \"{name}\" needs the CUDA build (pip install mistralrs-cuda); {}",
                    build()
                )));
            }
            let count = cuda_devices().map_err(|why| {
                let stub = if why.contains("STUB_LIBRARY") {
                    STUB_HINT
                } else {
                    ""
                };
                Error::invalid(format!(
                    "device \"{name}\" is not available: the CUDA driver cannot start: {why}{stub}"
                ))
            })?;
            if ordinal >= count {
                return Err(Error::invalid(format!(
                    "device \"{name}\" does not exist: the CUDA driver reports {count} device{}",
                    if count == 1 { "" } else { "s" }
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| unavailable(name, &e))?
        }
    };
    bind_thread(&device)?;
    let probe = Tensor::new(&[1f32, 2.0, 3.0], &device)
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| unavailable(name, &e))?;
    if probe != [1.0, 2.0, 3.0] {
        return Err(Error::runtime(format!(
            "device \"{name}\" returned {probe:?} for [1, 2, 3]"
        )));
    }
    Ok(device)
}

const STUB_HINT: &str =
    " (the process loaded a link-time stub of libcuda.so instead of the NVIDIA driver's: check LD_LIBRARY_PATH)";

fn unavailable(name: &str, e: &candle_core::Error) -> Error {
    let msg = candle_message(e);
    let hint = if msg.contains("STUB_LIBRARY") {
        STUB_HINT
    } else {
        ""
    };
    Error::invalid(format!("device `{name}` is not available: {msg}{hint}"))
}

/// Makes `device`'s CUDA context current on the calling thread.
///
/// cudarc binds the context before the calls it makes itself, but a tensor's
/// buffer is freed on whatever thread drops it, with no binding first: on a
/// thread where the context is not current the free fails with
/// CUDA_ERROR_INVALID_CONTEXT, and cudarc keeps that error in the context
/// and returns it from the next call on any thread. So each thread that
/// holds device tensors (the loader, the engine) binds once at its start.
pub fn bind_thread(device: &Device) -> Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        d.cuda_stream().context().bind_to_thread().map_err(|e| {
            Error::runtime(format!(
                "cannot make the CUDA context current on this thread: {e:?}"
            ))
        })?;
    }
    let _ = device;
    Ok(())
}
