//! A request value that does not fit its type, worded for the caller: the argument's name (also
//! when it is missing, where serde's path is the root, `.`) and what it takes in words rather than
//! Rust's types. The MCP tools and the OpenAI API word it alike.

/// The argument at fault and what is wrong with it.
pub struct InvalidArgument {
    pub name: String,
    pub problem: String,
}

impl From<serde_path_to_error::Error<serde_json::Error>> for InvalidArgument {
    fn from(error: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let inner = error.inner().to_string();
        let path = error.path().to_string();
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split_once('`'))
            .map(|(field, _)| field);
        let name = match (path.as_str(), missing) {
            (".", Some(field)) => field.to_string(),
            _ => path,
        };
        // The token limits take at least 1 (the schemas say so); other counts at least 0.
        let least = if name.ends_with("max_tokens") || name.ends_with("max_completion_tokens") {
            1
        } else {
            0
        };
        let whole = format!("expected a whole number of at least {least}");
        let problem = inner
            .replace("expected u32", &whole)
            .replace("expected u64", &whole)
            .replace("expected usize", &whole)
            .replace("expected f64", "expected a number")
            .replace("expected f32", "expected a number");
        Self { name, problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // read by serde only
    struct Body {
        prompt: String,
        max_tokens: Option<u32>,
        top_k: Option<u32>,
        temperature: Option<f64>,
    }

    fn explain(body: serde_json::Value) -> InvalidArgument {
        match serde_path_to_error::deserialize::<_, Body>(body) {
            Ok(body) => panic!("accepted {body:?}"),
            Err(e) => e.into(),
        }
    }

    #[test]
    fn names_the_argument_and_what_it_takes() {
        let missing = explain(serde_json::json!({}));
        assert_eq!(missing.name, "prompt");
        assert!(
            missing.problem.contains("missing field"),
            "{}",
            missing.problem
        );

        let negative = explain(serde_json::json!({"prompt": "", "max_tokens": -1}));
        assert_eq!(negative.name, "max_tokens");
        assert!(
            negative.problem.contains("at least 1"),
            "{}",
            negative.problem
        );

        let top_k = explain(serde_json::json!({"prompt": "", "top_k": -1}));
        assert!(top_k.problem.contains("at least 0"), "{}", top_k.problem);

        let text = explain(serde_json::json!({"prompt": "", "temperature": "hot"}));
        assert_eq!(text.name, "temperature");
        assert!(
            text.problem.contains("expected a number"),
            "{}",
            text.problem
        );
    }
}
