//! The wake-up pipe of one asyncio event loop (`mistralrs/_aio.py`): the
//! loop watches the read end; each async request's notifier writes a byte
//! to the write end whenever the request has news.
//!
//! Both ends belong to one reference-counted value held by the Python
//! object and by every notifier made from it, so they are closed when the
//! last of them goes: never while a request still in the engine could
//! write (a closed fd number may already name another file), and never
//! left open after the loop and its requests are gone.

use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;

struct Ends {
    read: PipeReader,
    write: PipeWriter,
}

#[pyclass(module = "mistralrs", frozen)]
pub struct WakePipe {
    ends: Arc<Ends>,
}

fn nonblocking(fd: i32) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd this process owns, with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[pymethods]
impl WakePipe {
    #[new]
    fn new() -> PyResult<Self> {
        let (read, write) = std::io::pipe().map_err(|e| PyOSError::new_err(format!("cannot open a wake-up pipe: {e}")))?;
        for fd in [read.as_raw_fd(), write.as_raw_fd()] {
            nonblocking(fd).map_err(|e| PyOSError::new_err(format!("cannot make the wake-up pipe non-blocking: {e}")))?;
        }
        Ok(Self { ends: Arc::new(Ends { read, write }) })
    }

    /// The end the event loop watches (`loop.add_reader`) and drains.
    #[getter]
    fn read_fd(&self) -> i32 {
        self.ends.read.as_raw_fd()
    }
}

impl WakePipe {
    /// A notifier for one request: writes a wake-up byte, keeping the pipe open while it lives.
    pub fn notifier(&self) -> mistralrs_core::engine::Notify {
        let ends = self.ends.clone();
        Arc::new(move || {
            // Non-blocking: a full pipe already holds a wake-up, so nothing is lost by skipping.
            let _ = (&ends.write).write(&[1u8]);
        })
    }
}
