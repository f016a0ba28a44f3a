//! The Redis adapters against a real Redis (`TERN_TEST_REDIS_URL`, default
//! the local one).

use std::time::Duration;
use tern_bus::{Bus, BusEvent, Event, Kick, Names, Presence, RedisBus, RedisPresence, SessionAt};

fn url() -> String {
    std::env::var("TERN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A fresh namespace, so tests running at once never see each other.
fn names() -> Names {
    Names::new(format!("test-{}:", uuid::Uuid::now_v7()))
}

fn kick(user: u64) -> BusEvent {
    BusEvent {
        event: Some(Event::Kick(Kick {
            user_id: user,
            keep_session_id: "s".into(),
            reason: "r".into(),
            ..Default::default()
        })),
    }
}

#[tokio::test]
async fn presence_routes_to_live_nodes_only() {
    let (_, conn) = tern_bus::connect_redis(&url()).await.unwrap();
    let prefix = format!("test-{}:", uuid::Uuid::now_v7());
    let p = RedisPresence::new(conn.clone(), Names::new(prefix.clone()));
    p.ping().await.unwrap();
    p.keep_node_alive("a").await.unwrap();
    p.keep_node_alive("b").await.unwrap();
    let at = |node: &str, session: &str| SessionAt { node: node.into(), session: session.into() };
    assert!(p.connect(1, "a", "s1", "").await.unwrap().is_empty());
    p.connect(2, "b", "s2", "").await.unwrap();
    assert_eq!(
        p.connect(1, "b", "s3", "").await.unwrap(),
        vec![at("a", "s1")],
        "the other session"
    );
    // Two sessions on one node: both listed, oldest first; the node once.
    assert_eq!(p.connect(1, "b", "s4", "").await.unwrap(), vec![at("a", "s1"), at("b", "s3")]);
    let mut located = p.locate(&[1, 2, 3]).await.unwrap();
    located.values_mut().for_each(|users| users.sort());
    assert_eq!(located["a"], vec![1]);
    assert_eq!(located["b"], vec![1, 2]);
    assert_eq!(located.len(), 2, "user 3 is offline");

    // One of two sessions on b ends: the user is still at b.
    p.disconnect(1, "b", "s3", "", false).await.unwrap();
    assert_eq!(p.locate(&[1]).await.unwrap()["b"], vec![1]);

    // A node that is gone (or stopped renewing) gets no routes, even though
    // its users' entries have not expired yet.
    p.node_gone("a").await.unwrap();
    let located = p.locate(&[1, 2]).await.unwrap();
    assert!(!located.contains_key("a"), "{located:?}");
    // A node that never announced itself is not routed to either.
    p.connect(4, "never-alive", "s5", "").await.unwrap();
    assert!(p.locate(&[4]).await.unwrap().is_empty());

    p.disconnect(2, "b", "s2", "", true).await.unwrap();
    assert_eq!(p.locate(&[2]).await.unwrap().len(), 0);
    p.refresh(1, "b").await.unwrap();
    assert_eq!(p.locate(&[1]).await.unwrap()["b"], vec![1]);
    // A session whose node no longer holds the user does not count.
    p.disconnect(1, "a", "s1", "", true).await.unwrap();
    p.connect(1, "a", "s6", "").await.unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(format!("{prefix}online:1"))
        .arg("a")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    assert_eq!(p.connect(1, "b", "s7", "").await.unwrap(), vec![at("b", "s4")]);
}

#[tokio::test]
async fn a_senders_other_devices_are_located_with_the_recipients() {
    let (_, conn) = tern_bus::connect_redis(&url()).await.unwrap();
    let p = RedisPresence::new(conn, names());
    for node in ["a", "b", "c"] {
        p.keep_node_alive(node).await.unwrap();
    }
    // User 1: the phone on a, the laptop on b. User 2: one device on c,
    // two sessions of it (two tabs without a device id).
    p.connect(1, "a", "s1", "phone").await.unwrap();
    p.connect(1, "b", "s2", "laptop").await.unwrap();
    p.connect(2, "c", "s3", "").await.unwrap();
    p.connect(2, "c", "s4", "").await.unwrap();
    let located = p
        .locate_with_senders(&[2], &[(1, "phone"), (1, "laptop"), (2, ""), (9, "")])
        .await
        .unwrap();
    assert_eq!(located.by_node["c"], vec![2]);
    assert_eq!(located.by_node.len(), 1, "senders are not recipients: {located:?}");
    assert_eq!(located.other_devices[&(1, "phone".into())], vec!["b"]);
    assert_eq!(located.other_devices[&(1, "laptop".into())], vec!["a"]);
    assert!(!located.other_devices.contains_key(&(2, "".into())), "one device: {located:?}");
    assert!(!located.other_devices.contains_key(&(9, "".into())), "offline: {located:?}");

    // The laptop leaves; a node that died takes its devices with it.
    p.disconnect(1, "b", "s2", "laptop", true).await.unwrap();
    p.connect(1, "c", "s5", "tablet").await.unwrap();
    p.node_gone("c").await.unwrap();
    let located = p.locate_with_senders(&[], &[(1, "phone")]).await.unwrap();
    assert!(located.other_devices.is_empty(), "{located:?}");
    assert!(located.by_node.is_empty());
}

#[tokio::test]
async fn bus_delivers_to_the_node_channel_and_resyncs_after_a_lost_connection() {
    let (client, conn) = tern_bus::connect_redis(&url()).await.unwrap();
    let names = names();
    let bus = RedisBus::new(client, conn.clone(), names.clone());
    let (to_a, mut a) = tern_bus::channel_handler();
    let (to_b, mut b) = tern_bus::channel_handler();
    let _a = bus.subscribe("a", to_a).await.unwrap();
    let _b = bus.subscribe("b", to_b).await.unwrap();
    bus.publish("a", kick(7)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), a.recv()).await.unwrap().unwrap();
    assert_eq!(got, kick(7));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), b.recv()).await.is_err(),
        "b got a's event"
    );

    // Cut every Pub/Sub connection, as a Redis restart would.
    let mut admin = conn.clone();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    let resync = tokio::time::timeout(Duration::from_secs(10), a.recv()).await.unwrap().unwrap();
    assert!(matches!(resync.event, Some(Event::Resync(_))), "{resync:?}");
    // And the subscription works again.
    bus.publish("a", kick(8)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), a.recv()).await.unwrap().unwrap();
    assert_eq!(got, kick(8));
}
