//! Who may talk to the server: one middleware in front of every route.
//!
//! - **Host** (DNS-rebinding protection): loopback names, the address wick was bound to, and any
//!   `--allowed-host`. When bound to a wildcard address (`0.0.0.0`, `::`), clients reach the
//!   server under names wick cannot know, so the Host check is off and the Origin check remains.
//! - **Origin**: requests without one (non-browser clients) pass; a browser page must come from a
//!   loopback origin or an `--allowed-origin`. A foreign origin gets 403.
//! - **Bearer token** (`--api-key`): compared in constant time; 401 with `WWW-Authenticate`
//!   otherwise. `/health` stays open for load balancers, and `/metrics` for scrapers when
//!   `--metrics-public` says so.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::refusal::refusal;

const LOOPBACK_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

#[derive(Clone, Debug)]
pub struct AccessPolicy {
    /// `None`: any Host.
    allowed_hosts: Option<Vec<String>>,
    allowed_origins: Vec<String>,
    /// sha256 of the API key: comparing digests takes the same time whatever the key's length.
    api_key: Option<[u8; 32]>,
    /// Served without the key: `/health`, and `/metrics` with `--metrics-public`.
    open_paths: Vec<&'static str>,
}

impl AccessPolicy {
    pub fn new(
        bind: IpAddr,
        extra_hosts: &[String],
        allowed_origins: &[String],
        api_key: Option<&str>,
        metrics_public: bool,
    ) -> Self {
        let allowed_hosts = if bind.is_unspecified() || extra_hosts.iter().any(|h| h == "*") {
            None
        } else {
            let mut hosts: Vec<String> = LOOPBACK_HOSTS.iter().map(|h| h.to_string()).collect();
            hosts.push(bind.to_string());
            hosts.extend(extra_hosts.iter().map(|h| h.to_ascii_lowercase()));
            Some(hosts)
        };
        Self {
            allowed_hosts,
            allowed_origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            api_key: api_key.filter(|k| !k.is_empty()).map(digest),
            open_paths: if metrics_public {
                vec!["/health", "/metrics"]
            } else {
                vec!["/health"]
            },
        }
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if self
            .allowed_origins
            .iter()
            .any(|o| *o == origin || o == "*")
        {
            return true;
        }
        // Pages served from this machine.
        let Some((scheme, rest)) = origin.split_once("://") else {
            return false;
        };
        matches!(scheme, "http" | "https") && LOOPBACK_HOSTS.contains(&host_name(rest))
    }

    fn host_allowed(&self, host: &str) -> bool {
        match &self.allowed_hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| *h == host_name(host)),
        }
    }

    fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Denial> {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if !self.host_allowed(&host) {
            return Err(Denial::forbidden(format!(
                "Host `{host}` is not allowed (DNS-rebinding protection); start wick with \
                     --allowed-host {} to accept it",
                host_name(&host)
            )));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not text)");
            if !self.origin_allowed(origin) {
                return Err(Denial::forbidden(format!(
                    "Origin `{origin}` is not allowed; start wick with --allowed-origin {origin} \
                     to accept pages from it"
                )));
            }
        }
        if let Some(expected) = &self.api_key
            && !self.open_paths.contains(&path)
        {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.strip_prefix("Bearer ")
                        .or_else(|| v.strip_prefix("bearer "))
                });
            let challenge = match given {
                Some(token) if bool::from(digest(token.trim()).ct_eq(expected)) => return Ok(()),
                Some(_) => r#"Bearer realm="wick", error="invalid_token""#,
                None => r#"Bearer realm="wick""#,
            };
            return Err(Denial {
                status: StatusCode::UNAUTHORIZED,
                message: "this server requires `Authorization: Bearer <api key>` (the key given \
                          to --api-key / WICK_API_KEY)"
                    .to_string(),
                challenge: Some(challenge),
            });
        }
        Ok(())
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The host name of `host[:port]` or `[v6]:port`, without brackets or port.
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// A refused request: its status, the reason, and for 401 the `WWW-Authenticate` challenge.
#[derive(Debug)]
struct Denial {
    status: StatusCode,
    message: String,
    challenge: Option<&'static str>,
}

impl Denial {
    fn forbidden(message: String) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message,
            challenge: None,
        }
    }
}

impl Denial {
    fn into_response(self, path: &str) -> Response {
        tracing::warn!(status = %self.status, "refused: {}", self.message);
        let mut response = refusal(path, self.status, self.message);
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

pub async fn guard(
    State(policy): State<Arc<AccessPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    match policy.check(request.uri().path(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(denial) => denial.into_response(request.uri().path()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    #[test]
    fn loopback_binding_checks_host_and_origin() {
        let policy = AccessPolicy::new("127.0.0.1".parse().unwrap(), &[], &[], None, false);
        assert!(
            policy
                .check("/mcp", &headers(&[("host", "127.0.0.1:8080")]))
                .is_ok()
        );
        assert!(
            policy
                .check("/mcp", &headers(&[("host", "[::1]:8080")]))
                .is_ok()
        );
        assert!(
            policy
                .check("/mcp", &headers(&[("host", "evil.example.com")]))
                .is_err()
        );
        let local_page = headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://localhost:5173"),
        ]);
        assert!(policy.check("/mcp", &local_page).is_ok());
        let foreign = headers(&[
            ("host", "localhost:8080"),
            ("origin", "http://evil.example.com"),
        ]);
        assert_eq!(
            policy.check("/mcp", &foreign).unwrap_err().status,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn wildcard_binding_leaves_origin_as_the_guard() {
        let origins = ["https://app.example.com".to_string()];
        let policy = AccessPolicy::new("0.0.0.0".parse().unwrap(), &[], &origins, None, false);
        assert!(
            policy
                .check("/mcp", &headers(&[("host", "gpu-box:8080")]))
                .is_ok()
        );
        let app = headers(&[("host", "gpu-box"), ("origin", "https://app.example.com")]);
        assert!(policy.check("/mcp", &app).is_ok());
        let other = headers(&[("host", "gpu-box"), ("origin", "https://other.example.com")]);
        assert!(policy.check("/mcp", &other).is_err());
    }

    #[test]
    fn bearer_tokens_are_checked_except_on_health() {
        let policy = AccessPolicy::new(
            "127.0.0.1".parse().unwrap(),
            &[],
            &[],
            Some("s3cret"),
            false,
        );
        let host = ("host", "127.0.0.1");
        assert!(
            policy
                .check(
                    "/mcp",
                    &headers(&[host, ("authorization", "Bearer s3cret")])
                )
                .is_ok()
        );
        let wrong = policy
            .check("/mcp", &headers(&[host, ("authorization", "Bearer nope")]))
            .unwrap_err();
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
        assert!(wrong.challenge.unwrap().contains("invalid_token"));
        assert!(policy.check("/mcp", &headers(&[host])).is_err());
        assert!(policy.check("/health", &headers(&[host])).is_ok());
        assert!(policy.check("/metrics", &headers(&[host])).is_err());
        let public = AccessPolicy::new("127.0.0.1".parse().unwrap(), &[], &[], Some("k"), true);
        assert!(public.check("/metrics", &headers(&[host])).is_ok());
        assert!(public.check("/v1/models", &headers(&[host])).is_err());
    }
}
