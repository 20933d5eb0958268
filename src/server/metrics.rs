//! `/metrics`: what operators and autoscalers read, in the Prometheus text format.
//!
//! Names follow vLLM's (`vllm:num_requests_waiting` …), which gateways and autoscalers already
//! know, with wick's prefix. Gauges are read from each loaded engine when scraped; counters and
//! histograms are fed by the front ends as their token streams run ([`Metrics::observe`]), so
//! every front end is counted the same way. Requests naming a model this server cannot serve
//! never reach a model and are not counted.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Engine, FinishReason, TokenEvent};
use crate::error::Error;

/// The front end a request came through.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Frontend {
    /// Streamable HTTP at `/mcp`, either protocol era.
    Mcp,
    /// The legacy HTTP+SSE transport at `/sse`.
    Sse,
    /// The OpenAI-compatible API at `/v1`.
    Openai,
}

/// How a request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Outcome {
    Stop,
    Length,
    Cancelled,
    Error,
    /// Refused because the model's queue was full.
    Busy,
}

impl EncodeLabelValue for Frontend {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Frontend::Mcp => "mcp",
            Frontend::Sse => "sse",
            Frontend::Openai => "openai",
        })
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        use std::fmt::Write;
        encoder.write_str(match self {
            Outcome::Stop => "stop",
            Outcome::Length => "length",
            Outcome::Cancelled => "cancelled",
            Outcome::Error => "error",
            Outcome::Busy => "busy",
        })
    }
}

impl From<FinishReason> for Outcome {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Stop => Outcome::Stop,
            FinishReason::Length => Outcome::Length,
            FinishReason::Cancelled => Outcome::Cancelled,
            FinishReason::Error => Outcome::Error,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model_name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    model_name: String,
    frontend: Frontend,
    outcome: Outcome,
}

type Histograms = Family<ModelLabel, Histogram, fn() -> Histogram>;

/// Seconds, from a millisecond to half an hour: first tokens and whole requests.
const LATENCY_BUCKETS: [f64; 20] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 600.0, 1800.0,
];
/// Seconds between two tokens of one stream.
const TOKEN_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5,
];

/// One server's metrics. Cheap to share behind an `Arc`.
pub struct Metrics {
    /// Encoding reads the registry; the mutex only keeps two scrapes from interleaving gauges.
    registry: Mutex<Registry>,
    running: Family<ModelLabel, Gauge>,
    waiting: Family<ModelLabel, Gauge>,
    kv_cache_used: Family<ModelLabel, Gauge>,
    kv_cache_capacity: Family<ModelLabel, Gauge>,
    requests: Family<RequestLabels, Counter>,
    prompt_tokens: Family<ModelLabel, Counter>,
    generation_tokens: Family<ModelLabel, Counter>,
    time_to_first_token: Histograms,
    inter_token_latency: Histograms,
    e2e_latency: Histograms,
    queue_time: Histograms,
}

impl Default for Metrics {
    fn default() -> Self {
        let latency: fn() -> Histogram = || Histogram::new(LATENCY_BUCKETS);
        let per_token: fn() -> Histogram = || Histogram::new(TOKEN_BUCKETS);
        let metrics = Metrics {
            registry: Mutex::new(Registry::default()),
            running: Family::default(),
            waiting: Family::default(),
            kv_cache_used: Family::default(),
            kv_cache_capacity: Family::default(),
            requests: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            time_to_first_token: Family::new_with_constructor(latency),
            inter_token_latency: Family::new_with_constructor(per_token),
            e2e_latency: Family::new_with_constructor(latency),
            queue_time: Family::new_with_constructor(latency),
        };
        {
            let mut registry = metrics.lock();
            let r = &mut *registry;
            r.register(
                "wick:num_requests_running",
                "Requests being generated",
                metrics.running.clone(),
            );
            r.register(
                "wick:num_requests_waiting",
                "Requests waiting for a slot or for KV-cache memory",
                metrics.waiting.clone(),
            );
            r.register(
                "wick:kv_cache_usage_bytes",
                "Bytes the running requests' KV caches hold",
                metrics.kv_cache_used.clone(),
            );
            r.register(
                "wick:kv_cache_capacity_bytes",
                "Bytes all KV caches may hold together (--kv-cache-memory)",
                metrics.kv_cache_capacity.clone(),
            );
            r.register(
                "wick:requests",
                "Requests ended, by front end and outcome",
                metrics.requests.clone(),
            );
            r.register(
                "wick:prompt_tokens",
                "Prompt tokens of ended requests",
                metrics.prompt_tokens.clone(),
            );
            r.register(
                "wick:generation_tokens",
                "Tokens generated, counted as they stream",
                metrics.generation_tokens.clone(),
            );
            r.register(
                "wick:time_to_first_token_seconds",
                "From a request's arrival to its first token",
                metrics.time_to_first_token.clone(),
            );
            r.register(
                "wick:inter_token_latency_seconds",
                "Between two tokens of one request",
                metrics.inter_token_latency.clone(),
            );
            r.register(
                "wick:e2e_request_latency_seconds",
                "From a request's arrival to its last token, for requests that ran to the end",
                metrics.e2e_latency.clone(),
            );
            r.register(
                "wick:request_queue_time_seconds",
                "Time a request waited before the model started on it",
                metrics.queue_time.clone(),
            );
        }
        metrics
    }
}

impl Metrics {
    /// The Prometheus text exposition of every metric, the gauges read from `engines` now.
    pub fn encode(&self, engines: &[Arc<Engine>]) -> Result<String, std::fmt::Error> {
        let registry = self.lock();
        for engine in engines {
            let label = model_label(engine);
            let stats = engine.stats();
            let set = |family: &Family<ModelLabel, Gauge>, value: usize| {
                family
                    .get_or_create(&label)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            };
            set(&self.running, stats.active);
            set(&self.waiting, stats.queued);
            set(&self.kv_cache_used, stats.kv_cache_bytes);
            set(&self.kv_cache_capacity, stats.kv_cache_budget);
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
        Ok(text)
    }

    /// Counts a request the model refused before it produced a stream: `busy` for a full
    /// queue, `error` for anything else.
    pub fn refused(&self, engine: &Engine, frontend: Frontend, error: &Error) {
        let outcome = match error {
            Error::Busy { .. } => Outcome::Busy,
            _ => Outcome::Error,
        };
        self.count(&model_label(engine), frontend, outcome);
    }

    /// Wraps a generation's events so that they are measured as the front end reads them. A
    /// stream dropped before its summary (the client went away) counts as cancelled.
    pub fn observe<S>(
        self: &Arc<Self>,
        engine: &Engine,
        frontend: Frontend,
        events: S,
    ) -> Observed<S>
    where
        S: Stream<Item = TokenEvent> + Unpin,
    {
        Observed {
            events,
            metrics: self.clone(),
            model: model_label(engine),
            frontend,
            started: Instant::now(),
            last_token: None,
            ended: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn count(&self, model: &ModelLabel, frontend: Frontend, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                model_name: model.model_name.clone(),
                frontend,
                outcome,
            })
            .inc();
    }
}

fn model_label(engine: &Engine) -> ModelLabel {
    ModelLabel {
        model_name: engine.info().name.clone(),
    }
}

/// A token stream being measured; see [`Metrics::observe`].
pub struct Observed<S> {
    events: S,
    metrics: Arc<Metrics>,
    model: ModelLabel,
    frontend: Frontend,
    started: Instant,
    last_token: Option<Instant>,
    ended: bool,
}

impl<S> Observed<S> {
    fn record(&mut self, event: &TokenEvent) {
        let m = &self.metrics;
        let now = Instant::now();
        match event {
            TokenEvent::Token(_) => {
                let since = match self.last_token {
                    None => &m.time_to_first_token,
                    Some(_) => &m.inter_token_latency,
                };
                let from = self.last_token.unwrap_or(self.started);
                since
                    .get_or_create(&self.model)
                    .observe((now - from).as_secs_f64());
                self.last_token = Some(now);
                m.generation_tokens.get_or_create(&self.model).inc();
            }
            TokenEvent::Done(summary) => {
                self.ended = true;
                m.count(&self.model, self.frontend, summary.finish_reason.into());
                m.prompt_tokens
                    .get_or_create(&self.model)
                    .inc_by(summary.prompt_tokens as u64);
                if summary.finish_reason != FinishReason::Cancelled {
                    m.e2e_latency
                        .get_or_create(&self.model)
                        .observe((now - self.started).as_secs_f64());
                    m.queue_time
                        .get_or_create(&self.model)
                        .observe(summary.queue_time.as_secs_f64());
                }
            }
        }
    }
}

impl<S: Stream<Item = TokenEvent> + Unpin> Stream for Observed<S> {
    type Item = TokenEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<TokenEvent>> {
        let polled = Pin::new(&mut self.events).poll_next(cx);
        if let Poll::Ready(Some(event)) = &polled {
            self.record(event);
        }
        polled
    }
}

impl<S> Drop for Observed<S> {
    fn drop(&mut self) {
        if !self.ended {
            self.metrics
                .count(&self.model, self.frontend, Outcome::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Label values are the lowercase words the README lists. (tests/openai.rs parses the whole
    /// exposition of a running server; families without samples are left out of it.)
    #[test]
    fn labels_are_the_documented_words() {
        let metrics = Metrics::default();
        let model = ModelLabel {
            model_name: "m".into(),
        };
        metrics.count(&model, Frontend::Openai, Outcome::Busy);
        metrics.count(&model, Frontend::Sse, FinishReason::Cancelled.into());
        let text = metrics.encode(&[]).unwrap();
        for line in [
            r#"wick:requests_total{model_name="m",frontend="openai",outcome="busy"} 1"#,
            r#"wick:requests_total{model_name="m",frontend="sse",outcome="cancelled"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
    }
}
