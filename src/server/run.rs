//! Running the server as `wick serve` does: bind, load the default model, serve, and on
//! SIGINT/SIGTERM drain: report 503 on `/health`, let running generations finish within the
//! grace period (cutting off the rest with an error), then close every stream and exit.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

use super::mcp::WickMcp;
use super::metrics::kv_blocks_free;
use super::{HealthCheck, ServerOptions, ServerState, api_routes, router, serve};
use crate::engine::{EngineStats, ModelInfo, ModelManager};
use crate::error::{Error, Result};
use crate::registry::{Backend, ModelSelector};

/// Serves `manager`'s models over MCP and the OpenAI API until a shutdown signal,
/// `default_model` loaded up front. Prints `wick: loading MODEL; MCP will be at URL` on stdout
/// once listening (`/health` answers 503 meanwhile), then `wick: serving MCP at URL …` once the
/// model is loaded: a model that fails to load never had its URL announced as served.
pub async fn serve_models(
    options: ServerOptions,
    manager: Arc<ModelManager>,
    default_model: ModelSelector,
    default_backend: Backend,
) -> Result<()> {
    let resolved = manager.resolve(&default_model)?;
    let state = Arc::new(ServerState::new(
        manager.clone(),
        default_model.clone(),
        default_backend,
    ));
    let loaded: Arc<OnceLock<ModelInfo>> = Arc::default();
    let draining = Arc::new(AtomicBool::new(false));
    let health = health_check(manager.clone(), loaded.clone(), draining.clone());
    let shutdown = state.shutdown.clone();
    let stop_accepting = CancellationToken::new();
    let tools = state.clone();
    let app = router(
        &options,
        &shutdown,
        move || WickMcp::new(tools.clone()),
        health,
        api_routes(state.clone()),
    );

    let addr = options.addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|error| Error::Listen { addr, error })?;
    let local = listener.local_addr()?;
    println!(
        "wick: loading {}; MCP will be at http://{local}/mcp once it is loaded",
        resolved.name
    );
    std::io::stdout().flush()?;
    if !options.host.is_loopback() && options.api_key.is_none() {
        tracing::warn!(
            "listening on {} without --api-key: anyone who can reach it can use it",
            options.host
        );
    }
    let mut server = tokio::spawn(serve(listener, app, &options, stop_accepting.clone()));
    let stop_now = || {
        shutdown.sessions.cancel();
        stop_accepting.cancel();
    };

    let engine = tokio::select! {
        engine = manager.get(&default_model) => engine,
        _ = shutdown_signal() => {
            stop_now();
            return Ok(());
        }
    };
    match engine {
        Ok(engine) => {
            let _ = loaded.set(engine.info().clone());
            tracing::info!(model = %engine.info().name, device = %engine.info().device, "ready");
            println!("wick: serving MCP at http://{local}/mcp (legacy SSE at http://{local}/sse)");
            std::io::stdout().flush()?;
        }
        Err(e) => {
            stop_now();
            return Err(e);
        }
    }

    tokio::select! {
        _ = shutdown_signal() => {}
        result = &mut server => return Ok(result.map_err(std::io::Error::other)??),
    }
    // Draining: /health answers 503 at once so that load balancers stop sending, while the
    // server keeps accepting and finishes what it has (and what arrives before they notice).
    draining.store(true, Ordering::Relaxed);
    state.in_flight.close();
    shutdown.responses.close();
    tracing::info!(
        running = state.in_flight.len(),
        "draining: /health answers 503; letting running generations finish (up to {}s; Ctrl-C \
         again stops now)",
        options.shutdown_grace.as_secs()
    );
    // Running tool calls finish, then their responses (final results included) are sent whole.
    let finished = || async {
        state.in_flight.wait().await;
        shutdown.responses.wait().await;
    };
    tokio::select! {
        _ = finished() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!("grace period over; cutting off the generations still running");
            // Each ends at its next token and its caller gets an error saying so (the partial
            // text marked cancelled), delivered before the streams close.
            shutdown.cut_off.cancel();
            let _ = tokio::time::timeout(CUT_OFF_DELIVERY, finished()).await;
        }
        _ = shutdown_signal() => tracing::warn!("stopping now"),
    }
    stop_accepting.cancel();
    shutdown.sessions.cancel();
    server.await.map_err(std::io::Error::other)??;
    tracing::info!("stopped");
    Ok(())
}

/// How long cut-off generations get to deliver their error after the grace period.
const CUT_OFF_DELIVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// 503 while loading or draining; otherwise 200 with each loaded model and its counters.
fn health_check(
    manager: Arc<ModelManager>,
    loaded: Arc<OnceLock<ModelInfo>>,
    draining: Arc<AtomicBool>,
) -> HealthCheck {
    Arc::new(move || {
        let default_model = match (loaded.get(), draining.load(Ordering::Relaxed)) {
            (_, true) => return (false, serde_json::json!({ "status": "draining" })),
            (None, _) => return (false, serde_json::json!({ "status": "loading" })),
            (Some(model), _) => model.name.clone(),
        };
        let models: Vec<_> = manager
            .loaded()
            .iter()
            .map(|engine| {
                let stats = engine.stats();
                let stats = HealthStats {
                    kv_blocks_free: kv_blocks_free(&stats),
                    stats,
                };
                serde_json::json!({ "info": engine.info(), "stats": stats })
            })
            .collect();
        (
            true,
            serde_json::json!({ "status": "ready", "default_model": default_model, "models": models }),
        )
    })
}

/// An engine's counters as `/health` shows them: with the free KV blocks, which the engine leaves
/// to subtraction, beside its used and cached ones.
#[derive(serde::Serialize)]
struct HealthStats {
    #[serde(flatten)]
    stats: EngineStats,
    kv_blocks_free: usize,
}

/// Resolves on the first SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
