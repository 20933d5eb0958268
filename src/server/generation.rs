//! How every front end runs a generation: find the model, start the request with the caller's
//! cancellation and the shutdown's, count it in the metrics, and at the end tell a cut-off
//! apart from a client's cancel. Each front end only shapes the tokens and the errors for its
//! protocol.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::ServerState;
use super::metrics::{Frontend, Observed};
use crate::engine::{Engine, FinishReason, GenerateRequest, Summary, TokenStream};
use crate::error::Result;

/// Why a generation still running when a shutdown's grace period ended has no complete result.
pub const CUT_OFF: &str = "the server is shutting down and cut this generation off at the end of \
                           its grace period (--shutdown-grace); retry on another replica";

/// A running generation: its engine and its token events, counted in the metrics.
pub struct Generation {
    pub engine: Arc<Engine>,
    pub tokens: Observed<TokenStream>,
    /// Cancels the generation when the caller's token is cancelled, while it lives.
    _link: Option<AbortOnDropHandle<()>>,
}

impl Generation {
    /// Starts `request` on the model `model` names (the default one for `None`). It is
    /// cancelled when a shutdown's grace period ends, and when `caller` is cancelled (a front
    /// end whose client going away drops the token stream passes `None`). A refusal by the
    /// engine is counted for `frontend` before it is returned.
    pub async fn start(
        state: &ServerState,
        frontend: Frontend,
        model: Option<&str>,
        request: GenerateRequest,
        caller: Option<&CancellationToken>,
    ) -> Result<Self> {
        let selector = state.selector(model)?;
        let engine = state.manager.get(&selector).await?;
        let (cancel, link) = match caller {
            Some(caller) => {
                let (token, link) = state.generation_token(caller);
                (token, Some(link))
            }
            None => (state.shutdown.cut_off.child_token(), None),
        };
        match engine.generate(request.with_cancel(cancel)) {
            Ok(tokens) => Ok(Self {
                tokens: state.metrics.observe(&engine, frontend, tokens),
                engine,
                _link: link,
            }),
            Err(e) => {
                state.metrics.refused(&engine, frontend, &e);
                Err(e)
            }
        }
    }

    /// The summary the caller is given: a stream that ended without one is a failure, and a
    /// cancel the server made (the grace period ended) carries [`CUT_OFF`] as its error.
    pub fn settle(state: &ServerState, summary: Option<Summary>) -> Summary {
        let mut summary =
            summary.unwrap_or_else(|| Summary::failed("the generation ended without a summary"));
        if summary.finish_reason == FinishReason::Cancelled {
            if state.cut_off() {
                summary.error = Some(CUT_OFF.to_string());
            } else {
                tracing::info!(
                    tokens = summary.completion_tokens,
                    "generation cancelled by the client"
                );
            }
        }
        summary
    }
}
