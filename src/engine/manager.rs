//! `ModelManager`: the front ends' one way to reach a model. It resolves names against the
//! registry, loads each model at most once (also under concurrent first use), and keeps it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::OnceCell;

use super::resolve::{self, ResolvedModel};
use super::start::{self, LoadOptions};
use super::{Engine, ModelInfo};
use crate::error::Result;
use crate::fetch::Fetcher;
use crate::registry::{Backend, ModelSelector, Registry, Tier};

/// Everything a manager needs.
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub registry: Registry,
    pub fetcher: Fetcher,
    pub load: LoadOptions,
}

impl ManagerConfig {
    /// The registry (`WICK_REGISTRY`), caches and Hub settings from the environment.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            registry: Registry::from_env()?,
            fetcher: Fetcher::from_env(),
            load: LoadOptions::default(),
        })
    }
}

type Slot = Arc<OnceCell<Arc<Engine>>>;

/// A model asked for, by the key of [`ResolvedModel::key`]: where it comes from, and the engine
/// once loaded.
struct Entry {
    model: ResolvedModel,
    slot: Slot,
}

pub struct ModelManager {
    registry: Registry,
    fetcher: Fetcher,
    options: LoadOptions,
    models: Mutex<HashMap<String, Entry>>,
}

/// A registry model, or a loaded one, as `list_models` shows it.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModelStatus {
    pub name: String,
    pub tier: Option<Tier>,
    pub backend: Backend,
    pub architecture: Option<String>,
    /// Hub repository or local path.
    pub source: String,
    pub loaded: bool,
    /// Where it runs, once loaded.
    pub device: Option<String>,
}

impl ModelManager {
    pub fn new(config: ManagerConfig) -> Self {
        Self {
            registry: config.registry,
            fetcher: config.fetcher,
            options: config.load,
            models: Mutex::new(HashMap::new()),
        }
    }

    pub fn from_env() -> Result<Self> {
        Ok(Self::new(ManagerConfig::from_env()?))
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// Where `selector` points, without fetching or loading anything. A name that is not the
    /// registry's may be the one a loaded model goes by (`--model-path`, `--model REPO:FILE`):
    /// every name `status` lists is accepted.
    pub fn resolve(&self, selector: &ModelSelector) -> Result<ResolvedModel> {
        ResolvedModel::resolve(&self.registry, selector).or_else(|error| {
            let ModelSelector::Name(name) = selector else {
                return Err(error);
            };
            self.lock()
                .values()
                .find(|entry| entry.model.name == *name && entry.slot.initialized())
                .map(|entry| entry.model.clone())
                .ok_or(error)
        })
    }

    /// Fetches the model's files into the caches and returns their local paths.
    pub async fn pull(&self, selector: &ModelSelector) -> Result<Vec<PathBuf>> {
        Ok(self.files(selector).await?.paths())
    }

    /// Fetches the model's files into the caches and returns them by role.
    pub(crate) async fn files(&self, selector: &ModelSelector) -> Result<resolve::ModelFiles> {
        let model = self.resolve(selector)?;
        resolve::fetch_files(&model, &self.fetcher).await
    }

    /// The loaded model for `selector`, fetching and loading it on first use.
    pub async fn get(&self, selector: &ModelSelector) -> Result<Arc<Engine>> {
        let model = self.resolve(selector)?;
        let slot = self.slot(&model);
        let engine = slot
            .get_or_try_init(|| async {
                // The device first: one that cannot be used fails before any download. (Opening
                // a GPU blocks for a while, so off the async workers.)
                let choice = self.options.device;
                let device = tokio::task::spawn_blocking(move || choice.resolve())
                    .await
                    .map_err(|e| crate::Error::Io(std::io::Error::other(e)))??;
                tracing::info!("loading {model}");
                let files = resolve::fetch_files(&model, &self.fetcher).await?;
                let options = self.options.clone();
                let model = model.clone();
                tokio::task::spawn_blocking(move || {
                    start::start_engine(&model, &files, device, &options)
                })
                .await
                .map_err(|e| crate::Error::Io(std::io::Error::other(e)))?
                .map(Arc::new)
            })
            .await?;
        Ok(engine.clone())
    }

    /// Forgets a loaded model. Requests already running finish; its memory is freed after them.
    pub fn unload(&self, selector: &ModelSelector) -> Result<bool> {
        let key = self.resolve(selector)?.key();
        Ok(self
            .lock()
            .remove(&key)
            .is_some_and(|entry| entry.slot.initialized()))
    }

    /// The models loaded now.
    pub fn loaded(&self) -> Vec<Arc<Engine>> {
        self.lock()
            .values()
            .filter_map(|entry| entry.slot.get().cloned())
            .collect()
    }

    /// The registry's models and any other loaded model, with what is loaded where.
    pub fn status(&self) -> Vec<ModelStatus> {
        let loaded: Vec<ModelInfo> = self.loaded().iter().map(|e| e.info().clone()).collect();
        let mut list: Vec<ModelStatus> = self
            .registry
            .models()
            .iter()
            .map(|entry| {
                let running = loaded.iter().find(|info| info.name == entry.name);
                ModelStatus {
                    name: entry.name.clone(),
                    tier: Some(entry.tier),
                    backend: entry.backend,
                    architecture: Some(entry.architecture.clone()),
                    source: format!("{}@{}", entry.repo, entry.revision),
                    loaded: running.is_some(),
                    device: running.map(|info| info.device.clone()),
                }
            })
            .collect();
        for info in loaded {
            if !list.iter().any(|s| s.name == info.name) {
                list.push(ModelStatus {
                    name: info.name.clone(),
                    tier: None,
                    backend: info.backend,
                    architecture: Some(info.architecture.clone()),
                    source: info.source.clone(),
                    loaded: true,
                    device: Some(info.device.clone()),
                });
            }
        }
        list
    }

    fn slot(&self, model: &ResolvedModel) -> Slot {
        let key = model.key();
        let mut models = self.lock();
        let entry = models.entry(key).or_insert_with(|| Entry {
            model: model.clone(),
            slot: Slot::default(),
        });
        entry.slot.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // The map stays consistent even if a holder panicked: every operation is one call.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }
}
