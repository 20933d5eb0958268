//! What a caller asks the engine for.

use tokio_util::sync::CancellationToken;

use super::chat::ChatMessage;
use super::sampling::SamplingParams;
use super::tools::ToolUse;

/// What to generate from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// Plain text, continued as is.
    Prompt(String),
    /// A conversation, rendered with the model's chat template; the reply ends at the end of
    /// the assistant's turn.
    Chat(Vec<ChatMessage>),
    /// Token ids, used as they are (benchmarks use prompts of an exact length).
    Tokens(Vec<u32>),
}

/// One generation request.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub input: Input,
    pub params: SamplingParams,
    /// The tools a chat offers the model.
    pub tools: Option<ToolUse>,
    /// Cancelling it stops the generation at the next token (as dropping the stream does).
    pub cancel: CancellationToken,
}

impl GenerateRequest {
    pub fn prompt(text: impl Into<String>) -> Self {
        Self::new(Input::Prompt(text.into()))
    }

    pub fn chat(messages: Vec<ChatMessage>) -> Self {
        Self::new(Input::Chat(messages))
    }

    pub fn new(input: Input) -> Self {
        Self {
            input,
            params: SamplingParams::default(),
            tools: None,
            cancel: CancellationToken::new(),
        }
    }

    pub fn with_params(mut self, params: SamplingParams) -> Self {
        self.params = params;
        self
    }

    pub fn with_tools(mut self, tools: ToolUse) -> Self {
        self.tools = Some(tools);
        self
    }

    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }
}
