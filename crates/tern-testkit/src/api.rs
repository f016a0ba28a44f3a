//! The HTTP API of one front process (the embedded `tern` or a gateway),
//! as a user calls it: JSON in, status and JSON out, with a bearer token
//! where one is given.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A registered user: its id and an access token.
#[derive(Clone, Debug)]
pub struct User {
    /// The user id.
    pub id: u64,
    /// A token from `/api/login`.
    pub token: String,
}

/// The password every account made through [`Api::register`] gets.
pub const PASSWORD: &str = "correct horse";

/// The HTTP API at one base URL (`http://127.0.0.1:PORT`).
#[derive(Clone, Debug)]
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// The API at `base`, on a client of its own.
    pub fn new(base: String) -> Api {
        Api::with_client(base, reqwest::Client::new())
    }

    /// The API at `base`, on a shared client.
    pub fn with_client(base: String, http: reqwest::Client) -> Api {
        Api { base, http }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The underlying HTTP client, for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `POST`s `body` as JSON; the status and the JSON answer (null when
    /// the answer is not JSON).
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        call(self.http.post(self.url(path)).json(body), token).await
    }

    /// `GET`s `path`; the status and the JSON answer.
    pub async fn get(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        call(self.http.get(self.url(path)), token).await
    }

    /// `DELETE`s `path`; the status and the JSON answer.
    pub async fn delete(&self, path: &str, token: Option<&str>) -> anyhow::Result<(u16, Value)> {
        call(self.http.delete(self.url(path)), token).await
    }

    /// Registers `name` with [`PASSWORD`] and logs it in.
    pub async fn register(&self, name: &str) -> anyhow::Result<User> {
        let creds = json!({ "username": name, "password": PASSWORD });
        let (status, body) = self.post("/api/register", None, &creds).await?;
        if status != 201 {
            bail!("register answered {status}: {body}");
        }
        self.login(name).await
    }

    /// Logs a registered user in.
    pub async fn login(&self, name: &str) -> anyhow::Result<User> {
        let creds = json!({ "username": name, "password": PASSWORD });
        let (status, body) = self.post("/api/login", None, &creds).await?;
        if status != 200 {
            bail!("login answered {status}: {body}");
        }
        Ok(User {
            id: body["user_id"].as_u64().context("user_id")?,
            token: body["token"].as_str().context("token")?.to_string(),
        })
    }

    /// Creates a group `name` owned by `owner` with `members`; its id.
    pub async fn group(&self, owner: &User, name: &str, members: &[u64]) -> anyhow::Result<u64> {
        let body = json!({ "name": name, "member_ids": members });
        let (status, body) = self.post("/api/groups", Some(&owner.token), &body).await?;
        if status != 201 {
            bail!("group creation answered {status}: {body}");
        }
        body["group_id"].as_u64().context("group_id")
    }
}

async fn call(
    mut req: reqwest::RequestBuilder,
    token: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}
