//! The HTTP half of the client: accounts, conversations, history and user
//! names (docs/protocol.md, *HTTP API*). Every answer is returned as the
//! server's JSON, so `--json` can print it untouched.

use anyhow::{Context, bail};
use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::{Value, json};
use std::{collections::HashMap, fmt};

/// An error the server answered: `{"error": {"code", "message"}}` over
/// HTTP, or a type 3 frame on the WebSocket. Shown as `code: message`.
#[derive(Debug)]
pub struct ServerError {
    /// The protocol's error code (`unauthenticated`, `unknown_user`, …).
    pub code: String,
    /// The server's explanation.
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

impl ServerError {
    /// Reads an error body; a body that is not the server's error shape
    /// (a proxy's page, say) becomes `http_<status>` with the start of
    /// its text.
    pub fn from_body(status: StatusCode, body: &[u8]) -> ServerError {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let error = parsed.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| error.and_then(|e| e.get(name)).and_then(Value::as_str);
        match (field("code"), field("message")) {
            (Some(code), message) => ServerError {
                code: code.to_string(),
                message: message.unwrap_or_default().to_string(),
            },
            _ => {
                let text = String::from_utf8_lossy(body);
                let text: String = text.trim().chars().take(200).collect();
                let message = if text.is_empty() {
                    status.canonical_reason().unwrap_or("no explanation").to_string()
                } else {
                    text
                };
                ServerError { code: format!("http_{}", status.as_u16()), message }
            }
        }
    }
}

/// Parses and checks the `--server` URL (`http://host:port`, optionally
/// with a path prefix).
pub fn server_url(raw: &str) -> anyhow::Result<Url> {
    let url = Url::parse(raw)
        .with_context(|| format!("--server {raw:?} is not a URL (e.g. http://localhost:8080)"))?;
    match url.scheme() {
        "http" => Ok(url),
        "https" => bail!(
            "this build of tern-cli speaks plain http only; reach an https server through \
             a local proxy or port forward (--server http://…)"
        ),
        other => bail!("--server must be an http:// URL, not {other}://"),
    }
}

/// A client of one server's HTTP API, with the caller's access token.
pub struct Api {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// A client for the server at `base`; `token` is needed by every call
    /// except register and login.
    pub fn new(base: Url, token: Option<String>) -> anyhow::Result<Api> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("tern-cli/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("building the HTTP client")?;
        Ok(Api { base, token, http })
    }

    /// `POST /api/register` → `{user_id, username}`.
    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<Value> {
        let body = json!({ "username": username, "password": password });
        self.call(self.http.post(self.url(&["api", "register"])?).json(&body)).await
    }

    /// `POST /api/login` → `{token, user_id, username, refresh_token, expires_in}`.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<Value> {
        let body = json!({ "username": username, "password": password });
        self.call(self.http.post(self.url(&["api", "login"])?).json(&body)).await
    }

    /// `GET /api/conversations` → `{conversations: [...]}`, newest first.
    pub async fn conversations(&self, device: Option<&str>) -> anyhow::Result<Value> {
        let mut url = self.url(&["api", "conversations"])?;
        if let Some(device) = device {
            url.query_pairs_mut().append_pair("device", device);
        }
        self.call(self.authed(self.http.get(url))?).await
    }

    /// `GET /api/conversations/{id}/messages?after_seq=&limit=` →
    /// `{messages, acked_seq, latest_seq}`.
    pub async fn history(
        &self,
        conversation_id: &str,
        after_seq: u64,
        limit: u32,
    ) -> anyhow::Result<Value> {
        let mut url = self.url(&["api", "conversations", conversation_id, "messages"])?;
        url.query_pairs_mut()
            .append_pair("after_seq", &after_seq.to_string())
            .append_pair("limit", &limit.to_string());
        self.call(self.authed(self.http.get(url))?).await
    }

    /// Names of the caller's groups (`GET /api/groups`), by id.
    pub async fn group_names(&self) -> anyhow::Result<HashMap<u64, String>> {
        let answer = self.call(self.authed(self.http.get(self.url(&["api", "groups"])?))?).await?;
        let groups = answer.get("groups").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(groups
            .iter()
            .filter_map(|g| {
                let id = g.get("group_id")?.as_u64()?;
                let name = g.get("name")?.as_str()?;
                Some((id, name.to_string()))
            })
            .collect())
    }

    /// Usernames of `ids` (`GET /api/users?ids=`); unknown ids are left out.
    pub async fn usernames(&self, ids: &[u64]) -> anyhow::Result<HashMap<u64, String>> {
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut url = self.url(&["api", "users"])?;
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        url.query_pairs_mut().append_pair("ids", &list.join(","));
        let answer = self.call(self.authed(self.http.get(url))?).await?;
        let users = answer.get("users").and_then(Value::as_array).cloned().unwrap_or_default();
        Ok(users
            .iter()
            .filter_map(|u| {
                let id = u.get("user_id")?.as_u64()?;
                let name = u.get("username")?.as_str()?;
                Some((id, name.to_string()))
            })
            .collect())
    }

    /// An operator's call under `/api/admin/` with the admin token:
    /// `segments` after `admin`, an optional `?ids=` list and JSON body.
    pub async fn admin(
        &self,
        admin_token: &str,
        method: reqwest::Method,
        segments: &[&str],
        query: Option<(&str, String)>,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut path = vec!["api", "admin"];
        path.extend_from_slice(segments);
        let mut url = self.url(&path)?;
        if let Some((name, value)) = query {
            url.query_pairs_mut().append_pair(name, &value);
        }
        let request = self.http.request(method, url).bearer_auth(admin_token);
        self.call(match body {
            Some(body) => request.json(&body),
            None => request,
        })
        .await
    }

    /// `base` joined with `segments`, each escaped as one path segment.
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.set_query(None);
        url.path_segments_mut()
            .map_err(|()| anyhow::anyhow!("--server {} cannot take a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    fn authed(&self, request: RequestBuilder) -> anyhow::Result<RequestBuilder> {
        Ok(request.bearer_auth(require_token(self.token.as_deref())?))
    }

    /// Sends a request and reads its JSON answer; an error status becomes a
    /// [`ServerError`].
    async fn call(&self, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.map_err(|e| unreachable(&self.base, e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {}", self.base))?;
        if !status.is_success() {
            return Err(ServerError::from_body(status, &body).into());
        }
        serde_json::from_slice(&body).context("the server's answer is not JSON")
    }
}

/// The token, or an error that says how to get one.
pub fn require_token(token: Option<&str>) -> anyhow::Result<&str> {
    token.ok_or_else(|| {
        anyhow::anyhow!(
            "not logged in: set TERN_TOKEN (export TERN_TOKEN=$(tern-cli login <username>)) \
             or pass --token"
        )
    })
}

/// A request that never got an answer, told plainly.
fn unreachable(base: &Url, error: reqwest::Error) -> anyhow::Error {
    let what = if error.is_timeout() {
        "timed out talking to"
    } else if error.is_connect() {
        "cannot reach"
    } else {
        "request failed to"
    };
    anyhow::Error::new(error)
        .context(format!("{what} the Tern server at {base} (is it running? see --server)"))
}
