//! wick's MCP server, started in-process: the same router, tools and shutdown as `wick serve`.
//! It prints the URL to connect to; try it with the `streamable_http_mcp_client` example.
//!
//!     cargo run --release --example streamable_http_mcp_server -- --port 8080

use std::net::IpAddr;
use std::sync::Arc;

use clap::Parser;
use wick::LoadOptions;
use wick::cli::ModelArgs;
use wick::server::{ServerOptions, serve_models};

#[derive(Parser)]
#[command(about = "Serve a model over MCP (Streamable HTTP at /mcp, legacy SSE at /sse)")]
struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// 0 picks a free port.
    #[arg(long, default_value_t = 8080)]
    port: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,wick=info")
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let manager = Arc::new(args.model.manager(LoadOptions::default())?);
    let options = ServerOptions {
        host: args.host,
        port: args.port,
        ..ServerOptions::default()
    };
    serve_models(options, manager, args.model.selector(), args.model.backend).await?;
    Ok(())
}
