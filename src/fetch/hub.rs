//! The Hugging Face Hub through hf-hub, configured from the standard environment variables.

use std::path::PathBuf;
use std::time::Duration;

use hf_hub::{HFClient, HFError};

use super::RepoRef;
use super::progress::DownloadBar;

/// How to reach the Hub. Built from the environment, as the Python `huggingface_hub` reads it.
#[derive(Clone, Debug)]
pub struct HubConfig {
    endpoint: String,
    token: Option<String>,
    cache_dir: PathBuf,
    offline: bool,
    /// Retries after the first try for connection errors and 5xx answers.
    retries: usize,
}

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubConfig {
    pub fn from_env() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let cache_dir = env("HF_HUB_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("HF_HOME").map(|h| PathBuf::from(h).join("hub")))
            .unwrap_or_else(hf_hub::resolve_cache_dir);
        Self {
            endpoint: env("HF_ENDPOINT")
                .map(|e| e.trim_end_matches('/').to_string())
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            token: env("HF_TOKEN"),
            cache_dir,
            offline: env("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true")
            }),
            retries: 2,
        }
    }

    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into().trim_end_matches('/').to_string();
        self
    }

    pub fn with_cache_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache_dir = dir.into();
        self
    }

    pub fn with_offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn cache_dir(&self) -> &std::path::Path {
        &self.cache_dir
    }

    pub fn offline(&self) -> bool {
        self.offline
    }

    fn client(&self) -> Result<HFClient, HubError> {
        let mut builder = HFClient::builder()
            .endpoint(self.endpoint.clone())
            .cache_dir(self.cache_dir.clone())
            .retry_max_attempts(self.retries)
            .retry_base_delay(Duration::from_millis(200));
        if let Some(token) = &self.token {
            builder = builder.token(token.clone());
        }
        builder
            .build()
            .map_err(|e| HubError::Other(format!("cannot set up the Hub client: {e}")))
    }

    /// The cached copy of `file`, without any network access.
    pub async fn cached(&self, repo: &RepoRef, file: &str) -> Option<PathBuf> {
        let client = self.client().ok()?;
        let (owner, name) = hf_hub::split_id(&repo.repo);
        client
            .model(owner, name)
            .download_file()
            .filename(file)
            .revision(repo.revision.clone())
            .local_files_only(true)
            .send()
            .await
            .ok()
    }

    /// Downloads `file` into the Hub cache (or finds it there) and returns its path.
    pub async fn download(&self, repo: &RepoRef, file: &str) -> Result<PathBuf, HubError> {
        let client = self.client()?;
        let (owner, name) = hf_hub::split_id(&repo.repo);
        let handle = client.model(owner, name);
        // Another process holding the lock is downloading the same blob: wait for it.
        let mut lock_waits = 0;
        let result = loop {
            let result = handle
                .download_file()
                .filename(file)
                .revision(repo.revision.clone())
                .local_files_only(self.offline)
                .progress(DownloadBar::new(file))
                .send()
                .await;
            match result {
                Err(HFError::CacheLockTimeout { .. }) if lock_waits < 60 => {
                    lock_waits += 1;
                    tracing::info!(file, "another process is downloading it; waiting");
                }
                other => break other,
            }
        };
        match result {
            Ok(path) => Ok(path),
            Err(e) => Err(self.explain(e, repo, file, &handle).await),
        }
    }

    async fn explain(
        &self,
        error: HFError,
        repo: &RepoRef,
        file: &str,
        handle: &hf_hub::HFRepository<hf_hub::RepoTypeModel>,
    ) -> HubError {
        let endpoint = &self.endpoint;
        match error {
            HFError::LocalEntryNotFound { .. } => HubError::Other(format!(
                "HF_HUB_OFFLINE is set and {file} of {repo} is not in the cache at {}; \
                 unset HF_HUB_OFFLINE to download it",
                self.cache_dir.display()
            )),
            HFError::EntryNotFound { .. } | HFError::RepoNotFound { .. } => {
                // A 404 on a file download does not say whether the repository or the revision
                // exists: ask (when the network may be used).
                if !self.offline {
                    if !handle.exists().send().await.unwrap_or(true) {
                        return repo_not_found(repo, endpoint);
                    }
                    let revision = &repo.revision;
                    let known = handle.revision_exists().revision(revision).send().await;
                    if !known.unwrap_or(true) {
                        return revision_not_found(repo, revision, endpoint);
                    }
                }
                HubError::NotFound(format!("{repo} has no file {file} (404 from {endpoint})"))
            }
            HFError::AuthRequired { context } | HFError::Forbidden { context }
                if context.error_code.as_deref() == Some("RepoNotFound") =>
            {
                // The Hub answers 401 rather than 404 to anonymous callers for unknown repositories.
                repo_not_found(repo, endpoint)
            }
            HFError::RevisionNotFound { revision, .. } => {
                revision_not_found(repo, &revision, endpoint)
            }
            HFError::AuthRequired { context } | HFError::Forbidden { context } => {
                let status = context.status.as_u16();
                let gated = context.error_code.as_deref() == Some("GatedRepo");
                let what = if gated {
                    format!("{} is a gated repository", repo.repo)
                } else {
                    format!("{} requires authorization", repo.repo)
                };
                let todo = if self.token.is_some() {
                    "the token in HF_TOKEN was refused: check that it is valid and that its \
                     account has accepted the model's terms on the Hub"
                } else {
                    "accept its terms on the Hub, then pass an access token with HF_TOKEN=hf_..."
                };
                HubError::Other(format!("{what} ({status} from {endpoint}); {todo}"))
            }
            HFError::Request { source, .. } if source.is_connect() || source.is_timeout() => {
                let mirror = if endpoint == DEFAULT_ENDPOINT {
                    "set HF_ENDPOINT to use a mirror"
                } else {
                    "check that the endpoint in HF_ENDPOINT is up"
                };
                HubError::Other(format!(
                    "cannot reach the Hub at {endpoint} ({}); {mirror}, or set HF_HUB_OFFLINE=1 \
                     to use only the cache",
                    root_cause(&source)
                ))
            }
            other => HubError::Other(format!("{other}")),
        }
    }
}

fn repo_not_found(repo: &RepoRef, endpoint: &str) -> HubError {
    HubError::Other(format!(
        "repository {} not found on {endpoint} (404); check the name, or set HF_TOKEN if it is \
         private",
        repo.repo
    ))
}

fn revision_not_found(repo: &RepoRef, revision: &str, endpoint: &str) -> HubError {
    HubError::Other(format!(
        "revision `{revision}` not found in {} on {endpoint}; check the branch, tag or commit",
        repo.repo
    ))
}

/// The innermost error message, which names the real problem (DNS, refused, TLS...).
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// The repository exists but does not have this file.
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Other(String),
}
