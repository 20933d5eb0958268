//! The small GGUF model written out in the Hugging Face layout (f32, or bf16 as the Hub's
//! checkpoints mostly are): real safetensors weights without the Hub. Made once per machine under ~/.cache/wick/test-fixtures, and remade whenever
//! the exporter or the tokenizer code changes. Shared by the tests and the benches.

use std::path::{Path, PathBuf};

use candle_core::DType;

pub fn hf_fixture(gguf: &Path) -> PathBuf {
    hf_fixture_in(gguf, DType::F32)
}

/// The fixture with its weights stored as `dtype`. Several tests may make it at once: each
/// writes its own copy and the first rename wins.
pub fn hf_fixture_in(gguf: &Path, dtype: DType) -> PathBuf {
    let code = [
        include_str!("../../src/export/safetensors.rs"),
        include_str!("../../src/engine/gguf_metadata.rs"),
        include_str!("../../src/engine/tokenizer.rs"),
    ]
    .concat();
    let key = &wick::fetch::sha256_hex(code.as_bytes())[..16];
    let root =
        PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/wick/test-fixtures");
    let prefix = format!("smollm2-135m-hf-{}-", format!("{dtype:?}").to_lowercase());
    let dir = root.join(format!("{prefix}{key}"));
    if !dir.join("model.safetensors").is_file() {
        std::fs::create_dir_all(&root).expect("fixture directory");
        let tmp = tempfile::tempdir_in(&root).expect("temporary directory");
        wick::export::gguf_to_safetensors(gguf, tmp.path(), dtype).expect("export");
        // Another process may have won the race; either copy is the same.
        let _ = std::fs::rename(tmp.keep(), &dir);
        // Copies made by older exporters are never used again.
        for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            let name = old.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && old.path() != dir {
                let _ = std::fs::remove_dir_all(old.path());
            }
        }
    }
    dir
}
