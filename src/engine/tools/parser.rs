//! Finding tool calls in text as it streams: text outside calls passes on at once, save what may
//! begin a call; a call's name is told once its header is read, its arguments as they arrive.

use serde_json::Value;

use super::ToolSyntax;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";
/// What a Llama 3 template may put before a call (a special token, where it is decoded).
const PYTHON_TAG: &str = "<|python_tag|>";

/// What the parser found in the text pushed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Text outside any call.
    Text(String),
    /// Call `index` (from 0) of this function begins.
    Call { index: usize, name: String },
    /// The next part of call `index`'s arguments (JSON text).
    Arguments { index: usize, fragment: String },
}

enum State {
    /// Outside calls (Hermes), or before the first character of the reply (Llama 3).
    Text,
    /// A Llama 3 reply that is not a call: all of it is text.
    Prose,
    /// Inside a call, before its arguments.
    Header,
    /// In the arguments.
    Arguments(JsonEnd),
    /// After the arguments, to the end of the call.
    Trailer,
}

/// Splits generated text into text and calls, for one reply.
pub struct ToolCallParser {
    syntax: ToolSyntax,
    state: State,
    /// Text read but not yet told.
    held: String,
    calls: usize,
}

impl ToolCallParser {
    pub fn new(syntax: ToolSyntax) -> Self {
        Self {
            syntax,
            state: State::Text,
            held: String::new(),
            calls: 0,
        }
    }

    /// The calls begun so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Reads the next piece of text.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.held.push_str(text);
        let mut events = Vec::new();
        while self.step(&mut events) {}
        events
    }

    /// The end of the reply: what is still held is told as it stands.
    pub fn finish(mut self) -> Vec<ToolEvent> {
        let mut events = Vec::new();
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Text | State::Prose => {
                if !(held.trim().is_empty() && self.calls > 0) {
                    push_text(&mut events, held);
                }
            }
            // A call whose header never parsed: whole, if it is one, else the text it was.
            State::Header => {
                let body = held.strip_suffix(CLOSE).unwrap_or(&held);
                if !self.whole_call(body, &mut events) {
                    let open = if self.hermes() { OPEN } else { "" };
                    push_text(&mut events, format!("{open}{held}"));
                }
            }
            // Cut off inside the arguments, or after them.
            State::Arguments(_) | State::Trailer => {}
        }
        events
    }

    fn hermes(&self) -> bool {
        self.syntax != ToolSyntax::Llama3
    }

    /// Takes one step on the held text; `false` when it needs more.
    fn step(&mut self, events: &mut Vec<ToolEvent>) -> bool {
        let hermes = self.hermes();
        match &mut self.state {
            State::Prose => {
                push_text(events, std::mem::take(&mut self.held));
                false
            }
            State::Text if hermes => {
                if let Some(at) = self.held.find(OPEN) {
                    let before: String = self.held.drain(..at + OPEN.len()).collect();
                    let before = &before[..at];
                    // Whitespace before a call only sets it apart.
                    push_text(events, before.trim_end().to_string());
                    self.state = State::Header;
                    return true;
                }
                // What may begin a call is held, and so is the whitespace before it (dropped if
                // a call follows).
                let keep = partial_suffix(&self.held, OPEN);
                let told = self.held[..self.held.len() - keep].trim_end().len();
                let told: String = self.held.drain(..told).collect();
                push_text(events, told);
                false
            }
            State::Text => {
                let start = self.held.trim_start();
                let start = start.strip_prefix(PYTHON_TAG).unwrap_or(start).trim_start();
                if start.is_empty() || PYTHON_TAG.starts_with(start) {
                    return false;
                }
                if start.starts_with('{') {
                    self.held = start.to_string();
                    self.state = State::Header;
                } else {
                    self.state = State::Prose;
                }
                true
            }
            State::Header => match header(&self.held) {
                Header::Complete { name, length } => {
                    self.held.drain(..length);
                    events.push(ToolEvent::Call {
                        index: self.calls,
                        name,
                    });
                    self.calls += 1;
                    self.state = State::Arguments(JsonEnd::default());
                    true
                }
                Header::Partial => false,
                // Another layout (keys in another order): read whole at its end.
                Header::Other => match self.held.find(CLOSE).filter(|_| hermes) {
                    Some(at) => {
                        let body: String = self.held.drain(..at + CLOSE.len()).collect();
                        let body = &body[..at];
                        if !self.whole_call(body, events) {
                            push_text(events, format!("{OPEN}{body}{CLOSE}"));
                        }
                        self.state = State::Text;
                        true
                    }
                    None => false,
                },
            },
            State::Arguments(end) => {
                let (length, done) = end.read(&self.held);
                let fragment: String = self.held.drain(..length).collect();
                if !fragment.is_empty() {
                    events.push(ToolEvent::Arguments {
                        index: self.calls - 1,
                        fragment,
                    });
                }
                if done {
                    self.state = State::Trailer;
                }
                done
            }
            State::Trailer => {
                if !hermes {
                    self.held.clear();
                    return false;
                }
                match self.held.find(CLOSE) {
                    Some(at) => {
                        self.held.drain(..at + CLOSE.len());
                        self.state = State::Text;
                        true
                    }
                    None => false,
                }
            }
        }
    }

    /// Tells `body` as one call if it is a JSON object with a name and arguments.
    fn whole_call(&mut self, body: &str, events: &mut Vec<ToolEvent>) -> bool {
        let Ok(Value::Object(call)) = serde_json::from_str::<Value>(body.trim()) else {
            return false;
        };
        let Some(name) = call.get("name").and_then(Value::as_str) else {
            return false;
        };
        let Some(arguments) = call.get("arguments").or_else(|| call.get("parameters")) else {
            return false;
        };
        events.push(ToolEvent::Call {
            index: self.calls,
            name: name.to_string(),
        });
        events.push(ToolEvent::Arguments {
            index: self.calls,
            fragment: arguments.to_string(),
        });
        self.calls += 1;
        true
    }
}

fn push_text(events: &mut Vec<ToolEvent>, text: String) {
    if !text.is_empty() {
        events.push(ToolEvent::Text(text));
    }
}

/// The length of the longest end of `text` that begins `marker` (and is not all of it).
fn partial_suffix(text: &str, marker: &str) -> usize {
    (1..marker.len().min(text.len() + 1))
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n) && marker.starts_with(&text[text.len() - n..])
        })
        .unwrap_or(0)
}

enum Header {
    /// `{"name": "…", "arguments": ` read: the name, and the bytes up to the arguments.
    Complete { name: String, length: usize },
    /// So far it reads like one.
    Partial,
    /// Not this layout.
    Other,
}

/// Reads a call's opening, `{"name": "<name>", "arguments": ` (or `"parameters"`), spaces free.
fn header(text: &str) -> Header {
    let mut at = 0;
    let bytes = text.as_bytes();
    let skip_space = |at: &mut usize| {
        while *at < bytes.len() && bytes[*at].is_ascii_whitespace() {
            *at += 1;
        }
    };
    // Each expected piece: the text matches it, is a beginning of it, or differs.
    let expect = |at: &mut usize, piece: &str| -> Option<bool> {
        skip_space(at);
        let rest = &text[*at..];
        if rest.starts_with(piece) {
            *at += piece.len();
            Some(true)
        } else if piece.starts_with(rest) {
            Some(false)
        } else {
            None
        }
    };
    for piece in ["{", "\"name\"", ":"] {
        match expect(&mut at, piece) {
            Some(true) => {}
            Some(false) => return Header::Partial,
            None => return Header::Other,
        }
    }
    skip_space(&mut at);
    let mut string = JsonEnd::default();
    let (length, done) = string.read(&text[at..]);
    if !text[at..].starts_with('"') {
        return if at == text.len() {
            Header::Partial
        } else {
            Header::Other
        };
    }
    if !done {
        return Header::Partial;
    }
    let Ok(name) = serde_json::from_str::<String>(&text[at..at + length]) else {
        return Header::Other;
    };
    at += length;
    match expect(&mut at, ",") {
        Some(true) => {}
        Some(false) => return Header::Partial,
        None => return Header::Other,
    }
    skip_space(&mut at);
    let rest = &text[at..];
    let key = ["\"arguments\"", "\"parameters\""]
        .into_iter()
        .find(|key| rest.starts_with(key));
    match key {
        Some(key) => at += key.len(),
        None if ["\"arguments\"", "\"parameters\""]
            .iter()
            .any(|key| key.starts_with(rest)) =>
        {
            return Header::Partial;
        }
        None => return Header::Other,
    }
    match expect(&mut at, ":") {
        Some(true) => {}
        Some(false) => return Header::Partial,
        None => return Header::Other,
    }
    skip_space(&mut at);
    if at == text.len() {
        return Header::Partial;
    }
    Header::Complete { name, length: at }
}

/// Finds where one JSON value ends, read in pieces: brackets counted outside strings.
#[derive(Default)]
struct JsonEnd {
    depth: usize,
    in_string: bool,
    escaped: bool,
    started: bool,
}

impl JsonEnd {
    /// Reads `text`: the bytes that belong to the value, and whether it ended there.
    fn read(&mut self, text: &str) -> (usize, bool) {
        for (i, c) in text.char_indices() {
            let end = i + c.len_utf8();
            if self.in_string {
                match c {
                    _ if self.escaped => self.escaped = false,
                    '\\' => self.escaped = true,
                    '"' => {
                        self.in_string = false;
                        if self.depth == 0 {
                            return (end, true);
                        }
                    }
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => {
                    self.started = true;
                    self.in_string = true;
                }
                '{' | '[' => {
                    self.started = true;
                    self.depth += 1;
                }
                '}' | ']' if self.depth > 0 => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        return (end, true);
                    }
                }
                // A bare value (number, true, …) ends where a delimiter begins.
                '}' | ']' | ',' if self.depth == 0 => return (i, true),
                c if c.is_whitespace() && self.started && self.depth == 0 => return (i, true),
                c if c.is_whitespace() => {}
                _ => self.started = true,
            }
        }
        (text.len(), false)
    }
}
