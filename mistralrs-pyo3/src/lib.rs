//! The `mistralrs._mistralrs` extension module. It only declares the module:
//! each Python concept lives in its own file and delegates to mistralrs-core.

use pyo3::prelude::*;

mod build_info;
mod errors;
mod requests;
mod runner;
#[cfg(unix)]
mod wake;
mod which;

/// Large blocks freed during a model step are reused within it (see
/// `mistralrs_core::step_alloc`); everything else is `System`'s.
#[global_allocator]
static ALLOCATOR: mistralrs_core::step_alloc::StepAllocator = mistralrs_core::step_alloc::StepAllocator;

#[pymodule]
fn _mistralrs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    use mistralrs_core::response::*;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<mistralrs_core::Architecture>()?;
    m.add_class::<which::Which>()?;
    m.add_class::<runner::Runner>()?;
    m.add_class::<runner::ResponseIterator>()?;
    m.add_class::<runner::PendingResponse>()?;
    #[cfg(unix)]
    m.add_class::<wake::WakePipe>()?;
    m.add_class::<requests::ChatCompletionRequest>()?;
    m.add_class::<requests::CompletionRequest>()?;
    m.add_class::<ChatCompletionResponse>()?;
    m.add_class::<ChatCompletionChunkResponse>()?;
    m.add_class::<CompletionResponse>()?;
    m.add_class::<Usage>()?;
    m.add_class::<PromptTokensDetails>()?;
    m.add_class::<Choice>()?;
    m.add_class::<ChunkChoice>()?;
    m.add_class::<CompletionChoice>()?;
    m.add_class::<ResponseMessage>()?;
    m.add_class::<ToolCall>()?;
    m.add_class::<FunctionCall>()?;
    m.add_class::<ToolCallDelta>()?;
    m.add_class::<FunctionCallDelta>()?;
    m.add_class::<Delta>()?;
    m.add_class::<Logprobs>()?;
    m.add_class::<ResponseLogprob>()?;
    m.add_class::<TopLogprob>()?;
    m.add_function(wrap_pyfunction!(build_info::build_info, m)?)?;
    Ok(())
}
