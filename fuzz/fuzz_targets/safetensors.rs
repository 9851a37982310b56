//! `model.safetensors` (header and data) beside the committed config and tokenizer.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = common::scratch();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        common::copy_fixture(&dir, f);
    }
    common::write(&dir, "model.safetensors", data);
    common::load_and_generate(&common::plain_spec(&dir));
});
