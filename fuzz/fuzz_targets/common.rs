//! What the targets share: a scratch folder per process, and loading a
//! model the way `Runner(...)` does, then generating a few tokens with it.
//!
//! A target fails (libFuzzer reports a crash) on a panic, caught or not
//! (libfuzzer-sys's panic hook aborts first), on an abort such as a failed
//! allocation (`-rss_limit_mb`/`-malloc_limit_mb`), and on a hang
//! (`-timeout`). An `Err` is the expected answer to a bad input.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use mistralrs_core::hub::TokenSource;
use mistralrs_core::loader::FileFormat;
use mistralrs_core::request::{GenerationRequest, PromptInput};
use mistralrs_core::sampler::SamplingParams;
use mistralrs_core::{Architecture, LoadOptions, ModelSpec, Runner, RunnerConfig};

/// The committed tokenizer folder (config.json, tokenizer.json, tokenizer_config.json).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixture/tokenizer")
}

/// A folder of this process's own, on tmpfs where there is one.
pub fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("mistralrs-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

pub fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).expect("scratch write");
}

/// A fixture file into the scratch folder. Not `std::fs::copy`: it can fail
/// with EINTR under libFuzzer's timer signals, where read and write retry.
pub fn copy_fixture(dir: &Path, name: &str) {
    let bytes = std::fs::read(fixture().join(name)).expect("fixture read");
    write(dir, name, &bytes);
}

pub fn options() -> LoadOptions {
    // A local path never reaches the network, but make sure of it.
    std::env::set_var("HF_HUB_OFFLINE", "1");
    LoadOptions { token_source: TokenSource::None, chat_template: None, device: candle_core::Device::Cpu, in_situ_quant: None, dtype: None }
}

pub fn gguf_spec(dir: &Path, name: &str, format: FileFormat, tok: Option<&Path>) -> ModelSpec {
    ModelSpec::File {
        format,
        tok_model_id: tok.map(|p| p.display().to_string()),
        quantized_model_id: dir.display().to_string(),
        quantized_filename: name.to_string(),
        tokenizer_json: None,
        adapters: None,
    }
}

pub fn plain_spec(dir: &Path) -> ModelSpec {
    ModelSpec::Plain { model_id: Some(dir.display().to_string()), arch: Architecture::Llama, tokenizer_json: None, adapters: None }
}

pub fn small_runner(spec: &ModelSpec) -> mistralrs_core::Result<Runner> {
    let cfg = RunnerConfig {
        max_seqs: 4,
        no_kv_cache: false,
        kv_cache_mb: Some(4),
        kv_cache_dtype: None,
        prefix_cache_n: 4,
        prefix_cache_mb: None,
        repeat_last_n: 64,
        seed: Some(0),
        draft: None,
        tool_call_format: None,
    };
    Runner::new(spec, &options(), cfg)
}

pub fn request(prompt: PromptInput, max_tokens: i64) -> GenerationRequest {
    GenerationRequest {
        model: "fuzz".into(),
        prompt,
        sampling: SamplingParams::default(),
        max_tokens: Some(max_tokens),
        n_choices: 1,
        best_of: 1,
        stop_seqs: Vec::new(),
        ignore_eos: true,
        stream: false,
        echo_prompt: false,
        seed: Some(0),
        logprobs: false,
        adapters: None,
        grammar: None,
        tools: None,
    }
}

/// Sends `req` and takes every event; a request that neither answers nor
/// fails within 20 s is a hang.
pub fn run(runner: &Runner, req: GenerationRequest) {
    let Ok(stream) = runner.send(req) else { return };
    loop {
        match stream.recv_timeout(Duration::from_secs(20)) {
            Ok(_) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("a request hung"),
        }
    }
    assert!(!runner.is_closed(), "a request closed the engine");
}

/// Loads `spec`; where that succeeds, a chat and a completion must run.
pub fn load_and_generate(spec: &ModelSpec) {
    if let Ok(runner) = small_runner(spec) {
        let msg = mistralrs_core::chat_template::ChatMessage::new("user", "Hi there");
        run(&runner, request(PromptInput::Messages(vec![msg]), 2));
        run(&runner, request(PromptInput::Completion("Hello world".into()), 2));
        runner.close();
    }
}

/// libfuzzer-sys aborts on every panic, caught or not. Panics raised inside
/// `crates` (third-party code that panics on malformed input where it
/// should fail, and that the engine calls under `catch_unwind` with the
/// panic turned into the file's error) are let through to that
/// `catch_unwind`; any other panic still aborts.
pub fn tolerate_panics_in(crates: &'static [&'static str]) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let fuzzer_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info.location().map(|l| l.file()).unwrap_or("");
            if !crates.iter().any(|c| file.contains(&format!("/{c}-"))) {
                fuzzer_hook(info)
            }
        }));
    });
}
