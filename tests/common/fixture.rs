//! The small GGUF model written out in the Hugging Face layout (f32): real safetensors weights
//! without the Hub. Made once per machine under ~/.cache/wick/test-fixtures, and remade whenever
//! the exporter or the tokenizer code changes. Shared by the tests and the benches.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub fn hf_fixture(gguf: &Path) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let code = [
            include_str!("../../src/export.rs"),
            include_str!("../../src/engine/gguf_metadata.rs"),
            include_str!("../../src/engine/tokenizer.rs"),
        ]
        .concat();
        let key = &wick::fetch::sha256_hex(code.as_bytes())[..16];
        let root =
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/wick/test-fixtures");
        let dir = root.join(format!("smollm2-135m-hf-f32-{key}"));
        if !dir.join("model.safetensors").is_file() {
            std::fs::create_dir_all(&root).expect("fixture directory");
            let tmp = tempfile::tempdir_in(&root).expect("temporary directory");
            wick::export::gguf_to_safetensors(gguf, tmp.path(), candle_core::DType::F32)
                .expect("export");
            // Another process may have won the race; either copy is the same.
            let _ = std::fs::rename(tmp.keep(), &dir);
            // Copies made by older exporters are never used again.
            for old in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                let name = old.file_name().to_string_lossy().into_owned();
                if name.starts_with("smollm2-135m-hf-f32-") && old.path() != dir {
                    let _ = std::fs::remove_dir_all(old.path());
                }
            }
        }
        dir
    })
    .clone()
}
