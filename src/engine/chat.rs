//! Chat templates: the model's own Jinja template, rendered with minijinja the way
//! `transformers` renders it (trim_blocks, lstrip_blocks, Python string methods).

use minijinja::{Environment, ErrorKind, Value, context};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::tools::{Tool, ToolCall, ToolSyntax, generic_conversation, template_message};
use crate::error::{Error, Result};

/// The roles a message may have: what chat templates are written for.
pub const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ChatMessage {
    /// Who speaks: `system`, `user`, `assistant` (or `tool`, where the model's template knows it).
    #[schemars(extend("enum" = ROLES))]
    pub role: String,
    /// What they say.
    pub content: String,
    /// The calls an assistant message made (OpenAI's history; not offered over MCP).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(skip)]
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }

    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
}

/// A compiled chat template plus the special tokens it refers to.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tool_syntax: ToolSyntax,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str, bos_token: String, eos_token: String) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(NAME, source.to_string())
            .map_err(|e| {
                Error::Template(format!("the model's chat template does not parse: {e}"))
            })?;
        Ok(Self {
            env,
            bos_token,
            eos_token,
            tool_syntax: ToolSyntax::of_template(source),
        })
    }

    /// How this template writes tool calls.
    pub fn tool_syntax(&self) -> ToolSyntax {
        self.tool_syntax
    }

    /// Renders a conversation offering `tools`; with `add_generation_prompt` the text ends where
    /// the assistant's reply begins.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[Tool],
        add_generation_prompt: bool,
    ) -> Result<String> {
        if messages.is_empty() {
            return Err(Error::InvalidRequest(
                "messages must hold at least one message".into(),
            ));
        }
        if let Some((i, m)) = messages
            .iter()
            .enumerate()
            .find(|(_, m)| !ROLES.contains(&m.role.as_str()))
        {
            return Err(Error::InvalidRequest(format!(
                "messages[{i}] has role {:?}; a role is one of {}",
                m.role,
                ROLES.join(", ")
            )));
        }
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        // A template that writes tools itself is given them; another, the generic form.
        let generic;
        let (messages, tools) = if self.tool_syntax.template_renders_tools() {
            let tools: Vec<&serde_json::Value> = tools.iter().map(|t| &t.spec).collect();
            (messages, (!tools.is_empty()).then_some(tools))
        } else {
            generic = generic_conversation(messages, tools);
            (&generic[..], None)
        };
        let messages: Vec<serde_json::Value> = messages.iter().map(template_message).collect();
        template
            .render(context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.kind() {
                // The template rejected the conversation (e.g. roles out of order).
                ErrorKind::InvalidOperation => Error::InvalidRequest(format!(
                    "the model's chat template rejected these messages: {}",
                    e.detail().unwrap_or("no reason given")
                )),
                _ => Error::Template(format!("rendering failed: {e}")),
            })
    }

    /// The text the template puts right after an assistant message: its end-of-turn marker.
    pub fn end_of_turn_text(&self) -> Result<String> {
        const PROBE: &str = "wick-end-of-turn-probe";
        let rendered = self.render(
            &[
                ChatMessage::user("hi"),
                ChatMessage::new("assistant", PROBE),
            ],
            &[],
            false,
        )?;
        Ok(rendered
            .rfind(PROBE)
            .map(|at| rendered[at + PROBE.len()..].to_string())
            .unwrap_or_default())
    }
}

/// The parts of `tokenizer_config.json` that chat needs.
#[derive(Debug, Default)]
pub(crate) struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
}

impl TokenizerConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self> {
        let invalid = |message: String| Error::Load {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| invalid(format!("invalid JSON: {e}")))?;
        // A token is written either as a string or as {"content": "..."}.
        let token = |key: &str| match &json[key] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
            _ => None,
        };
        // The template is a string, or a list of named templates of which `default` is used.
        let chat_template = match &json["chat_template"] {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(named) => named
                .iter()
                .find(|t| t["name"] == "default")
                .or(named.first())
                .and_then(|t| t["template"].as_str())
                .map(str::to_string),
            _ => None,
        };
        Ok(Self {
            chat_template,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `strftime_now` as transformers provides it; templates use it to print today's date.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'].strip() + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate::new(CHATML, "".into(), "<|im_end|>".into()).unwrap();
        let text = t.render(&[ChatMessage::user(" hi ")], &[], true).unwrap();
        assert_eq!(
            text,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(t.end_of_turn_text().unwrap(), "<|im_end|>\n");
    }

    #[test]
    fn template_exceptions_and_empty_conversations_are_request_errors() {
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}",
            "".into(),
            "".into(),
        )
        .unwrap();
        let err = t
            .render(&[ChatMessage::system("x")], &[], true)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(ref m) if m.contains("first must be user")));
        assert!(matches!(
            t.render(&[], &[], true),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn a_role_templates_do_not_know_is_refused_naming_the_message() {
        let t = ChatTemplate::new(CHATML, "".into(), "<|im_end|>".into()).unwrap();
        let messages = [ChatMessage::user("hi"), ChatMessage::new("robot", "beep")];
        let err = t.render(&messages, &[], true).unwrap_err();
        assert!(
            matches!(err, Error::InvalidRequest(ref m) if m.contains("messages[1]") && m.contains("robot")),
            "{err}"
        );
        for role in ROLES {
            assert!(
                t.render(&[ChatMessage::new(role, "x")], &[], true).is_ok(),
                "{role}"
            );
        }
    }
}
