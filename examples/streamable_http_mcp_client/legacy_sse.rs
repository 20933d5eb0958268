//! The client side of the 2024-11-05 HTTP+SSE transport, on rmcp's `Transport` trait (rmcp no
//! longer ships one): `GET` the SSE URL, read the `endpoint` event, then POST each message
//! there and read replies from the `message` events.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use rmcp::model::{ClientJsonRpcMessage, ServerJsonRpcMessage};
use rmcp::service::RoleClient;
use rmcp::transport::Transport;
use sse_stream::SseStream;

pub struct LegacySse {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    messages: Pin<Box<dyn Stream<Item = ServerJsonRpcMessage> + Send>>,
}

pub async fn connect(url: &str) -> anyhow::Result<LegacySse> {
    let http = reqwest::Client::new();
    let base = reqwest::Url::parse(url)?;
    let response = http
        .get(base.clone())
        .header("accept", "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    let mut events = SseStream::from_bytes_stream(response.bytes_stream());
    let endpoint = loop {
        match events.next().await {
            Some(Ok(event)) if event.event.as_deref() == Some("endpoint") => {
                break base.join(event.data.as_deref().unwrap_or_default())?;
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("reading {url}: {e}"),
            None => anyhow::bail!("{url} closed before sending its endpoint"),
        }
    };
    let messages = events.filter_map(|event| async move {
        let event = event.ok()?;
        if event.event.as_deref().unwrap_or("message") != "message" {
            return None;
        }
        serde_json::from_str(event.data.as_deref()?).ok()
    });
    Ok(LegacySse {
        http,
        endpoint,
        messages: Box::pin(messages),
    })
}

impl Transport<RoleClient> for LegacySse {
    type Error = std::io::Error;

    fn send(
        &mut self,
        message: ClientJsonRpcMessage,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let (http, endpoint) = (self.http.clone(), self.endpoint.clone());
        async move {
            let response = http
                .post(endpoint)
                .json(&message)
                .send()
                .await
                .map_err(std::io::Error::other)?;
            match response.status().is_success() {
                true => Ok(()),
                false => Err(std::io::Error::other(format!(
                    "the server answered {}",
                    response.status()
                ))),
            }
        }
    }

    async fn receive(&mut self) -> Option<ServerJsonRpcMessage> {
        self.messages.next().await
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}
