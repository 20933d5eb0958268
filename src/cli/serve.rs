//! `wick serve`: the MCP server.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::ModelArgs;
use crate::engine::LoadOptions;
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
    server::serve_models(options, manager, args.model.selector(), args.model.backend).await?;
    Ok(())
}
