//! A legacy GGML/GGMF/GGJT file, with the committed tokenizer folder.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use mistralrs_core::loader::FileFormat;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch();
    common::write(&dir, "model.bin", data);
    let tok = common::fixture();
    common::load_and_generate(&common::gguf_spec(&dir, "model.bin", FileFormat::Ggml, Some(&tok)));
});
