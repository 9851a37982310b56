//! mistralrs-core: the inference engine behind the `mistralrs` Python package.
//!
//! Dependencies point one way: bottom to top, each module imports only
//! modules on the lines above its own. `scripts/module_graph.py` prints this
//! from the code's `crate::`/`super::` paths and fails on any cycle, between
//! these modules or between the files of any directory.
//!
//! 0. `error`, `kv_cache`, `response`, `sampler`, `step_alloc`, `template_namespaces`: nothing
//! 1. `architecture`, `device`, `hub`: error; `chat_template`: error, template_namespaces;
//!    `kernels`: kv_cache (the block size its attention kernel reads by)
//! 2. `layers`: kernels, kv_cache
//! 3. `config`: architecture, error, layers (activations, rotary frequencies)
//! 4. `weights`: architecture, config, error, kernels, layers
//! 5. `models`: architecture, config, error, kv_cache, layers, weights;
//!    `tokenizer`: error, weights (a GGUF file's vocabulary)
//! 6. `adapters`: architecture, config, error, hub, kv_cache, layers, models, weights;
//!    `grammar`: error, tokenizer
//! 7. `loader`: adapters, architecture, chat_template, config, device, error, hub, models,
//!    tokenizer, weights; `tools`: chat_template, error, grammar
//! 8. `request`: chat_template, error, grammar, sampler, tools
//! 9. `engine`: config, device, error, grammar, kv_cache, layers, models, request, response,
//!    sampler, tokenizer, tools
//! 10. `runner` (the front the bindings use): adapters, chat_template, device, engine, error,
//!    grammar, kernels, kv_cache, loader, request, response, tokenizer, tools

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
pub mod step_alloc;
pub mod template_namespaces;
pub mod tokenizer;
pub mod tools;
pub mod weights;

pub use architecture::Architecture;
pub use error::{Error, Result};
pub use loader::{LoadOptions, ModelSpec};
pub use runner::{ResponseStream, Runner, RunnerConfig};
