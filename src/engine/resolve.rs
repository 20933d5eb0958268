//! From a model selector to local files: resolve it against the registry, then fetch (or find)
//! every file its backend needs.

use std::fmt;
use std::path::{Path, PathBuf};

use super::load::safetensors::{self, HfFiles};
use crate::error::{Error, Result};
use crate::fetch::{Fetcher, RepoRef};
use crate::registry::{Backend, ModelSelector, Registry};

/// Where a model's files are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A Hub repository. `listed` means the registry names every file the model needs, so no
    /// optional file is looked for beyond those.
    Hub {
        repo: RepoRef,
        gguf_file: Option<String>,
        listed: bool,
    },
    /// A `.gguf` file, or a directory in the Hugging Face layout.
    Local(PathBuf),
}

/// A selector resolved against the registry: everything needed to fetch and load the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedModel {
    pub name: String,
    pub backend: Backend,
    pub source: Source,
}

impl fmt::Display for ResolvedModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} backend) from ", self.name, self.backend)?;
        match &self.source {
            Source::Hub {
                repo, gguf_file, ..
            } => {
                write!(f, "hub repo {} revision {}", repo.repo, repo.revision)?;
                if let Some(file) = gguf_file {
                    write!(f, " file {file}")?;
                }
                Ok(())
            }
            Source::Local(path) => write!(f, "{}", path.display()),
        }
    }
}

impl ResolvedModel {
    pub fn resolve(registry: &Registry, selector: &ModelSelector) -> Result<Self> {
        let from_entry = |entry: &crate::registry::ModelEntry| ResolvedModel {
            name: entry.name.clone(),
            backend: entry.backend,
            source: Source::Hub {
                repo: RepoRef {
                    repo: entry.repo.clone(),
                    revision: entry.revision.clone(),
                    files: entry.files.clone(),
                },
                gguf_file: entry.gguf_file.clone(),
                listed: true,
            },
        };
        match selector {
            ModelSelector::Tier { tier, backend } => {
                Ok(from_entry(registry.by_tier(*tier, *backend)?))
            }
            ModelSelector::Name(name) => Ok(from_entry(registry.by_name(name)?)),
            ModelSelector::Repo {
                repo,
                file,
                revision,
                backend,
            } => {
                if !repo.contains('/') {
                    return Err(Error::InvalidRequest(format!(
                        "`{repo}` is neither a registry model nor a Hub repository (owner/name); \
                         run `wick models` to see the registry"
                    )));
                }
                let known = registry.by_repo(repo);
                let backend = match file {
                    Some(f) if f.ends_with(".gguf") => Backend::Gguf,
                    _ => *backend,
                };
                if backend == Backend::Gguf && file.is_none() {
                    return Err(Error::InvalidRequest(format!(
                        "name the GGUF file inside {repo}: --model {repo}:FILE.gguf (or use \
                         --backend huggingface for a safetensors repository)"
                    )));
                }
                let revision = revision
                    .clone()
                    .or_else(|| known.map(|k| k.revision.clone()))
                    .unwrap_or_else(|| "main".to_string());
                Ok(ResolvedModel {
                    name: selector.to_string(),
                    backend,
                    source: Source::Hub {
                        repo: RepoRef {
                            repo: repo.clone(),
                            revision,
                            files: known.map(|k| k.files.clone()).unwrap_or_default(),
                        },
                        gguf_file: file.clone().filter(|_| backend == Backend::Gguf),
                        listed: false,
                    },
                })
            }
            ModelSelector::Path(path) => {
                let backend = local_backend(path)?;
                Ok(ResolvedModel {
                    name: path.display().to_string(),
                    backend,
                    source: Source::Local(path.clone()),
                })
            }
        }
    }

    /// The files a fetch would need, each with its local path if a cache already holds it (no
    /// network): those the registry lists, else the GGUF file named. A local model is its path.
    pub async fn cached(&self, fetcher: &Fetcher) -> Vec<(String, Option<PathBuf>)> {
        let (repo, gguf_file) = match &self.source {
            Source::Local(path) => {
                return vec![(path.display().to_string(), Some(path.clone()))];
            }
            Source::Hub {
                repo, gguf_file, ..
            } => (repo, gguf_file),
        };
        let mut files: Vec<&str> = repo.files.iter().map(|f| f.path.as_str()).collect();
        if files.is_empty() {
            files.extend(gguf_file.as_deref());
        }
        let mut found = Vec::with_capacity(files.len());
        for file in files {
            found.push((file.to_string(), fetcher.cached(repo, file).await));
        }
        found
    }

    /// A key that identifies the same model however it was named.
    pub(crate) fn key(&self) -> String {
        match &self.source {
            Source::Hub {
                repo, gguf_file, ..
            } => format!(
                "{}@{}:{}:{}",
                repo.repo,
                repo.revision,
                gguf_file.as_deref().unwrap_or(""),
                self.backend
            ),
            Source::Local(path) => format!(
                "{}:{}",
                std::fs::canonicalize(path)
                    .unwrap_or_else(|_| path.clone())
                    .display(),
                self.backend
            ),
        }
    }
}

fn local_backend(path: &Path) -> Result<Backend> {
    let missing = |hint: &str| Error::MissingFile {
        path: path.to_path_buf(),
        hint: hint.to_string(),
    };
    if path.is_file() {
        return if path.extension().is_some_and(|e| e == "gguf") {
            Ok(Backend::Gguf)
        } else {
            Err(missing(
                " is not a .gguf file; give a .gguf file or a directory with config.json",
            ))
        };
    }
    if !path.is_dir() {
        return Err(missing(""));
    }
    if path.join("config.json").is_file() {
        return Ok(Backend::Huggingface);
    }
    let ggufs = gguf_files(path);
    if ggufs.len() == 1 {
        return Ok(Backend::Gguf);
    }
    Err(missing(&format!(
        ": the directory has no config.json and {} .gguf files; name the .gguf file itself",
        ggufs.len()
    )))
}

fn gguf_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
                .collect()
        })
        .unwrap_or_default()
}

/// The local files of a model, fetched as needed.
pub(crate) enum ModelFiles {
    Gguf {
        weights: PathBuf,
        tokenizer_json: Option<PathBuf>,
        tokenizer_config: Option<PathBuf>,
    },
    Hf(HfFiles),
}

impl ModelFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            ModelFiles::Gguf {
                weights,
                tokenizer_json,
                tokenizer_config,
            } => std::iter::once(weights.clone())
                .chain(tokenizer_json.clone())
                .chain(tokenizer_config.clone())
                .collect(),
            ModelFiles::Hf(files) => files.paths(),
        }
    }
}

/// Where each file comes from: a Hub repository through the fetcher, or a local directory.
enum FileSource<'a> {
    Hub {
        fetcher: &'a Fetcher,
        repo: &'a RepoRef,
        /// Only files the registry lists are looked for (no probing for optional files).
        listed: bool,
    },
    Dir(PathBuf),
}

impl FileSource<'_> {
    async fn required(&self, name: &str) -> Result<PathBuf> {
        match self {
            FileSource::Hub { fetcher, repo, .. } => fetcher.fetch(repo, name).await,
            FileSource::Dir(dir) => {
                let path = dir.join(name);
                if path.is_file() {
                    Ok(path)
                } else {
                    Err(Error::MissingFile {
                        path,
                        hint: String::new(),
                    })
                }
            }
        }
    }

    async fn optional(&self, name: &str) -> Result<Option<PathBuf>> {
        match self {
            FileSource::Hub {
                fetcher,
                repo,
                listed,
            } => {
                if *listed && !repo.files.iter().any(|f| f.path == name) {
                    return Ok(None);
                }
                fetcher.fetch_optional(repo, name).await
            }
            FileSource::Dir(dir) => Ok(Some(dir.join(name)).filter(|p| p.is_file())),
        }
    }
}

/// Fetches (or finds) every file `model` needs.
pub(crate) async fn fetch_files(model: &ResolvedModel, fetcher: &Fetcher) -> Result<ModelFiles> {
    let (source, gguf_name) = match &model.source {
        Source::Hub {
            repo,
            gguf_file,
            listed,
        } => (
            FileSource::Hub {
                fetcher,
                repo,
                listed: *listed,
            },
            gguf_file.clone(),
        ),
        Source::Local(path) if path.is_file() => (
            FileSource::Dir(path.parent().map(Path::to_path_buf).unwrap_or_default()),
            path.file_name().map(|n| n.to_string_lossy().into_owned()),
        ),
        Source::Local(dir) => (
            FileSource::Dir(dir.clone()),
            gguf_files(dir)
                .first()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned()),
        ),
    };
    match model.backend {
        Backend::Gguf => {
            let name = gguf_name.ok_or_else(|| {
                Error::InvalidRequest(format!("no .gguf file named for {}", model.name))
            })?;
            Ok(ModelFiles::Gguf {
                weights: source.required(&name).await?,
                tokenizer_json: source.optional("tokenizer.json").await?,
                tokenizer_config: source.optional("tokenizer_config.json").await?,
            })
        }
        Backend::Huggingface => {
            let config = source.required("config.json").await?;
            let tokenizer = source.required("tokenizer.json").await?;
            let tokenizer_config = source.optional("tokenizer_config.json").await?;
            let generation_config = source.optional("generation_config.json").await?;
            let chat_template = source.optional("chat_template.jinja").await?;
            let weights = match source.optional("model.safetensors.index.json").await? {
                Some(index) => {
                    let mut shards = Vec::new();
                    for shard in safetensors::shard_names(&index)? {
                        shards.push(source.required(&shard).await?);
                    }
                    shards
                }
                None => vec![source.required("model.safetensors").await?],
            };
            Ok(ModelFiles::Hf(HfFiles {
                config,
                tokenizer,
                tokenizer_config,
                generation_config,
                chat_template,
                weights,
            }))
        }
    }
}
