//! A small Hugging Face Hub on loopback that serves directories as model repositories the way
//! the real Hub serves them to its clients, so that the real hf-hub code path (HEAD, redirect,
//! GET, cache) runs against it:
//!
//! - `HEAD|GET /{owner}/{name}/resolve/{revision}/{file}`: small files directly with `ETag` and
//!   `X-Repo-Commit`; large (LFS) files as a 302 to an absolute content-store URL, the redirect
//!   itself carrying `X-Linked-Etag`, `X-Linked-Size` and `X-Repo-Commit`, as the Hub does.
//! - `GET /api/models/{owner}/{name}[/revision/{revision}]` and `.../tree/{revision}`.
//! - Errors as the Hub sends them: 404 with `X-Error-Code: RepoNotFound | EntryNotFound |
//!   RevisionNotFound`, and 401/403 with `X-Error-Code: GatedRepo` for gated repositories.
//! - HTTP range requests (206 with `Content-Range`).
//! - Faults on demand: a download cut off after some bytes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Files at least this large are served like Git LFS files.
const LFS_THRESHOLD: u64 = 1 << 20;

pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct File {
    path: PathBuf,
    size: u64,
    sha256: String,
}

struct Repo {
    files: HashMap<String, File>,
    /// The commit `main` points at.
    commit: String,
    /// A gated repository answers only requests carrying this bearer token.
    token: Option<String>,
}

#[derive(Default)]
struct Hub {
    repos: HashMap<String, Repo>,
    /// blob sha256 → file, for the LFS content URLs.
    blobs: HashMap<String, PathBuf>,
    /// file name → bytes to send before cutting the next download of it.
    cut: Mutex<HashMap<String, u64>>,
    log: Mutex<Vec<String>>,
}

pub struct HubBuilder {
    hub: Hub,
}

impl HubBuilder {
    pub fn new() -> Self {
        Self {
            hub: Hub::default(),
        }
    }

    /// Serves every file of `dir` as repository `id` (`owner/name`) at commit [`COMMIT`].
    pub fn repo(self, id: &str, dir: &Path) -> Self {
        self.repo_at(id, dir, COMMIT)
    }

    /// Serves `dir` as repository `id` whose `main` is at `commit`.
    pub fn repo_at(mut self, id: &str, dir: &Path, commit: &str) -> Self {
        self.add(id, dir, commit, None);
        self
    }

    /// A gated repository: only `Authorization: Bearer {token}` gets its files.
    pub fn gated_repo(mut self, id: &str, dir: &Path, token: &str) -> Self {
        self.add(id, dir, COMMIT, Some(token.to_string()));
        self
    }

    fn add(&mut self, id: &str, dir: &Path, commit: &str, token: Option<String>) {
        let mut files = HashMap::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_file() {
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let sha256 = hex::encode(Sha256::digest(&bytes));
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            self.hub.blobs.insert(sha256.clone(), path.clone());
            files.insert(
                name,
                File {
                    path,
                    size: bytes.len() as u64,
                    sha256,
                },
            );
        }
        self.hub.repos.insert(
            id.to_string(),
            Repo {
                files,
                commit: commit.to_string(),
                token,
            },
        );
    }

    pub async fn start(self) -> FakeHub {
        let hub = Arc::new(self.hub);
        let app = Router::new()
            .route("/api/models/{owner}/{name}", get(model_info))
            .route(
                "/api/models/{owner}/{name}/revision/{revision}",
                get(model_info_at),
            )
            .route("/api/models/{owner}/{name}/tree/{revision}", get(tree))
            .route("/{owner}/{name}/resolve/{revision}/{*file}", get(resolve))
            .route("/lfs/{sha256}", get(lfs))
            .with_state(hub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let shutdown = stop.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { shutdown.cancelled().await })
                .await
                .unwrap();
        });
        FakeHub {
            endpoint,
            hub,
            stop,
            task: Some(task),
        }
    }
}

pub struct FakeHub {
    pub endpoint: String,
    hub: Arc<Hub>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeHub {
    /// The next download of `file` stops after `bytes` bytes (the connection drops).
    pub fn cut_next_download(&self, file: &str, bytes: u64) {
        self.hub.cut.lock().unwrap().insert(file.to_string(), bytes);
    }

    /// Requests served so far, as `METHOD /path`.
    pub fn requests(&self) -> Vec<String> {
        self.hub.log.lock().unwrap().clone()
    }

    /// Stops listening; later requests are refused.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An error as the Hub sends it: status, `X-Error-Code`, `X-Error-Message`, and for missing
/// files in an existing repository the `X-Repo-Commit` it was looked up at.
struct HubError {
    status: StatusCode,
    code: &'static str,
    message: String,
    commit: Option<String>,
}

fn hub_error(
    status: StatusCode,
    code: &'static str,
    message: &str,
    commit: Option<&str>,
) -> HubError {
    HubError {
        status,
        code,
        message: message.to_string(),
        commit: commit.map(str::to_string),
    }
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let body = axum::Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert("x-error-code", self.code.parse().unwrap());
        headers.insert("x-error-message", self.message.parse().unwrap());
        if let Some(commit) = self.commit {
            headers.insert("x-repo-commit", commit.parse().unwrap());
        }
        response
    }
}

/// The repository, if it exists and the request may see it.
fn repo<'a>(hub: &'a Hub, id: &str, headers: &HeaderMap) -> Result<&'a Repo, HubError> {
    let Some(repo) = hub.repos.get(id) else {
        return Err(hub_error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
            None,
        ));
    };
    if let Some(token) = &repo.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None => {
                let message = format!(
                    "Access to model {id} is restricted. You must have access to it and be authenticated to access it. Please log in."
                );
                return Err(hub_error(
                    StatusCode::UNAUTHORIZED,
                    "GatedRepo",
                    &message,
                    None,
                ));
            }
            Some(t) if t != token => {
                let message = format!(
                    "Access to model {id} is restricted and you are not in the authorized list."
                );
                return Err(hub_error(
                    StatusCode::FORBIDDEN,
                    "GatedRepo",
                    &message,
                    None,
                ));
            }
            Some(_) => {}
        }
    }
    Ok(repo)
}

fn check_revision(repo: &Repo, revision: &str) -> Result<(), HubError> {
    if revision == "main" || revision == repo.commit {
        Ok(())
    } else {
        Err(hub_error(
            StatusCode::NOT_FOUND,
            "RevisionNotFound",
            "Invalid rev id",
            None,
        ))
    }
}

async fn model_info(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name)): UrlPath<(String, String)>,
    headers: HeaderMap,
) -> Response {
    info(&hub, &format!("{owner}/{name}"), "main", &headers)
}

async fn model_info_at(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    info(&hub, &format!("{owner}/{name}"), &revision, &headers)
}

fn info(hub: &Hub, id: &str, revision: &str, headers: &HeaderMap) -> Response {
    hub.log
        .lock()
        .unwrap()
        .push(format!("GET /api/models/{id}"));
    let repo = match repo(hub, id, headers).and_then(|r| check_revision(r, revision).map(|()| r)) {
        Ok(repo) => repo,
        Err(error) => return error.into_response(),
    };
    let siblings: Vec<_> = repo
        .files
        .keys()
        .map(|f| serde_json::json!({ "rfilename": f }))
        .collect();
    axum::Json(serde_json::json!({ "id": id, "sha": repo.commit, "siblings": siblings }))
        .into_response()
}

async fn tree(
    State(hub): State<Arc<Hub>>,
    UrlPath((owner, name, revision)): UrlPath<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{owner}/{name}");
    let repo =
        match repo(&hub, &id, &headers).and_then(|r| check_revision(r, &revision).map(|()| r)) {
            Ok(repo) => repo,
            Err(error) => return error.into_response(),
        };
    let entries: Vec<_> = repo
        .files
        .iter()
        .map(|(path, f)| serde_json::json!({ "type": "file", "oid": f.sha256, "size": f.size, "path": path }))
        .collect();
    axum::Json(entries).into_response()
}

async fn resolve(
    State(hub): State<Arc<Hub>>,
    method: Method,
    UrlPath((owner, name, revision, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let id = format!("{owner}/{name}");
    hub.log
        .lock()
        .unwrap()
        .push(format!("{method} /{id}/resolve/{revision}/{file}"));
    let repo =
        match repo(&hub, &id, &headers).and_then(|r| check_revision(r, &revision).map(|()| r)) {
            Ok(repo) => repo,
            Err(error) => return error.into_response(),
        };
    let Some(entry) = repo.files.get(&file) else {
        let message = format!("{file} does not exist");
        return hub_error(
            StatusCode::NOT_FOUND,
            "EntryNotFound",
            &message,
            Some(&repo.commit),
        )
        .into_response();
    };
    let etag = format!("\"{}\"", entry.sha256);
    if entry.size >= LFS_THRESHOLD {
        // Git LFS: the Hub redirects to its content store and describes the target itself.
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("127.0.0.1");
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(
                header::LOCATION,
                format!("http://{host}/lfs/{}", entry.sha256),
            )
            .header("x-linked-etag", &etag)
            .header("x-linked-size", entry.size)
            .header("x-repo-commit", &repo.commit)
            .header(header::ETAG, &etag)
            .body(Body::empty())
            .unwrap();
    }
    let mut response = content(&hub, &entry.path, &file, &method, &headers);
    let extra = response.headers_mut();
    extra.insert(header::ETAG, etag.parse().unwrap());
    extra.insert("x-repo-commit", repo.commit.parse().unwrap());
    response
}

async fn lfs(
    State(hub): State<Arc<Hub>>,
    method: Method,
    UrlPath(sha256): UrlPath<String>,
    headers: HeaderMap,
) -> Response {
    hub.log
        .lock()
        .unwrap()
        .push(format!("{method} /lfs/{sha256}"));
    let Some(path) = hub.blobs.get(&sha256) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut response = content(&hub, path, &name, &method, &headers);
    response
        .headers_mut()
        .insert(header::ETAG, format!("\"{sha256}\"").parse().unwrap());
    response
}

/// A file's bytes, honouring `Range` and any fault set for it.
fn content(hub: &Hub, path: &Path, name: &str, method: &Method, headers: &HeaderMap) -> Response {
    let bytes = std::fs::read(path).unwrap();
    let size = bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(a, b)| {
            let start: u64 = a.parse().ok()?;
            let end: u64 = if b.is_empty() {
                size - 1
            } else {
                b.parse().ok()?
            };
            (start <= end && end < size).then_some((start, end))
        });
    let (status, body) = match range {
        Some((start, end)) => (
            StatusCode::PARTIAL_CONTENT,
            bytes[start as usize..=end as usize].to_vec(),
        ),
        None => (StatusCode::OK, bytes),
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_LENGTH, body.len())
        .header(header::ACCEPT_RANGES, "bytes");
    if let Some((start, end)) = range {
        builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
    }
    if *method == Method::HEAD {
        return builder.body(Body::empty()).unwrap();
    }
    let cut = hub.cut.lock().unwrap().remove(name);
    let body = match cut {
        None => Body::from(body),
        Some(keep) => {
            // Send the first bytes, then fail the stream: the client sees the connection drop
            // before Content-Length bytes arrived.
            let head = body[..keep as usize].to_vec();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                Ok(head),
                Err(std::io::Error::other("connection cut by the test")),
            ];
            Body::from_stream(futures::stream::iter(chunks))
        }
    };
    builder.body(body).unwrap()
}
