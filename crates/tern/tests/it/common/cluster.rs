//! The distributed topology as separate processes on loopback: the four
//! services and several gateways, on MariaDB and the local Redis (in a
//! namespace of its own, so runs never see each other). The kit's
//! [`Distributed`] (its processes, ports and services by name) is there
//! through `Deref`; this adds helpers that panic.

use super::{Client, User, WAIT};
use serde_json::Value;
use std::ops::{Deref, DerefMut};
use tern_testkit::{
    client::{self, ws_url},
    topology::{Database, Distributed, Options},
};

/// A running cluster.
pub struct Cluster {
    topology: Distributed,
}

impl Deref for Cluster {
    type Target = Distributed;

    fn deref(&self) -> &Distributed {
        &self.topology
    }
}

impl DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut Distributed {
        &mut self.topology
    }
}

impl Cluster {
    /// Starts the four services and `gateways` gateway nodes.
    pub async fn start(gateways: usize) -> Cluster {
        Self::start_with(gateways, &[]).await
    }

    /// Like [`Cluster::start`], with extra variables for every process.
    /// gw-1 (and every odd-numbered node) checks tokens itself with the
    /// auth service's key; the others ask the auth service, so both ways
    /// run in every cluster test.
    pub async fn start_with(gateways: usize, extra: &[(&str, &str)]) -> Cluster {
        let options = Options {
            database: Database::Mariadb,
            gateways,
            all_gateways_check_tokens: false,
            drain_secs: 2,
            ready_within: WAIT * 3,
            ..Options::default()
        }
        .with_env(extra);
        Cluster { topology: Distributed::start(&options).await.expect("cluster starts") }
    }

    /// The URL of `path` on gateway `gateway`.
    pub fn url(&self, gateway: usize, path: &str) -> String {
        self.api(gateway).url(path)
    }

    /// `POST` JSON to gateway `gateway`; the status and the JSON answer.
    pub async fn post(
        &self,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        self.api(gateway).post(path, token, &body).await.unwrap()
    }

    /// `GET` with a bearer token.
    pub async fn get_as(&self, gateway: usize, path: &str, token: &str) -> (u16, Value) {
        self.api(gateway).get(path, Some(token)).await.unwrap()
    }

    /// `GET` without a token.
    pub async fn get(&self, gateway: usize, path: &str) -> (u16, Value) {
        self.api(gateway).get(path, None).await.unwrap()
    }

    /// Registers through gateway 0 and logs in.
    pub async fn user(&self, name: &str) -> User {
        self.api(0).register(name).await.unwrap()
    }

    /// Logs a registered user in through gateway `i`.
    pub async fn user_login(&self, i: usize, name: &str) -> User {
        self.api(i).login(name).await.unwrap()
    }

    /// A WebSocket session on gateway `i`, proven up by a heartbeat (so its
    /// presence is recorded before the caller goes on). For users with no
    /// backlog: the heartbeat answer must be the first frame.
    pub async fn connect(&self, i: usize, user: &User) -> Client {
        let mut c = self.connect_raw(i, user).await;
        futures::SinkExt::send(&mut c.ws, client::heartbeat()).await.unwrap();
        assert_eq!(c.recv().await["type"], client::HEARTBEAT);
        c
    }

    /// A WebSocket session on gateway `i`, as it comes (backlog first).
    pub async fn connect_raw(&self, i: usize, user: &User) -> Client {
        Client::connect(&self.ws_url(i, &user.token)).await
    }

    /// A session of `user` as `device` on gateway `i`, registered (its
    /// backlog, if any, skipped).
    pub async fn connect_device(&self, i: usize, user: &User, device: &str) -> Client {
        self.connect_device_raw(i, user, device).await.registered().await
    }

    /// A session of `user` as `device` on gateway `i`, as it comes.
    pub async fn connect_device_raw(&self, i: usize, user: &User, device: &str) -> Client {
        Client::connect(&ws_url(self.gateway_ports[i], &user.token, Some(device))).await
    }

    /// Bus events gateway `i` has received.
    pub async fn bus_events(&self, i: usize) -> u64 {
        self.get(i, "/stats").await.1["bus_events"].as_u64().unwrap()
    }
}
