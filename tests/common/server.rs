//! wick's MCP server started in-process on a free loopback port, with the real model.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wick::server::mcp::{ToolState, WickMcp};
use wick::server::{self, HealthCheck, ServerOptions, Shutdown};
use wick::{Engine, LoadOptions, ModelManager, ModelSelector};

pub struct TestServer {
    pub base: String,
    pub manager: Arc<ModelManager>,
    /// MCP handler instances created: one per 2025-era session (and per stateless request).
    pub handlers: Arc<AtomicUsize>,
    shutdown: Shutdown,
    stop: CancellationToken,
}

impl TestServer {
    pub async fn start(options: ServerOptions, load: LoadOptions) -> Self {
        let manager = Arc::new(super::manager(load));
        let state = Arc::new(ToolState {
            manager: manager.clone(),
            default_model: ModelSelector::default(),
            default_backend: wick::Backend::Gguf,
            in_flight: TaskTracker::new(),
        });
        let handlers = Arc::new(AtomicUsize::new(0));
        let counter = handlers.clone();
        let health: HealthCheck = Arc::new(|| (true, serde_json::json!({ "status": "ready" })));
        let shutdown = Shutdown::default();
        let stop = CancellationToken::new();
        let app = server::router(
            &options,
            &shutdown,
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                WickMcp::new(state.clone())
            },
            health,
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::serve(listener, app, stop.clone()));
        let server = Self {
            base,
            manager,
            handlers,
            shutdown,
            stop,
        };
        server.engine().await; // loaded before the first request
        server
    }

    pub fn mcp(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub async fn engine(&self) -> Arc<Engine> {
        self.manager.get(&ModelSelector::default()).await.unwrap()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.sessions.cancel();
        self.stop.cancel();
    }
}
