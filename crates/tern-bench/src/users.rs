//! Benchmark accounts: registered and logged in over the HTTP API (the
//! relay takes any number as a token), kept for every scenario of a run.
//! Scenarios leave users clean: whatever they receive, they acknowledge.

use crate::topology::{Kind, Topology};
use futures::StreamExt;
use indicatif::ProgressBar;
use tern_testkit::api::Api;

pub use tern_testkit::api::User;

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
        let api = Api::with_client(topo.http_url(i), self.http.clone());
        api.register(&format!("b{}u{i}", self.tag)).await
    }

    /// Creates a group owned by `owner` with `members`; returns its id.
    pub async fn group(
        &self,
        topo: &Topology,
        owner: &User,
        members: &[User],
    ) -> anyhow::Result<u64> {
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Api::with_client(topo.http_url(0), self.http.clone()).group(owner, "bench", &ids).await
    }
}
