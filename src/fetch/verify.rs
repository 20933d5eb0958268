//! sha256 checks, remembered so that a large file is hashed once rather than at every start.

use std::io::Read;
use std::path::Path;
use std::time::UNIX_EPOCH;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Fails with [`Error::Checksum`] unless `path` hashes to `expected`.
pub async fn check(cache: &Path, path: &Path, expected: &str, origin: &str) -> Result<()> {
    let expected = expected.to_ascii_lowercase();
    let record = cache.join("verified").join(&expected);
    let stamp = stamp(path)?;
    if std::fs::read_to_string(&record).is_ok_and(|s| s == stamp) {
        return Ok(());
    }
    let actual = {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(|e| Error::Io(std::io::Error::other(e)))??
    };
    if actual != expected {
        return Err(Error::Checksum {
            path: path.to_path_buf(),
            origin: origin.to_string(),
            expected,
            actual,
        });
    }
    // Best effort: failing to remember only means hashing again next time.
    if let Some(dir) = record.parent()
        && std::fs::create_dir_all(dir).is_ok()
    {
        let _ = write_atomically(&record, stamp.as_bytes());
    }
    Ok(())
}

/// Identifies the file's current contents cheaply: canonical path, size and modification time.
fn stamp(path: &Path) -> Result<String> {
    let real = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&real)?;
    let mtime = meta
        .modified()?
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    Ok(format!("{} {} {}", real.display(), meta.len(), mtime))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let total = file.metadata()?.len();
    let bar = (total > 64 << 20).then(|| super::progress::bytes_bar("checking sha256", total));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(bar) = &bar {
            bar.inc(n as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes through a unique temporary file in the same directory and renames it into place, so
/// that readers (and other processes writing the same file) never see a partial file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Where a temporary file for `path` goes: beside it, so the final rename stays atomic.
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    tempfile::Builder::new()
        .prefix(".wick-partial-")
        .tempfile_in(dir)
}
