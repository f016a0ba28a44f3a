//! S7: attachments through the store. One user uploads `files` files of
//! `file_kib` KiB each, `file_parallel` at a time, the way the web app does
//! (start the upload, PUT the bytes to the URL it names, complete), then
//! the other member of the conversation downloads every one (ask for the
//! URL, GET it) and the bytes are compared. On the embedded default the
//! gateway carries the bytes to and from files under the data folder.

use super::{Checks, CpuMeter, Ctx, Outcome};
use crate::{client, users::User};
use futures::{SinkExt, StreamExt, stream};
use serde_json::{Value, json};
use std::time::Instant;
use tokio_tungstenite::tungstenite;

pub async fn run(ctx: &mut Ctx<'_>) -> anyhow::Result<Vec<Outcome>> {
    let s = ctx.scale;
    let (n, size) = (s.files, s.file_kib * 1024);
    let users = ctx.pool.get(ctx.topo, 2).await?;
    let (sender, receiver) = (users[0].clone(), users[1].clone());
    let base = ctx.topo.http_url(0);
    let conversation = format!("dm:{}:{}", sender.id.min(receiver.id), sender.id.max(receiver.id));
    let http = reqwest::Client::new();
    // A ZIP archive by its signature, then bytes no store could compress.
    let mut body: Vec<u8> =
        (0..size).map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8).collect();
    body[..4].copy_from_slice(b"PK\x03\x04");
    let mut checks = Checks { expected: 2 * n as u64, ..Default::default() };
    let mut outcomes = Vec::new();

    // The sender's socket: messages naming each file go out on it.
    let mut ws = client::connect(&ctx.topo.ws_url(0, &sender.token), None).await?;
    send(&mut ws, receiver.id, "hello", json!({ "text": "files follow" })).await?;

    let cpu = CpuMeter::start(ctx.topo);
    let t0 = Instant::now();
    let uploads: Vec<anyhow::Result<String>> = stream::iter(0..n)
        .map(|i| upload(&http, &base, &sender, &conversation, i, &body))
        .buffer_unordered(s.file_parallel)
        .collect()
        .await;
    let up_secs = t0.elapsed().as_secs_f64();
    let mut ids = Vec::new();
    for u in uploads {
        match u {
            Ok(id) => ids.push(id),
            Err(e) => {
                checks.errors += 1;
                eprintln!("s7 upload: {e:#}");
            }
        }
    }
    let mut o = Outcome::new("s7", ctx.topo, format!("upload {n} x {} KiB", s.file_kib));
    o.set("files_per_sec", ids.len() as f64 / up_secs);
    o.set("mib_per_sec", (ids.len() * size) as f64 / up_secs / 1048576.0);
    o.set("parallel", s.file_parallel as f64);
    cpu.finish(&mut o, "file", ids.len() as u64);
    checks.delivered += ids.len() as u64;
    outcomes.push(o);

    // A message names each file; then the receiver fetches them.
    for id in &ids {
        send(&mut ws, receiver.id, id, json!({ "attachment": { "id": id } })).await?;
    }
    let _ = ws.close(None).await;
    let cpu = CpuMeter::start(ctx.topo);
    let t0 = Instant::now();
    let downloads: Vec<anyhow::Result<bool>> = stream::iter(ids.iter())
        .map(|id| download(&http, &base, &receiver, id, &body))
        .buffer_unordered(s.file_parallel)
        .collect()
        .await;
    let down_secs = t0.elapsed().as_secs_f64();
    let mut good = 0;
    for d in downloads {
        match d {
            Ok(true) => good += 1,
            Ok(false) => checks.lost += 1,
            Err(e) => {
                checks.errors += 1;
                eprintln!("s7 download: {e:#}");
            }
        }
    }
    let mut o = Outcome::new("s7", ctx.topo, format!("download {n} x {} KiB", s.file_kib));
    o.set("files_per_sec", good as f64 / down_secs);
    o.set("mib_per_sec", (good * size) as f64 / down_secs / 1048576.0);
    o.set("parallel", s.file_parallel as f64);
    cpu.finish(&mut o, "file", good as u64);
    checks.delivered += good as u64;
    o.checks = checks;
    outcomes.push(o);
    Ok(outcomes)
}

/// An error unless `response` succeeded; its JSON body.
async fn json_ok(response: reqwest::Response) -> anyhow::Result<Value> {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{status}: {body}");
    Ok(body)
}

fn absolute(base: &str, url: &str) -> String {
    if url.starts_with('/') { format!("{base}{url}") } else { url.to_string() }
}

/// Create, PUT, complete: the attachment's id.
async fn upload(
    http: &reqwest::Client,
    base: &str,
    user: &User,
    conversation: &str,
    i: usize,
    body: &[u8],
) -> anyhow::Result<String> {
    let start = json!({ "conversation_id": conversation, "name": format!("file-{i}.zip"),
                        "size": body.len(), "content_type": "application/zip" });
    let created = json_ok(
        http.post(format!("{base}/api/attachments"))
            .bearer_auth(&user.token)
            .json(&start)
            .send()
            .await?,
    )
    .await?;
    let id = created["attachment_id"].as_str().unwrap_or_default().to_string();
    let url = absolute(base, created["upload_url"].as_str().unwrap_or_default());
    json_ok(
        http.put(url).header("content-type", "application/zip").body(body.to_vec()).send().await?,
    )
    .await?;
    json_ok(
        http.post(format!("{base}/api/attachments/{id}/complete"))
            .bearer_auth(&user.token)
            .send()
            .await?,
    )
    .await?;
    Ok(id)
}

/// Sends a 1:1 message and waits for its ack.
async fn send(ws: &mut client::Ws, to: u64, id: &str, content: Value) -> anyhow::Result<()> {
    let frame =
        json!({ "type": 1, "to": to, "client_msg_id": format!("s7-{id}"), "content": content });
    ws.send(tungstenite::Message::text(frame.to_string())).await?;
    while let Some(frame) = ws.next().await {
        if let tungstenite::Message::Text(text) = frame? {
            let frame: Value = serde_json::from_str(&text)?;
            match frame["type"].as_i64() {
                Some(client::ACK) => return Ok(()),
                Some(3) => anyhow::bail!("send refused: {frame}"),
                _ => {}
            }
        }
    }
    anyhow::bail!("socket closed before the send was acknowledged")
}

/// Fetches `id` as `receiver`: whether the bytes are the ones uploaded.
async fn download(
    http: &reqwest::Client,
    base: &str,
    receiver: &User,
    id: &str,
    body: &[u8],
) -> anyhow::Result<bool> {
    let got = json_ok(
        http.get(format!("{base}/api/attachments/{id}"))
            .bearer_auth(&receiver.token)
            .send()
            .await?,
    )
    .await?;
    let url = absolute(base, got["download_url"].as_str().unwrap_or_default());
    let response = http.get(url).send().await?;
    anyhow::ensure!(response.status().is_success(), "download: {}", response.status());
    Ok(response.bytes().await?.as_ref() == body)
}
