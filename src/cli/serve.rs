//! `wick serve`: the MCP server.

use std::io::Write;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ModelArgs;
use crate::engine::{LoadOptions, ModelInfo};
use crate::server::mcp::{ToolState, WickMcp};
use crate::server::{self, HealthCheck, ServerOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on; the default accepts only this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Accept browser pages from this origin, e.g. https://app.example.com (repeatable).
    #[arg(long)]
    pub allowed_origin: Vec<String>,
    /// Accept requests addressed to this host name (repeatable; `*` turns the check off).
    #[arg(long)]
    pub allowed_host: Vec<String>,
    /// Require `Authorization: Bearer <key>` on every request but /health.
    #[arg(long, env = "WICK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = ServerOptions::default().max_body_bytes)]
    pub max_body_bytes: usize,
    /// Sequences generated at once per model.
    #[arg(long, default_value_t = LoadOptions::default().max_active)]
    pub max_active: usize,
    /// Requests that may wait per model before new ones are refused as busy.
    #[arg(long, default_value_t = LoadOptions::default().queue_limit)]
    pub queue_limit: usize,
    /// Seconds of inactivity after which a session (2025-11-25 clients) is closed.
    #[arg(long, default_value_t = 1800)]
    pub session_idle_timeout: u64,
    /// Seconds a shutdown waits for running generations to finish.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let manager = Arc::new(args.model.manager(LoadOptions {
        max_active: args.max_active,
        queue_limit: args.queue_limit,
        ..LoadOptions::default()
    })?);
    let selector = args.model.selector();
    manager.resolve(&selector)?;
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        allowed_hosts: args.allowed_host,
        allowed_origins: args.allowed_origin,
        api_key: args.api_key,
        max_body_bytes: args.max_body_bytes,
        session_idle_timeout: Duration::from_secs(args.session_idle_timeout),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };

    let state = Arc::new(ToolState {
        manager: manager.clone(),
        default_model: selector.clone(),
        default_backend: args.model.backend,
        in_flight: TaskTracker::new(),
    });
    let loaded: Arc<OnceLock<ModelInfo>> = Arc::default();
    let draining = Arc::new(AtomicBool::new(false));
    let health: HealthCheck = {
        let (loaded, draining, manager) = (loaded.clone(), draining.clone(), manager.clone());
        Arc::new(move || {
            let status = match (loaded.get(), draining.load(Ordering::Relaxed)) {
                (_, true) => return (false, serde_json::json!({ "status": "shutting down" })),
                (None, _) => return (false, serde_json::json!({ "status": "loading" })),
                (Some(model), _) => model.name.clone(),
            };
            let models: Vec<_> = manager
                .loaded()
                .iter()
                .map(|engine| serde_json::json!({ "info": engine.info(), "stats": engine.stats() }))
                .collect();
            (
                true,
                serde_json::json!({ "status": "ready", "default_model": status, "models": models }),
            )
        })
    };
    let sessions = CancellationToken::new();
    let stop_accepting = CancellationToken::new();
    let tools = state.clone();
    let app = server::router(
        &options,
        sessions.clone(),
        move || WickMcp::new(tools.clone()),
        health,
    );

    let addr = options.addr();
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; is another server using the port? (--port)")
    })?;
    let local = listener.local_addr()?;
    println!("wick: serving MCP at http://{local}/mcp (legacy SSE at http://{local}/sse)");
    std::io::stdout().flush()?;
    if !args.host.is_loopback() && options.api_key.is_none() {
        tracing::warn!(
            "listening on {} without --api-key: anyone who can reach it can use it",
            args.host
        );
    }
    let mut server = tokio::spawn(server::serve(listener, app, stop_accepting.clone()));

    let engine = tokio::select! {
        engine = manager.get(&selector) => engine,
        _ = server::shutdown_signal() => {
            sessions.cancel();
            stop_accepting.cancel();
            return Ok(());
        }
    };
    match engine {
        Ok(engine) => {
            let _ = loaded.set(engine.info().clone());
            tracing::info!(model = %engine.info().name, device = %engine.info().device, "ready");
        }
        Err(e) => {
            sessions.cancel();
            stop_accepting.cancel();
            return Err(e).context("cannot load the model to serve");
        }
    }

    tokio::select! {
        _ = server::shutdown_signal() => {}
        result = &mut server => return Ok(result??),
    }
    draining.store(true, Ordering::Relaxed);
    stop_accepting.cancel();
    state.in_flight.close();
    tracing::info!(
        running = state.in_flight.len(),
        "shutting down: letting running generations finish (up to {}s; Ctrl-C again stops now)",
        options.shutdown_grace.as_secs()
    );
    tokio::select! {
        _ = state.in_flight.wait() => {}
        _ = tokio::time::sleep(options.shutdown_grace) => tracing::warn!("grace period over; cancelling the rest"),
        _ = server::shutdown_signal() => tracing::warn!("stopping now"),
    }
    sessions.cancel();
    server.await??;
    tracing::info!("stopped");
    Ok(())
}
