//! Where model files come from: the Hugging Face Hub, or a mirror that carries an identical copy.
//!
//! For each file the sources are tried in order — the local caches, the Hub, then each mirror
//! the registry names — and the outcome of each is logged. A file with a known sha256 is checked
//! after every download; a file that fails the check is never handed to the loader.

mod hub;
mod pip;
mod progress;
mod verify;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::registry::FileSpec;

pub use hub::HubConfig;
pub use verify::sha256_hex;
pub(crate) use verify::usual_permissions;

/// A model repository at a revision, plus what the registry knows about its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoRef {
    pub repo: String,
    pub revision: String,
    pub files: Vec<FileSpec>,
}

impl RepoRef {
    fn spec(&self, path: &str) -> Option<&FileSpec> {
        self.files.iter().find(|f| f.path == path)
    }
}

impl std::fmt::Display for RepoRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// Fetches files into the caches and returns their local paths.
#[derive(Clone, Debug)]
pub struct Fetcher {
    hub: HubConfig,
    /// wick's own cache (`WICK_CACHE`): mirror downloads and sha256 records.
    cache: PathBuf,
    python: String,
}

impl Fetcher {
    /// Reads `HF_ENDPOINT`, `HF_TOKEN`, `HF_HOME`/`HF_HUB_CACHE`, `HF_HUB_OFFLINE`,
    /// `WICK_CACHE` and `WICK_PYTHON`.
    pub fn from_env() -> Self {
        let cache = env("WICK_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            env("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir)
                .join("wick")
        });
        Self {
            hub: HubConfig::from_env(),
            cache,
            python: env("WICK_PYTHON").unwrap_or_else(|| "python3".to_string()),
        }
    }

    pub fn with_hub(mut self, hub: HubConfig) -> Self {
        self.hub = hub;
        self
    }

    pub fn with_cache(mut self, cache: PathBuf) -> Self {
        self.cache = cache;
        self
    }

    pub fn hub(&self) -> &HubConfig {
        &self.hub
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The local path of `file`, fetching it if needed.
    pub async fn fetch(&self, repo: &RepoRef, file: &str) -> Result<PathBuf> {
        match self.fetch_inner(repo, file, false).await? {
            Some(path) => Ok(path),
            None => Err(Error::Fetch {
                repo: repo.to_string(),
                file: file.to_string(),
                attempts: "  - hub: the repository has no such file".into(),
            }),
        }
    }

    /// Like [`fetch`](Self::fetch), but `None` when the repository does not have the file or
    /// the Hub cannot be asked (optional files such as `generation_config.json`).
    pub async fn fetch_optional(&self, repo: &RepoRef, file: &str) -> Result<Option<PathBuf>> {
        self.fetch_inner(repo, file, true).await
    }

    /// Whether `file` is already in a cache (no network).
    pub async fn cached(&self, repo: &RepoRef, file: &str) -> Option<PathBuf> {
        if let Some(sha) = repo.spec(file).and_then(|s| s.sha256.as_deref())
            && let Some(path) = pip::cached(&self.cache, sha, file)
        {
            return Some(path);
        }
        self.hub.cached(repo, file).await
    }

    async fn fetch_inner(
        &self,
        repo: &RepoRef,
        file: &str,
        optional: bool,
    ) -> Result<Option<PathBuf>> {
        let spec = repo.spec(file);
        let sha256 = spec.and_then(|s| s.sha256.as_deref());
        if let Some(sha) = sha256
            && let Some(path) = pip::cached(&self.cache, sha, file)
        {
            tracing::debug!(file, path = %path.display(), "mirror cache hit");
            return Ok(Some(path));
        }

        let mut attempts = Vec::new();
        match self.hub.download(repo, file).await {
            Ok(path) => {
                if let Some(sha) = sha256 {
                    let origin = format!("the Hub ({}, {repo})", self.hub.endpoint());
                    verify::check(&self.cache, &path, sha, &origin).await?;
                }
                tracing::info!(file, %repo, path = %path.display(), "hub: ok");
                return Ok(Some(path));
            }
            Err(hub::HubError::NotFound(message)) if optional => {
                tracing::debug!(file, %repo, "hub: {message}");
                return Ok(None);
            }
            // Each failure is told once: in the error that lists every attempt (logged here
            // only at debug), or not at all when a mirror then has the file.
            Err(e) => {
                let message = e.to_string();
                tracing::debug!(file, %repo, "hub: {message}");
                if spec.is_some_and(|s| !s.mirrors.is_empty()) {
                    tracing::info!(file, %repo, "not fetched from the Hub; trying mirrors");
                }
                attempts.push(format!("  - hub {}: {message}", self.hub.endpoint()));
            }
        }

        for mirror in spec.map(|s| s.mirrors.as_slice()).unwrap_or_default() {
            let Some(sha) = sha256 else {
                attempts.push(format!(
                    "  - {}: skipped, the registry gives no sha256 to check the copy against",
                    mirror.label()
                ));
                continue;
            };
            if self.hub.offline() {
                attempts.push(format!(
                    "  - {}: skipped, HF_HUB_OFFLINE is set",
                    mirror.label()
                ));
                continue;
            }
            match pip::fetch(&self.python, &self.cache, mirror, sha, file).await {
                Ok(path) => {
                    tracing::info!(file, mirror = %mirror.label(), path = %path.display(), "mirror: ok");
                    return Ok(Some(path));
                }
                Err(e) => {
                    tracing::debug!(file, mirror = %mirror.label(), "mirror: {e}");
                    attempts.push(format!("  - {}: {e}", mirror.label()));
                }
            }
        }

        if optional {
            return Ok(None);
        }
        Err(Error::Fetch {
            repo: repo.to_string(),
            file: file.to_string(),
            attempts: attempts.join("\n"),
        })
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}
