//! mistralrs-core: the inference engine behind the `mistralrs` Python package.
//!
//! Dependencies point one way: `layers` <- `models` <- `weights`/`adapters`/`loader` <-
//! `engine` <- `runner` (the front the bindings use).

pub mod adapters;
pub mod architecture;
pub mod chat_template;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod grammar;
pub mod hub;
pub mod kernels;
pub mod kv_cache;
pub mod layers;
pub mod loader;
pub mod models;
pub mod request;
pub mod response;
pub mod runner;
pub mod sampler;
pub mod template_namespaces;
pub mod tokenizer;
pub mod weights;

pub use architecture::Architecture;
pub use error::{Error, Result};
pub use loader::{LoadOptions, ModelSpec};
pub use runner::{ResponseStream, Runner, RunnerConfig};
