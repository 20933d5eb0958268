//! What every front end of `wick serve` shares, passed to each explicitly.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use super::metrics::Metrics;
use crate::engine::ModelManager;
use crate::error::Result;
use crate::registry::{Backend, ModelSelector};

/// How a running server is wound down.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when a shutdown's grace period is over: generations still running end as
    /// cancelled, and their callers are told that the server cut them off.
    pub cut_off: CancellationToken,
    /// Cancelling it ends every MCP session and long-lived event stream.
    pub sessions: CancellationToken,
    /// Every POST response until its body has been sent whole: a tool call's stream ends only
    /// after its final result, so waiting for these lets running calls finish and be delivered.
    pub responses: TaskTracker,
}

/// The models, the one a request gets when it names none, the shutdown in progress, and the
/// metrics every front end feeds.
pub struct ServerState {
    pub manager: Arc<ModelManager>,
    pub default_model: ModelSelector,
    pub default_backend: Backend,
    /// Tool calls in flight, so that a graceful shutdown lets them finish.
    pub in_flight: TaskTracker,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
}

impl ServerState {
    pub fn new(
        manager: Arc<ModelManager>,
        default_model: ModelSelector,
        default_backend: Backend,
    ) -> Self {
        Self {
            manager,
            default_model,
            default_backend,
            in_flight: TaskTracker::new(),
            shutdown: Shutdown::default(),
            metrics: Arc::default(),
        }
    }

    /// The cancellation token of one generation: cancelled when `caller` is (the client
    /// cancelled or went away) or when a shutdown's grace period ends. The link lasts as long as
    /// the returned handle.
    pub fn generation_token(
        &self,
        caller: &CancellationToken,
    ) -> (CancellationToken, AbortOnDropHandle<()>) {
        let token = self.shutdown.cut_off.child_token();
        let (link, caller) = (token.clone(), caller.clone());
        let handle = tokio::spawn(async move {
            caller.cancelled().await;
            link.cancel();
        });
        (token, AbortOnDropHandle::new(handle))
    }

    /// True once a shutdown's grace period is over.
    pub fn cut_off(&self) -> bool {
        self.shutdown.cut_off.is_cancelled()
    }

    /// The model a request's `model` field names (a tier, `tier/backend` or a registry name),
    /// or the default one.
    pub fn selector(&self, model: Option<&str>) -> Result<ModelSelector> {
        match model {
            Some(m) => ModelSelector::parse_model_arg(m, self.default_backend),
            None => Ok(self.default_model.clone()),
        }
    }
}
