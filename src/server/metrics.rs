//! `/metrics`: what operators and autoscalers read, in the Prometheus text format.
//!
//! Names follow vLLM's (`vllm:num_requests_waiting` …), which gateways and autoscalers already
//! know, with wick's prefix. What an engine holds or has counted itself (running and waiting
//! requests, KV blocks, prefix-cache lookups, preemptions) is read from each loaded engine when scraped; the other
//! counters and histograms are fed by the front ends as their token streams run
//! ([`Metrics::observe`]), so every front end is counted the same way. Requests naming a model
//! this server cannot serve never reach a model and are not counted.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::Stream;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::engine::{Engine, EngineStats, FinishReason, TokenEvent};
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

/// `state` is `used` (held by a sequence), `cached` (keeping a prompt prefix for reuse) or
/// `free` (holding nothing).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockLabels {
    model_name: String,
    state: &'static str,
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
    /// What the front ends count; what the engines hold is registered afresh at each scrape
    /// ([`engine_registry`]).
    registry: Registry,
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
        let mut metrics = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            prompt_tokens: Family::default(),
            generation_tokens: Family::default(),
            time_to_first_token: Family::new_with_constructor(latency),
            inter_token_latency: Family::new_with_constructor(per_token),
            e2e_latency: Family::new_with_constructor(latency),
            queue_time: Family::new_with_constructor(latency),
        };
        {
            let r = &mut metrics.registry;
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
    /// The Prometheus text exposition of every metric, those of `engines` read now.
    pub fn encode(&self, engines: &[Arc<Engine>]) -> Result<String, std::fmt::Error> {
        let stats: Vec<_> = engines
            .iter()
            .map(|engine| (model_label(engine), engine.stats()))
            .collect();
        let mut text = String::new();
        // Prometheus' text format has no end marker: two registries' expositions concatenate.
        prometheus_client::encoding::prometheus_text::encode(&mut text, &engine_registry(&stats))?;
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
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

/// A metric read from each engine: its name, its help and its value.
type EngineFigure<T> = (&'static str, &'static str, fn(&EngineStats) -> T);

/// The metrics read from the engines, built afresh at each scrape: a model unloaded since the last
/// one leaves no stale series, and the engines' own running totals are exposed as they stand (a
/// reloaded model starts them again from 0, which Prometheus' `rate` reads as a counter reset).
fn engine_registry(engines: &[(ModelLabel, EngineStats)]) -> Registry {
    let mut registry = Registry::default();
    let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let gauges: [EngineFigure<usize>; 4] = [
        (
            "wick:num_requests_running",
            "Requests being generated",
            |s| s.active,
        ),
        (
            "wick:num_requests_waiting",
            "Requests waiting for a slot or for KV-cache memory",
            |s| s.queued,
        ),
        (
            "wick:kv_cache_usage_bytes",
            "Bytes of the KV-cache blocks running requests hold",
            |s| s.kv_cache_bytes,
        ),
        (
            "wick:kv_cache_capacity_bytes",
            "Bytes of the whole KV-cache block pool (--kv-cache-memory)",
            |s| s.kv_cache_budget,
        ),
    ];
    for (name, help, read) in gauges {
        let family = Family::<ModelLabel, Gauge>::default();
        for (model, stats) in engines {
            family.get_or_create(model).set(int(read(stats)));
        }
        registry.register(name, help, family);
    }
    let usage = Family::<ModelLabel, Gauge<f64, AtomicU64>>::default();
    let blocks = Family::<BlockLabels, Gauge>::default();
    for (model, stats) in engines {
        usage.get_or_create(model).set(kv_cache_usage(stats));
        for (state, count) in [
            ("used", stats.kv_blocks_used),
            ("cached", stats.kv_blocks_cached),
            ("free", kv_blocks_free(stats)),
        ] {
            let labels = BlockLabels {
                model_name: model.model_name.clone(),
                state,
            };
            blocks.get_or_create(&labels).set(int(count));
        }
    }
    registry.register(
        "wick:kv_cache_usage_perc",
        "Share of the KV-cache blocks running requests hold, from 0 to 1",
        usage,
    );
    registry.register(
        "wick:kv_cache_blocks",
        "KV-cache blocks by state: used (held by a request), cached (a prompt prefix kept for \
         reuse, reclaimed when no block is free) or free",
        blocks,
    );
    // Registered without `_total`: the encoder appends it to counters.
    let counters: [EngineFigure<u64>; 3] = [
        (
            "wick:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache",
            |s| s.prefix_cache_queries,
        ),
        (
            "wick:prefix_cache_hits",
            "Prompt tokens found in the prefix cache, their keys and values not computed again",
            |s| s.prefix_cache_hits,
        ),
        (
            "wick:num_preemptions",
            "Requests preempted because the KV-cache pool ran out (their blocks freed, their \
             tokens computed again when they resume)",
            |s| s.preemptions,
        ),
    ];
    for (name, help, read) in counters {
        let family = Family::<ModelLabel, Counter>::default();
        for (model, stats) in engines {
            family.get_or_create(model).inc_by(read(stats));
        }
        registry.register(name, help, family);
    }
    registry
}

/// `kv_blocks_used / kv_blocks_total`, vLLM's `kv_cache_usage_perc`; 0 for an engine without a
/// block pool.
fn kv_cache_usage(stats: &EngineStats) -> f64 {
    if stats.kv_blocks_total == 0 {
        return 0.0;
    }
    stats.kv_blocks_used as f64 / stats.kv_blocks_total as f64
}

/// Blocks that hold nothing. The engine reports the total and the used and cached ones; a cached
/// block is reclaimable too, but still worth something, so the front ends show it apart.
pub fn kv_blocks_free(stats: &EngineStats) -> usize {
    stats
        .kv_blocks_total
        .saturating_sub(stats.kv_blocks_used + stats.kv_blocks_cached)
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

    /// The engines' figures come out under vLLM's names, counters typed as counters with
    /// `_total`, and the blocks by state adding up to the pool.
    #[test]
    fn engine_figures_have_their_names_and_types() {
        let stats = EngineStats {
            kv_blocks_total: 8,
            kv_blocks_used: 2,
            kv_blocks_cached: 3,
            prefix_cache_queries: 40,
            prefix_cache_hits: 16,
            preemptions: 1,
            ..EngineStats::default()
        };
        let model = ModelLabel {
            model_name: "m".into(),
        };
        let mut text = String::new();
        let registry = engine_registry(&[(model, stats)]);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE wick:prefix_cache_queries_total counter",
            r#"wick:prefix_cache_queries_total{model_name="m"} 40"#,
            "# TYPE wick:prefix_cache_hits_total counter",
            r#"wick:prefix_cache_hits_total{model_name="m"} 16"#,
            "# TYPE wick:num_preemptions_total counter",
            r#"wick:num_preemptions_total{model_name="m"} 1"#,
            "# TYPE wick:kv_cache_usage_perc gauge",
            r#"wick:kv_cache_usage_perc{model_name="m"} 0.25"#,
            "# TYPE wick:kv_cache_blocks gauge",
            r#"wick:kv_cache_blocks{model_name="m",state="used"} 2"#,
            r#"wick:kv_cache_blocks{model_name="m",state="cached"} 3"#,
            r#"wick:kv_cache_blocks{model_name="m",state="free"} 3"#,
            "# TYPE wick:kv_cache_usage_bytes gauge",
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        assert_eq!(
            kv_cache_usage(&EngineStats::default()),
            0.0,
            "no pool, no usage"
        );
    }
}
