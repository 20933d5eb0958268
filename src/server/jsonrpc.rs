//! The JSON-RPC error responses wick writes itself, before or beside rmcp (malformed bodies,
//! refusals at the door, a session limit): one shape, so every MCP client reads them alike.

use serde_json::{Value, json};

/// A JSON-RPC 2.0 error answering `id` (`null` where the request's id is unknown).
pub fn error(id: Option<&Value>, code: i32, message: String, data: Option<Value>) -> Value {
    let mut error = json!({ "code": code, "message": message });
    if let Some(data) = data {
        error["data"] = data;
    }
    json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_has_the_id_it_answers_or_null_and_data_only_when_given() {
        let id = json!(7);
        let answer = error(
            Some(&id),
            -32000,
            "busy".into(),
            Some(json!({ "reason": "x" })),
        );
        assert_eq!(
            answer,
            json!({ "jsonrpc": "2.0", "id": 7, "error": { "code": -32000, "message": "busy", "data": { "reason": "x" } } })
        );
        let unknown = error(None, -32700, "parse".into(), None);
        assert_eq!(
            unknown,
            json!({ "jsonrpc": "2.0", "id": null, "error": { "code": -32700, "message": "parse" } })
        );
    }
}
