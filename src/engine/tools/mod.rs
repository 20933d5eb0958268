//! Tool calls: the functions a chat may call, how the model's chat template writes them, the
//! grammar that holds a required call to its schema, and the parser that finds calls in the
//! generated text as it streams.
//!
//! Three syntaxes, chosen from the template's text ([`ToolSyntax::of_template`]):
//! - [`ToolSyntax::Hermes`]: `<tool_call>\n{"name": …, "arguments": {…}}\n</tool_call>`, one or
//!   more per reply; Qwen2.5, Qwen3, Hermes 2 Pro/3, Granite, SmolLM3. The template renders the
//!   tools and the calls in the history.
//! - [`ToolSyntax::Llama3`]: a reply that is `{"name": …, "parameters": {…}}`; Llama 3.1–3.3.
//!   The template renders the tools and the calls.
//! - [`ToolSyntax::Generic`]: every other template (SmolLM2's, Gemma 3's, or one whose own tool
//!   syntax wick does not parse): wick describes the tools in the system message and asks for
//!   the Hermes form, and writes the calls and results in the history as text in that form.

mod parser;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chat::ChatMessage;
use super::constraint::layout;
use crate::error::{Error, Result};

pub use parser::{ToolCallParser, ToolEvent};

/// A function the model may call: OpenAI's `{"type": "function", "function": {…}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    pub name: String,
    /// The JSON schema of the arguments (an object).
    pub parameters: Value,
    /// The tool as the caller wrote it, which templates render.
    pub spec: Value,
}

impl Tool {
    /// A tool from its OpenAI form; `at` names it in errors.
    pub fn from_openai(spec: Value, at: &str) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidRequest(format!("{at}: {why}"));
        if spec["type"] != "function" {
            return Err(invalid("a tool's type is \"function\""));
        }
        let function = &spec["function"];
        let name = function["name"]
            .as_str()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| invalid("function.name must be a non-empty string"))?
            .to_string();
        let parameters = match &function["parameters"] {
            Value::Null => json!({ "type": "object", "properties": {} }),
            Value::Object(_) => function["parameters"].clone(),
            _ => return Err(invalid("function.parameters must be a JSON schema object")),
        };
        Ok(Self {
            name,
            parameters,
            spec,
        })
    }
}

/// A call the model made (or made earlier, in the history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// The arguments as JSON text.
    pub arguments: String,
}

/// Whether the model may, must or must not call a tool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model chooses between text and calls.
    #[default]
    Auto,
    /// No call: the tools are not shown to the model.
    None,
    /// At least one call, held by grammar to a tool's name and schema.
    Required,
    /// A call of this function, held by grammar to its schema.
    Function(String),
}

/// The tools of one request.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolUse {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    /// Several calls in one reply (where the syntax has them).
    pub parallel: bool,
}

impl ToolUse {
    /// The tools shown to the model: none where the choice rules calls out.
    pub fn offered(&self) -> &[Tool] {
        match self.choice {
            ToolChoice::None => &[],
            _ => &self.tools,
        }
    }

    /// The Lark grammar a required or named call is held to; `None` where the model may answer
    /// with text.
    pub fn grammar(&self, syntax: ToolSyntax) -> Result<Option<String>> {
        let callable: Vec<&Tool> = match &self.choice {
            ToolChoice::Auto | ToolChoice::None => return Ok(None),
            ToolChoice::Required => self.tools.iter().collect(),
            ToolChoice::Function(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
        };
        if callable.is_empty() {
            return Err(Error::InvalidRequest(match &self.choice {
                ToolChoice::Function(name) => {
                    format!("tool_choice names the function {name:?}, which is not in tools")
                }
                _ => "tool_choice \"required\" needs at least one tool".into(),
            }));
        }
        let mut rules = Vec::new();
        let mut names = Vec::new();
        for (i, tool) in callable.iter().enumerate() {
            let (open, close) = syntax.call_text(&tool.name);
            let schema = layout(&tool.parameters);
            rules.push(format!(
                "call_{i}: {} %json {schema} {}",
                lark_literal(&open),
                lark_literal(&close)
            ));
            names.push(format!("call_{i}"));
        }
        let start = if self.parallel && syntax.has_parallel_calls() {
            "start: call (\"\\n\" call)*"
        } else {
            "start: call"
        };
        Ok(Some(format!(
            "{start}\ncall: {}\n{}\n",
            names.join(" | "),
            rules.join("\n")
        )))
    }
}

/// `text` as a Lark string literal (llguidance reads its escapes as JSON's).
fn lark_literal(text: &str) -> String {
    Value::from(text).to_string()
}

/// How a chat template writes tool calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolSyntax {
    Hermes,
    Llama3,
    Generic,
}

impl ToolSyntax {
    /// The syntax of a template, from the calls it writes into the history.
    pub fn of_template(source: &str) -> Self {
        let plain = source.replace('\\', "");
        if plain.contains("<tool_call>") && plain.contains("{\"name\": ") {
            ToolSyntax::Hermes
        } else if plain.contains("\"parameters\": ") && plain.contains("tools") {
            ToolSyntax::Llama3
        } else {
            ToolSyntax::Generic
        }
    }

    /// Whether the template renders the tools and the history's calls itself.
    pub fn template_renders_tools(self) -> bool {
        self != ToolSyntax::Generic
    }

    fn has_parallel_calls(self) -> bool {
        self != ToolSyntax::Llama3
    }

    /// The text around a call's arguments: what comes before them and after.
    fn call_text(self, name: &str) -> (String, String) {
        let name = Value::from(name);
        match self {
            ToolSyntax::Hermes | ToolSyntax::Generic => (
                format!("<tool_call>\n{{\"name\": {name}, \"arguments\": "),
                "}\n</tool_call>".into(),
            ),
            ToolSyntax::Llama3 => (format!("{{\"name\": {name}, \"parameters\": "), "}".into()),
        }
    }

    /// A call as the model writes it, for the history of a template that does not write it.
    fn written(self, call: &ToolCall) -> String {
        let (open, close) = self.call_text(&call.name);
        format!("{open}{}{close}", call.arguments)
    }
}

/// The conversation as a [`ToolSyntax::Generic`] template is given it: the tools described in the
/// system message, earlier calls written out in the assistant's text, tool results as user
/// messages in `<tool_response>` tags.
pub(crate) fn generic_conversation(messages: &[ChatMessage], tools: &[Tool]) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = messages
        .iter()
        .map(|message| match message.role.as_str() {
            "assistant" if !message.tool_calls.is_empty() => {
                let mut parts: Vec<String> = Vec::new();
                if !message.content.is_empty() {
                    parts.push(message.content.clone());
                }
                parts.extend(
                    message
                        .tool_calls
                        .iter()
                        .map(|c| ToolSyntax::Generic.written(c)),
                );
                ChatMessage::new("assistant", parts.join("\n"))
            }
            "tool" => ChatMessage::user(format!(
                "<tool_response>\n{}\n</tool_response>",
                message.content
            )),
            _ => message.clone(),
        })
        .collect();
    if !tools.is_empty() {
        let described = describe(tools);
        match out.first_mut() {
            Some(first) if first.role == "system" => {
                first.content = format!("{}\n\n{described}", first.content)
            }
            _ => out.insert(0, ChatMessage::system(described)),
        }
    }
    out
}

/// The system text that offers `tools` in the Hermes form.
fn describe(tools: &[Tool]) -> String {
    let listed: Vec<String> = tools.iter().map(|t| t.spec.to_string()).collect();
    format!(
        "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
         You are provided with function signatures within <tools></tools> XML tags:\n\
         <tools>\n{}\n</tools>\n\n\
         For each function call, return a json object with function name and arguments within \
         <tool_call></tool_call> XML tags:\n\
         <tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n</tool_call>",
        listed.join("\n")
    )
}

/// A message as templates read it (transformers' shape): calls as `{id, type, function: {name,
/// arguments}}` with the arguments as a JSON value, the keys present only where they have a value.
pub(crate) fn template_message(message: &ChatMessage) -> Value {
    let mut value = json!({ "role": message.role, "content": message.content });
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = serde_json::from_str::<Value>(&call.arguments)
                    .unwrap_or_else(|_| Value::from(call.arguments.as_str()));
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": { "name": call.name, "arguments": arguments },
                })
            })
            .collect();
        value["tool_calls"] = calls.into();
    }
    if let Some(id) = &message.tool_call_id {
        value["tool_call_id"] = id.as_str().into();
    }
    value
}

#[cfg(test)]
mod tests;
