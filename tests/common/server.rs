//! wick's MCP server started in-process on a free loopback port, with the real model.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_util::sync::CancellationToken;
use wick::server::mcp::WickMcp;
use wick::server::{self, HealthCheck, ServerOptions, ServerState, Shutdown};
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
        let state = Arc::new(ServerState::new(
            manager.clone(),
            ModelSelector::default(),
            wick::Backend::Gguf,
        ));
        let handlers = Arc::new(AtomicUsize::new(0));
        let counter = handlers.clone();
        let health: HealthCheck = Arc::new(|| (true, serde_json::json!({ "status": "ready" })));
        let shutdown = state.shutdown.clone();
        let stop = CancellationToken::new();
        let tools = state.clone();
        let app = server::router(
            &options,
            &shutdown,
            move || {
                counter.fetch_add(1, Ordering::SeqCst);
                WickMcp::new(tools.clone())
            },
            health,
            server::api_routes(state.clone()),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(server::serve(listener, app, &options, stop.clone()));
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
