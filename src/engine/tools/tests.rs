use serde_json::json;

use super::*;
use crate::engine::chat::ChatTemplate;

const QWEN: &str = include_str!("../../../tests/data/templates/Qwen-Qwen2.5-7B-Instruct.jinja");
const LLAMA: &str =
    include_str!("../../../tests/data/templates/meta-llama-Llama-3.2-3B-Instruct.jinja");
/// SmolLM2's template: ChatML that knows nothing of tools.
const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

fn weather() -> Tool {
    Tool::from_openai(
        json!({"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }}),
        "tools[0]",
    )
    .unwrap()
}

fn history() -> Vec<ChatMessage> {
    let mut call = ChatMessage::new("assistant", "");
    call.tool_calls = vec![ToolCall {
        id: "call_1".into(),
        name: "get_weather".into(),
        arguments: r#"{"city": "Paris"}"#.into(),
    }];
    let mut result = ChatMessage::new("tool", r#"{"celsius": 21}"#);
    result.tool_call_id = Some("call_1".into());
    vec![ChatMessage::user("Weather in Paris?"), call, result]
}

fn template(source: &str) -> ChatTemplate {
    ChatTemplate::new(source, "<s>".into(), "</s>".into()).unwrap()
}

/// All events of `text` pushed in pieces of `size` bytes (on character boundaries).
fn parse(syntax: ToolSyntax, text: &str, size: usize) -> Vec<ToolEvent> {
    let mut parser = ToolCallParser::new(syntax);
    let mut events = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let mut cut = size.min(rest.len());
        while !rest.is_char_boundary(cut) {
            cut += 1;
        }
        events.extend(parser.push(&rest[..cut]));
        rest = &rest[cut..];
    }
    events.extend(parser.finish());
    events
}

/// The text and the calls (name, arguments) the events add up to.
fn assembled(events: &[ToolEvent]) -> (String, Vec<(String, String)>) {
    let mut text = String::new();
    let mut calls: Vec<(String, String)> = Vec::new();
    for event in events {
        match event {
            ToolEvent::Text(t) => text.push_str(t),
            ToolEvent::Call { index, name } => {
                assert_eq!(*index, calls.len());
                calls.push((name.clone(), String::new()));
            }
            ToolEvent::Arguments { index, fragment } => calls[*index].1.push_str(fragment),
        }
    }
    (text, calls)
}

#[test]
fn each_template_is_read_as_its_syntax() {
    assert_eq!(ToolSyntax::of_template(QWEN), ToolSyntax::Hermes);
    assert_eq!(ToolSyntax::of_template(LLAMA), ToolSyntax::Llama3);
    assert_eq!(ToolSyntax::of_template(SMOLLM2), ToolSyntax::Generic);
}

#[test]
fn qwen_renders_the_tools_and_the_history_through_its_template() {
    let text = template(QWEN)
        .render(&history(), &[weather()], true)
        .unwrap();
    assert!(text.contains("<tools>\n{"), "{text}");
    assert!(
        text.contains("\"name\":\"get_weather\"") || text.contains("\"name\": \"get_weather\"")
    );
    assert!(
        text.contains("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":"),
        "{text}"
    );
    assert!(
        text.contains("<tool_response>\n{\"celsius\": 21}\n</tool_response>"),
        "{text}"
    );
    // Without tools, the same template renders no tool section.
    let plain = template(QWEN).render(&history(), &[], true).unwrap();
    assert!(!plain.contains("<tools>"), "{plain}");
}

#[test]
fn llama_renders_the_tools_and_the_history_through_its_template() {
    let text = template(LLAMA)
        .render(&history(), &[weather()], true)
        .unwrap();
    assert!(text.contains("Environment: ipython"), "{text}");
    assert!(text.contains("\"get_weather\""), "{text}");
    assert!(
        text.contains("{\"name\": \"get_weather\", \"parameters\": {\"city\":"),
        "{text}"
    );
    assert!(
        text.contains("<|start_header_id|>ipython<|end_header_id|>"),
        "{text}"
    );
    let plain = template(LLAMA)
        .render(&[ChatMessage::user("hi")], &[], true)
        .unwrap();
    assert!(!plain.contains("ipython"), "{plain}");
}

#[test]
fn a_template_without_tools_gets_them_in_the_system_message_and_the_calls_as_text() {
    let text = template(SMOLLM2)
        .render(&history(), &[weather()], true)
        .unwrap();
    assert!(text.starts_with("<|im_start|>system\n# Tools"), "{text}");
    assert!(text.contains("\"get_weather\""), "{text}");
    assert!(
        text.contains("<|im_start|>assistant\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call><|im_end|>"),
        "{text}"
    );
    assert!(
        text.contains(
            "<|im_start|>user\n<tool_response>\n{\"celsius\": 21}\n</tool_response><|im_end|>"
        ),
        "{text}"
    );
    // A system message of the caller's keeps its text, the tools after it.
    let mut messages = vec![ChatMessage::system("Be brief.")];
    messages.extend(history());
    let text = template(SMOLLM2)
        .render(&messages, &[weather()], true)
        .unwrap();
    assert!(
        text.starts_with("<|im_start|>system\nBe brief.\n\n# Tools"),
        "{text}"
    );
}

#[test]
fn hermes_calls_are_found_in_any_split_of_the_text() {
    let text = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}\\\"\", \"days\": [1, {\"a\": 2}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>";
    for size in [1, 2, 3, 7, 1000] {
        let events = parse(ToolSyntax::Hermes, text, size);
        let (content, calls) = assembled(&events);
        assert_eq!(content, "Let me check.", "split {size}");
        assert_eq!(
            calls,
            vec![
                (
                    "get_weather".to_string(),
                    r#"{"city": "Paris \"}\"", "days": [1, {"a": 2}]}"#.to_string()
                ),
                ("get_time".to_string(), "{}".to_string()),
            ],
            "split {size}"
        );
    }
}

#[test]
fn arguments_stream_before_the_call_ends() {
    let mut parser = ToolCallParser::new(ToolSyntax::Hermes);
    assert!(parser.push("<tool_call>\n{\"name\": \"f\", ").is_empty());
    assert_eq!(
        parser.push("\"arguments\": {\"x\""),
        vec![
            ToolEvent::Call {
                index: 0,
                name: "f".into()
            },
            ToolEvent::Arguments {
                index: 0,
                fragment: "{\"x\"".into()
            }
        ]
    );
    assert_eq!(
        parser.push(": 1}}\n</tool_"),
        vec![ToolEvent::Arguments {
            index: 0,
            fragment: ": 1}".into()
        }]
    );
    assert!(parser.push("call>\n").is_empty());
    assert!(parser.finish().is_empty());
}

#[test]
fn text_that_only_looks_like_a_call_stays_text() {
    for text in [
        "a < b and <tool_ca",
        "<tool_call>not json</tool_call> after",
        "plain text, no calls",
    ] {
        for size in [1, 4, 1000] {
            let (content, calls) = assembled(&parse(ToolSyntax::Hermes, text, size));
            assert_eq!(content, text, "split {size}");
            assert!(calls.is_empty());
        }
    }
    // Keys in another order are read whole at the call's end.
    let text = "<tool_call>{\"arguments\": {\"x\": 1}, \"name\": \"f\"}</tool_call>";
    let (content, calls) = assembled(&parse(ToolSyntax::Hermes, text, 3));
    assert_eq!(content, "");
    assert_eq!(calls, vec![("f".to_string(), r#"{"x":1}"#.to_string())]);
}

#[test]
fn a_llama_reply_is_a_call_when_it_is_one_json_object() {
    let text = "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}";
    for size in [1, 5, 1000] {
        let (content, calls) = assembled(&parse(ToolSyntax::Llama3, text, size));
        assert_eq!(content, "");
        assert_eq!(
            calls,
            vec![(
                "get_weather".to_string(),
                r#"{"city": "Paris"}"#.to_string()
            )]
        );
    }
    let prose = "The weather {is} fine.";
    let (content, calls) = assembled(&parse(ToolSyntax::Llama3, prose, 2));
    assert_eq!(content, prose);
    assert!(calls.is_empty());
}

/// The grammar a required call is held to compiles in llguidance, and it admits exactly the
/// calls of the offered tools in the template's syntax.
#[test]
fn required_and_named_calls_compile_to_grammars_that_admit_only_calls() {
    let time = Tool::from_openai(
        json!({"type": "function", "function": {"name": "get_time"}}),
        "tools[1]",
    )
    .unwrap();
    let tools = ToolUse {
        tools: vec![weather(), time],
        choice: ToolChoice::Required,
        parallel: true,
    };
    let grammar = tools.grammar(ToolSyntax::Hermes).unwrap().unwrap();
    let accepts = crate::engine::constraint::lark_accepts;
    assert!(accepts(
        &grammar,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>"
    ));
    assert!(accepts(
        &grammar,
        "<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {}}\n</tool_call>"
    ));
    assert!(!accepts(&grammar, "Sure, here it is."));
    assert!(!accepts(
        &grammar,
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {}}\n</tool_call>"
    ));
    let named = ToolUse {
        choice: ToolChoice::Function("get_time".into()),
        ..tools.clone()
    };
    let grammar = named.grammar(ToolSyntax::Llama3).unwrap().unwrap();
    assert!(accepts(
        &grammar,
        "{\"name\": \"get_time\", \"parameters\": {}}"
    ));
    assert!(!accepts(
        &grammar,
        "{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}"
    ));
    let unknown = ToolUse {
        choice: ToolChoice::Function("nope".into()),
        ..tools.clone()
    };
    assert!(matches!(
        unknown.grammar(ToolSyntax::Hermes),
        Err(Error::InvalidRequest(m)) if m.contains("nope")
    ));
    let auto = ToolUse {
        choice: ToolChoice::Auto,
        ..tools
    };
    assert_eq!(auto.grammar(ToolSyntax::Hermes).unwrap(), None);
}

#[test]
fn a_tool_must_be_a_named_function_with_an_object_schema() {
    for (spec, why) in [
        (json!({"type": "retrieval"}), "type"),
        (json!({"type": "function", "function": {}}), "name"),
        (
            json!({"type": "function", "function": {"name": "f", "parameters": "x"}}),
            "parameters",
        ),
    ] {
        let err = Tool::from_openai(spec, "tools[3]").unwrap_err();
        assert!(
            matches!(&err, Error::InvalidRequest(m) if m.contains("tools[3]") && m.contains(why)),
            "{err}"
        );
    }
}
