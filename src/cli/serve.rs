//! `wick serve`: the MCP server, with the OpenAI-compatible API and `/metrics` beside it.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::{EngineArgs, ModelArgs};
use crate::server::{self, ServerOptions};

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
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Seconds of inactivity after which a session (2025-11-25 clients) is closed.
    #[arg(long, default_value_t = 1800)]
    pub session_idle_timeout: u64,
    /// Sessions (2025-11-25 and legacy SSE clients together) open at once; past it a new one
    /// gets 503 with Retry-After.
    #[arg(long, default_value_t = ServerOptions::default().max_sessions)]
    pub max_sessions: usize,
    /// Seconds: at --max-sessions, the least recently used 2025-11-25 session idle at least this
    /// long with no request running is closed to make room for a new one.
    #[arg(long, default_value_t = ServerOptions::default().session_min_idle.as_secs())]
    pub session_min_idle: u64,
    /// Connections open at once; past it a new one is answered 503 and closed.
    #[arg(long, default_value_t = ServerOptions::default().max_connections,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub max_connections: usize,
    /// Seconds a connection may go without sending a whole request header (a slow sender, or
    /// an idle keep-alive connection) before it is closed.
    #[arg(long, default_value_t = ServerOptions::default().idle_connection_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_connection_timeout: u64,
    /// Seconds a 2025-11-25 request whose stream broke keeps generating, waiting for a
    /// Last-Event-ID reconnect, before it is cancelled (a finished one stays resumable as long).
    #[arg(long, default_value_t = ServerOptions::default().resume_window.as_secs())]
    pub resume_window: u64,
    /// Seconds a shutdown waits for running generations to finish.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace: u64,
    /// Serve /metrics without the API key (for a scraper on a trusted network).
    #[arg(long)]
    pub metrics_public: bool,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    // An empty key would turn authentication off; whoever set it meant to turn it on. (clap may
    // drop an empty WICK_API_KEY before it reaches `api_key`, so the variable is read here too.)
    let empty_env = std::env::var_os("WICK_API_KEY").is_some_and(|v| v.is_empty());
    if args.api_key.as_deref().is_some_and(str::is_empty) || (args.api_key.is_none() && empty_env) {
        anyhow::bail!(
            "the API key is empty (--api-key or WICK_API_KEY), which would serve without \
             authentication; give a key, or unset WICK_API_KEY and drop --api-key to serve \
             without one"
        );
    }
    let manager = Arc::new(args.model.manager(args.engine.load_options())?);
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        allowed_hosts: args.allowed_host,
        allowed_origins: args.allowed_origin,
        api_key: args.api_key,
        max_body_bytes: args.max_body_bytes,
        session_idle_timeout: Duration::from_secs(args.session_idle_timeout),
        max_sessions: args.max_sessions,
        session_min_idle: Duration::from_secs(args.session_min_idle),
        resume_window: Duration::from_secs(args.resume_window),
        max_connections: args.max_connections,
        idle_connection_timeout: Duration::from_secs(args.idle_connection_timeout),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        metrics_public: args.metrics_public,
    };
    server::serve_models(options, manager, args.model.selector(), args.model.backend).await?;
    Ok(())
}
