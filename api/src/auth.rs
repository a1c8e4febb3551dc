//! API tokens: who may call which route (the "Authentication" section of `docs/API.md`).
//!
//! A token file holds one `TOKEN,NAME,ROLE` a line, the shape of Kubernetes' static token
//! file; `#` starts a comment. Tokens are kept as SHA-256 digests and a presented token is
//! compared with every one of them in constant time, so neither the answer's timing nor an
//! early exit tells an attacker how much of a guess was right. `SIGHUP` reloads the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{ApiError, AppState};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, the cluster's membership and groups included.
    Admin,
    /// Definitions and workflows, and every read.
    Operator,
    /// Polls, completes, fails and heartbeats tasks; reads workflows and tasks.
    Worker,
    /// Every `GET`.
    Reader,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "worker" => Some(Role::Worker),
            "reader" => Some(Role::Reader),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Worker => "worker",
            Role::Reader => "reader",
        }
    }

    /// Whether this role may call `method` on `path` (a `/v1/...` path).
    pub fn may(self, method: &Method, path: &str) -> bool {
        let read = method == Method::GET || method == Method::HEAD;
        // The resource: the segment after `/v1`.
        let resource = path.trim_start_matches('/').split('/').nth(1).unwrap_or("");
        match self {
            Role::Admin => true,
            Role::Reader => read,
            Role::Operator => read || matches!(resource, "workflows" | "definitions"),
            Role::Worker => match resource {
                "workflows" => read,
                "tasks" => read || method == Method::POST,
                _ => false,
            },
        }
    }
}

/// Who made a request: the NAME and ROLE of its token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: Arc<str>,
    pub role: Role,
}

/// The NAME of the caller who sent a request (none when the API is open): what the history
/// rows its command writes record as their cause.
pub struct CallerName(Option<Arc<str>>);

impl CallerName {
    pub fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for CallerName {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(CallerName(
            parts.extensions.get::<Caller>().map(|c| c.name.clone()),
        ))
    }
}

/// The tokens of one token file.
#[derive(Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Caller)>,
}

impl Tokens {
    /// Parses a token file's text; every bad line is named in the error.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut entries: Vec<([u8; 32], Caller)> = Vec::new();
        let mut problems = Vec::new();
        for (n, line) in lines(text) {
            let (token, caller) = match line {
                Ok(line) => line,
                Err(problem) => {
                    problems.push(format!("line {n}: {problem}"));
                    continue;
                }
            };
            let digest = digest(token);
            if entries.iter().any(|(d, _)| *d == digest) {
                problems.push(format!("line {n}: the same token again"));
                continue;
            }
            entries.push((digest, caller));
        }
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if entries.is_empty() {
            return Err("no token in the file".into());
        }
        Ok(Tokens { entries })
    }

    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("the token file {}: {e}", path.display()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The caller whose token `presented` is. Every entry is compared, in constant time.
    pub fn find(&self, presented: &str) -> Option<&Caller> {
        let digest = digest(presented);
        let mut found = None;
        for (d, caller) in &self.entries {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(caller);
            }
        }
        found
    }
}

/// The token lines of a token file's text, numbered from 1: the token and its caller, or
/// what is wrong with the line.
fn lines(text: &str) -> impl Iterator<Item = (usize, Result<(&str, Caller), String>)> {
    text.lines().enumerate().filter_map(|(n, line)| {
        let line = line.split('#').next().unwrap_or("").trim();
        (!line.is_empty()).then(|| (n + 1, token_line(line)))
    })
}

fn token_line(line: &str) -> Result<(&str, Caller), String> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    let [token, name, role] = fields[..] else {
        return Err("expected TOKEN,NAME,ROLE".into());
    };
    let role = Role::parse(role)
        .ok_or_else(|| format!("unknown role {role:?} (admin, operator, worker, reader)"))?;
    if token.len() < 16 {
        return Err("a token must be at least 16 characters".into());
    }
    if name.is_empty() {
        return Err("empty NAME".into());
    }
    let name = name.into();
    Ok((token, Caller { name, role }))
}

/// The first `admin` token of the token file at `path`: what `serve --join` registers the node
/// with when no token is given.
pub fn admin_token(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let token = lines(&text).find_map(|(_, line)| match line {
        Ok((token, caller)) if caller.role == Role::Admin => Some(token.to_string()),
        _ => None,
    });
    token
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The node's token file and the tokens last read from it; no file: the API is open.
#[derive(Default)]
pub struct Auth {
    path: Option<PathBuf>,
    tokens: RwLock<Arc<Tokens>>,
}

impl Auth {
    /// An open API: every request is let through.
    pub fn open() -> Auth {
        Auth::default()
    }

    /// Tokens from `path`.
    pub fn from_file(path: &Path) -> Result<Auth, String> {
        let tokens = Tokens::load(path)?;
        Ok(Auth {
            path: Some(path.to_path_buf()),
            tokens: RwLock::new(Arc::new(tokens)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Reads the token file again; on an error the tokens in use stay. Returns how many
    /// tokens are in use.
    pub fn reload(&self) -> Result<usize, String> {
        let Some(path) = &self.path else {
            return Ok(0);
        };
        let tokens = Tokens::load(path)?;
        let n = tokens.len();
        *self.tokens.write().expect("tokens lock") = Arc::new(tokens);
        Ok(n)
    }

    fn tokens(&self) -> Arc<Tokens> {
        self.tokens.read().expect("tokens lock").clone()
    }
}

/// The bearer token of a request's `Authorization` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Lets a `/v1` request through only with a token whose role may call its route (401, 403
/// otherwise); the caller rides along in the request's and the response's extensions.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path();
    if !state.auth.enabled() || !(path == "/v1" || path.starts_with("/v1/")) {
        return next.run(req).await;
    }
    let tokens = state.auth.tokens();
    let Some(caller) = bearer(&req).and_then(|t| tokens.find(t)).cloned() else {
        return ApiError::unauthenticated().into_response();
    };
    if !caller.role.may(req.method(), path) {
        let mut resp = ApiError::forbidden(&caller, req.method(), path).into_response();
        resp.extensions_mut().insert(caller);
        return resp;
    }
    req.extensions_mut().insert(caller.clone());
    let mut resp = next.run(req).await;
    resp.extensions_mut().insert(caller);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# the ops team\n\
        aaaaaaaaaaaaaaaaaaaa,alice,admin\n\
        bbbbbbbbbbbbbbbbbbbb, bob ,operator # on call\n\
        \n\
        cccccccccccccccccccc,shipper,worker\n\
        dddddddddddddddddddd,dash,reader\n";

    #[test]
    fn a_token_file_names_callers_and_roles() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.len(), 4);
        let bob = t.find("bbbbbbbbbbbbbbbbbbbb").unwrap();
        assert_eq!((&*bob.name, bob.role), ("bob", Role::Operator));
        assert_eq!(&*t.find("cccccccccccccccccccc").unwrap().name, "shipper");
        assert!(t.find("bbbbbbbbbbbbbbbbbbb").is_none());
        assert!(t.find("").is_none());
    }

    #[test]
    fn bad_lines_are_each_named() {
        let e = Tokens::parse(
            "short,a,admin\naaaaaaaaaaaaaaaaaaaa,b,root\naaaaaaaaaaaaaaaaaaaa\n\
             aaaaaaaaaaaaaaaaaaaa,c,admin\naaaaaaaaaaaaaaaaaaaa,d,reader\n",
        )
        .err()
        .unwrap();
        for want in [
            "line 1: a token must be",
            "line 2: unknown role",
            "line 3: expected",
            "line 5: the same token",
        ] {
            assert!(e.contains(want), "{want} in {e}");
        }
        assert!(Tokens::parse("# nothing\n").is_err());
    }

    #[test]
    fn roles_reach_their_routes_only() {
        let (get, post, put, delete) = (Method::GET, Method::POST, Method::PUT, Method::DELETE);
        let cases: &[(&Method, &str, [bool; 4])] = &[
            // admin, operator, worker, reader
            (&get, "/v1/workflows/a", [true, true, true, true]),
            (&get, "/v1/definitions", [true, true, false, true]),
            (&get, "/v1/cluster", [true, true, false, true]),
            (&post, "/v1/workflows", [true, true, false, false]),
            (&post, "/v1/workflows/a/events", [true, true, false, false]),
            (&put, "/v1/definitions/order", [true, true, false, false]),
            (&post, "/v1/tasks/poll", [true, false, true, false]),
            (&post, "/v1/tasks/t/complete", [true, false, true, false]),
            (&get, "/v1/tasks/t", [true, true, true, true]),
            (&post, "/v1/cluster/groups", [true, false, false, false]),
            (&delete, "/v1/cluster/nodes/4", [true, false, false, false]),
            (&post, "/v1/workflowsx", [true, false, false, false]),
        ];
        let roles = [Role::Admin, Role::Operator, Role::Worker, Role::Reader];
        for (method, path, want) in cases {
            for (role, want) in roles.iter().zip(want) {
                assert_eq!(role.may(method, path), *want, "{role:?} {method} {path}");
            }
        }
    }

    #[test]
    fn only_a_bearer_header_carries_a_token() {
        let with = |v: &str| {
            Request::builder()
                .header(header::AUTHORIZATION, v)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert_eq!(bearer(&with("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&with("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&with("Basic abc")), None);
        assert_eq!(bearer(&with("Bearer")), None);
    }
}
