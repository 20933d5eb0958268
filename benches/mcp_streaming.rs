//! What the MCP front end costs per token: the same greedy generation of 64 tokens, once from
//! the engine directly and once through `/mcp` on loopback (rmcp's client, a progress
//! notification per token, in a 2025-11-25 session). The difference of the two, divided by 64,
//! is the per-token overhead of the protocol, the HTTP stream and the JSON.
//!
//! `cargo bench --bench mcp_streaming`; `cargo test --benches` runs each once as a check.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rmcp::model::{CallToolRequestParams, ProgressNotificationParam};
use rmcp::service::{NotificationContext, RoleClient};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ServiceExt};
use wick::server::mcp::WickMcp;
use wick::server::{self, HealthCheck, ServerOptions, ServerState};
use wick::{
    DeviceChoice, GenerateRequest, LoadOptions, ManagerConfig, ModelManager, ModelSelector,
    SamplingParams,
};

const PROMPT: &str = "1, 2, 3, 4, 5, 6, 7, 8,";
const TOKENS: usize = 64;

/// Counts progress notifications, as a client showing tokens would handle them.
#[derive(Clone, Default)]
struct Counter(Arc<std::sync::atomic::AtomicUsize>);

impl ClientHandler for Counter {
    async fn on_progress(&self, _: ProgressNotificationParam, _: NotificationContext<RoleClient>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (engine, client, _server) = runtime.block_on(async {
        let mut config = ManagerConfig::from_env().expect("registry");
        config.load = LoadOptions {
            device: DeviceChoice::Cpu,
            max_active: 1,
            ..LoadOptions::default()
        };
        let manager = Arc::new(ModelManager::new(config));
        let engine = manager
            .get(&ModelSelector::default())
            .await
            .expect("the small model");
        let state = Arc::new(ServerState::new(
            manager,
            ModelSelector::default(),
            wick::Backend::Gguf,
        ));
        let health: HealthCheck = Arc::new(|| (true, serde_json::json!({})));
        let shutdown = state.shutdown.clone();
        let app = server::router(
            &ServerOptions::default(),
            &shutdown,
            move || WickMcp::new(state.clone()),
            health,
            axum::Router::new(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("port");
        let url = format!("http://{}/mcp", listener.local_addr().expect("address"));
        tokio::spawn(server::serve(
            listener,
            app,
            &ServerOptions::default(),
            shutdown.sessions.clone(),
        ));
        let client = Counter::default()
            .serve(StreamableHttpClientTransport::from_uri(url))
            .await
            .expect("client");
        (engine, client, shutdown.sessions.drop_guard())
    });

    let mut group = c.benchmark_group("mcp_streaming");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(TOKENS as u64));
    group.bench_function("engine", |b| {
        b.to_async(&runtime).iter(|| async {
            // The same parameters the tool call below gets.
            let request =
                GenerateRequest::prompt(PROMPT).with_params(SamplingParams::greedy(TOKENS));
            engine
                .generate(request)
                .expect("accepted")
                .collect_text()
                .await
        });
    });
    group.bench_function("mcp", |b| {
        b.to_async(&runtime).iter(|| async {
            let arguments =
                serde_json::json!({ "prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0 });
            let call = CallToolRequestParams::new("generate")
                .with_arguments(arguments.as_object().cloned().unwrap_or_default());
            client.call_tool(call).await.expect("tool call")
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
