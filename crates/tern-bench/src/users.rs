//! Benchmark accounts: registered and logged in over the HTTP API (the
//! relay takes any number as a token), kept for every scenario of a run.
//! Scenarios leave users clean: whatever they receive, they acknowledge.

use crate::topology::{Kind, Topology};
use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::{Value, json};

/// One account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: u64,
    pub token: String,
}

/// Every account made in this run for one topology.
pub struct Pool {
    http: reqwest::Client,
    tag: String,
    users: Vec<User>,
}

impl Pool {
    pub fn new() -> Pool {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        Pool { http: reqwest::Client::new(), tag: tag[tag.len() - 8..].to_string(), users: vec![] }
    }

    /// The first `n` users, registering the missing ones.
    pub async fn get(&mut self, topo: &Topology, n: usize) -> anyhow::Result<Vec<User>> {
        if self.users.len() < n {
            let from = self.users.len();
            let bar = crate::bar(format!("{} users", topo.kind.name()), (n - from) as u64);
            let made: Vec<anyhow::Result<User>> = futures::stream::iter(from..n)
                .map(|i| self.make(topo, i, &bar))
                .buffered(32)
                .collect()
                .await;
            bar.finish_and_clear();
            for u in made {
                self.users.push(u?);
            }
        }
        Ok(self.users[..n].to_vec())
    }

    async fn make(&self, topo: &Topology, i: usize, bar: &ProgressBar) -> anyhow::Result<User> {
        bar.inc(1);
        if topo.kind == Kind::Relay {
            let id = i as u64 + 1;
            return Ok(User { id, token: id.to_string() });
        }
        let base = topo.http_url(i);
        let creds =
            json!({ "username": format!("b{}u{i}", self.tag), "password": "bench-password" });
        let (status, body) = self.post(&format!("{base}/api/register"), None, &creds).await?;
        if status != 201 {
            bail!("register answered {status}: {body}");
        }
        let (status, body) = self.post(&format!("{base}/api/login"), None, &creds).await?;
        if status != 200 {
            bail!("login answered {status}: {body}");
        }
        Ok(User {
            id: body["user_id"].as_u64().context("user_id")?,
            token: body["token"].as_str().context("token")?.to_string(),
        })
    }

    async fn post(
        &self,
        url: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.post(url).json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await?;
        Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
    }

    /// Creates a group owned by `owner` with `members`; returns its id.
    pub async fn group(
        &self,
        topo: &Topology,
        owner: &User,
        members: &[User],
    ) -> anyhow::Result<u64> {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        let url = format!("{}/api/groups", topo.http_url(0));
        let body = json!({ "name": "bench", "member_ids": ids });
        let (status, body) = self.post(&url, Some(&owner.token), &body).await?;
        if status != 201 {
            bail!("group creation answered {status}: {body}");
        }
        body["group_id"].as_u64().context("group_id")
    }
}
