//! An MCP client that watches tokens arrive: it connects (Streamable HTTP with rmcp's client, in
//! either protocol era, or the legacy HTTP+SSE transport), lists the tools, calls `generate` with
//! a progress token, prints each token the moment its notification arrives, then the structured
//! result. Against `streamable_http_mcp_server` this is the whole MCP flow: session start, a
//! long-running tool call upgraded to a stream, progress notifications, completion.
//!
//!     cargo run --release --example streamable_http_mcp_client -- --url http://127.0.0.1:8080/mcp
//!     cargo run --release --example streamable_http_mcp_client -- --transport sse --url http://127.0.0.1:8080/sse
//!
//! A URL without a path (`--url http://127.0.0.1:9000`, or none: port 8080) gets the transport's
//! endpoint: `/mcp`, or `/sse` with `--transport sse`.

mod legacy_sse;

use std::io::Write;

use clap::{Parser, ValueEnum};
use rmcp::model::{
    CallToolRequestParams, ClientConfig, Implementation, ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{NotificationContext, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{ClientHandler, ClientLifecycleMode, ClientServiceExt, ServiceExt};

#[derive(Clone, Copy, ValueEnum)]
enum Transport {
    /// Streamable HTTP (`/mcp`).
    Streamable,
    /// The 2024-11-05 HTTP+SSE transport (`/sse`).
    Sse,
}

#[derive(Clone, Copy, ValueEnum)]
enum Protocol {
    /// Sessions: initialize, Mcp-Session-Id.
    #[value(name = "2025-11-25")]
    V2025,
    /// Stateless: server/discover, per-request _meta.
    #[value(name = "2026-07-28")]
    V2026,
}

#[derive(Parser)]
#[command(about = "Call wick's generate tool over MCP and print tokens as they arrive")]
struct Args {
    /// The server's endpoint; without a path, the transport's own (`/mcp` or `/sse`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, value_enum, default_value = "streamable")]
    transport: Transport,
    /// Protocol revision for Streamable HTTP.
    #[arg(long, value_enum, default_value = "2025-11-25")]
    protocol: Protocol,
    #[arg(long, default_value = "The capital of France is")]
    prompt: String,
    #[arg(long, default_value_t = 32)]
    max_tokens: u32,
}

/// Prints each progress message (a new piece of text) the moment it arrives.
#[derive(Clone)]
struct TokenPrinter;

impl ClientHandler for TokenPrinter {
    async fn on_progress(
        &self,
        progress: ProgressNotificationParam,
        _: NotificationContext<RoleClient>,
    ) {
        print!("{}", progress.message.unwrap_or_default());
        let _ = std::io::stdout().flush();
    }

    fn get_info(&self) -> ClientConfig {
        let mut config =
            ClientConfig::default().with_protocol_version(ProtocolVersion::V_2025_11_25);
        config.client_info = Implementation::new("wick-example-client", env!("CARGO_PKG_VERSION"));
        config
    }
}

impl Transport {
    fn path(self) -> &'static str {
        match self {
            Transport::Streamable => "/mcp",
            Transport::Sse => "/sse",
        }
    }
}

/// `url` with the transport's endpoint appended when it names only a server.
fn endpoint(url: &str, transport: Transport) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    match after_scheme.split_once('/') {
        Some((_, path)) if !path.is_empty() => url.to_string(),
        _ => format!("{}{}", url.trim_end_matches('/'), transport.path()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.url = endpoint(&args.url, args.transport);
    let client: RunningService<RoleClient, TokenPrinter> = match (args.transport, args.protocol) {
        (Transport::Sse, _) => {
            TokenPrinter
                .serve(legacy_sse::connect(&args.url).await?)
                .await?
        }
        (Transport::Streamable, Protocol::V2025) => {
            TokenPrinter
                .serve(StreamableHttpClientTransport::from_uri(args.url.as_str()))
                .await?
        }
        (Transport::Streamable, Protocol::V2026) => {
            let lifecycle = ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            };
            TokenPrinter
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::from_uri(args.url.as_str()),
                    lifecycle,
                )
                .await?
        }
    };
    if let Some(server) = client.peer_info() {
        eprintln!("connected: protocol {}", server.protocol_version);
    }
    let tools = client.list_all_tools().await?;
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    eprintln!("tools: {}", names.join(", "));

    let arguments = serde_json::json!({ "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0 });
    let request = CallToolRequestParams::new("generate")
        .with_arguments(arguments.as_object().cloned().unwrap_or_default());
    let result = client.call_tool(request).await?;
    println!();
    match &result.structured_content {
        Some(structured) => println!("{}", serde_json::to_string_pretty(structured)?),
        None => println!("{result:?}"),
    }
    client.cancel().await?;
    anyhow::ensure!(result.is_error != Some(true), "the tool call failed");
    Ok(())
}
