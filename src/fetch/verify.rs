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
    let mut tmp = temp_beside(path)?;
    std::io::Write::write_all(&mut tmp, bytes)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Where a temporary file for `path` goes: beside it, so the final rename stays atomic. It gets
/// the mode of any newly created file (0666 less the umask), not tempfile's private 0600, since
/// it becomes the file itself.
pub fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    std::fs::create_dir_all(&dir)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".wick-partial-");
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder.tempfile_in(dir)
}

/// Gives `path` (written by a library through a private temporary file) the mode of any newly
/// created file in its directory: 0666 less the umask.
pub fn usual_permissions(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let probe = temp_beside(path)?;
        std::fs::set_permissions(path, probe.as_file().metadata()?.permissions())?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Cached and exported files get the mode `std::fs::write` gives (whatever the umask).
    #[test]
    fn written_files_get_the_usual_mode() {
        let dir = tempfile::tempdir().unwrap();
        let usual = dir.path().join("usual");
        std::fs::write(&usual, b"x").unwrap();

        let atomic = dir.path().join("atomic");
        write_atomically(&atomic, b"x").unwrap();
        assert_eq!(mode(&atomic), mode(&usual));

        let persisted = dir.path().join("persisted");
        temp_beside(&persisted)
            .unwrap()
            .persist(&persisted)
            .unwrap();
        assert_eq!(mode(&persisted), mode(&usual));

        let private = dir.path().join("private");
        tempfile::NamedTempFile::new_in(dir.path())
            .unwrap()
            .persist(&private)
            .unwrap();
        assert_eq!(mode(&private), 0o600);
        usual_permissions(&private).unwrap();
        assert_eq!(mode(&private), mode(&usual));
    }
}
