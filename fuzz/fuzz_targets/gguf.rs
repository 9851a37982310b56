//! A whole GGUF file: header, metadata, model config, tensors, the
//! tokenizer and chat template built from its metadata, then generation.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use mistralrs_core::loader::FileFormat;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch();
    common::write(&dir, "model.gguf", data);
    common::load_and_generate(&common::gguf_spec(&dir, "model.gguf", FileFormat::Gguf, None));
});
