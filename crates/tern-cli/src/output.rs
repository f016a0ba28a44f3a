//! What the commands print: in plain mode lines and tables for people, in
//! `--json` mode one compact JSON value per line for scripts. Everything
//! goes to stdout and is flushed at once, so a pipe sees each line as it
//! comes.

use crate::http::Api;
use serde_json::Value;
use std::{
    collections::HashMap,
    io::{self, Write},
};

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Lines and tables for people.
    Plain,
    /// One JSON value per line.
    Json,
}

/// The printer of one run, with a cache of usernames for plain mode.
pub struct Output<'a> {
    /// Plain or JSON.
    pub mode: Mode,
    /// Where usernames are looked up (plain mode only).
    api: Option<&'a Api>,
    names: HashMap<u64, String>,
}

impl<'a> Output<'a> {
    /// A printer; with `api`, plain mode shows usernames instead of ids.
    pub fn new(mode: Mode, api: Option<&'a Api>) -> Output<'a> {
        Output { mode, api, names: HashMap::new() }
    }

    /// Prints one line (plain text, or a value in JSON mode) and flushes.
    pub fn line(&self, text: &str) -> io::Result<()> {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()
    }

    /// Prints `value` as one compact JSON line.
    pub fn json(&self, value: &Value) -> io::Result<()> {
        self.line(&value.to_string())
    }

    /// Prints a delivered message (a type 1 or 2 frame): the frame itself
    /// in JSON mode, else `[conversation #seq] sender: text`.
    pub async fn message(&mut self, frame: &Value) -> anyhow::Result<()> {
        if self.mode == Mode::Json {
            return Ok(self.json(frame)?);
        }
        self.learn(&frame_users(frame)).await;
        Ok(self.line(&message_line(frame, &self.names))?)
    }

    /// Prints a page of history (`{messages: [...]}`).
    pub async fn history(&mut self, page: &Value) -> anyhow::Result<()> {
        if self.mode == Mode::Json {
            return Ok(self.json(page)?);
        }
        let messages = page.get("messages").and_then(Value::as_array).cloned().unwrap_or_default();
        if messages.is_empty() {
            eprintln!("no messages");
        }
        let ids: Vec<u64> = messages.iter().flat_map(frame_users).collect();
        self.learn(&ids).await;
        for frame in &messages {
            self.line(&message_line(frame, &self.names))?;
        }
        Ok(())
    }

    /// Prints the conversation list (`{conversations: [...]}`): the
    /// server's JSON, or an aligned table.
    pub async fn conversations(&mut self, list: &Value) -> anyhow::Result<()> {
        if self.mode == Mode::Json {
            return Ok(self.json(list)?);
        }
        let items =
            list.get("conversations").and_then(Value::as_array).cloned().unwrap_or_default();
        if items.is_empty() {
            eprintln!("no conversations yet");
            return Ok(());
        }
        let mut ids: Vec<u64> =
            items.iter().filter_map(|c| c.get("user_id").and_then(Value::as_u64)).collect();
        ids.extend(items.iter().filter_map(|c| c.get("last_message")).flat_map(frame_users));
        self.learn(&ids).await;
        // Group names, when there are groups (a failed lookup shows ids).
        let groups = match self.api {
            Some(api) if items.iter().any(|c| c.get("group_id").is_some()) => {
                api.group_names().await.unwrap_or_default()
            }
            _ => HashMap::new(),
        };
        let number = |c: &Value, field: &str| {
            c.get(field).and_then(Value::as_u64).map(|n| n.to_string()).unwrap_or_default()
        };
        let mut rows = vec![
            ["CONVERSATION", "WITH", "UNREAD", "LATEST", "LAST MESSAGE"].map(String::from).to_vec(),
        ];
        for c in &items {
            let with = match (
                c.get("user_id").and_then(Value::as_u64),
                c.get("group_id").and_then(Value::as_u64),
            ) {
                (Some(user), _) => self.name(user),
                (None, Some(group)) => match groups.get(&group) {
                    Some(name) => format!("{} (group {group})", clean(name)),
                    None => format!("group {group}"),
                },
                (None, None) => String::new(),
            };
            let last = c
                .get("last_message")
                .filter(|m| !m.is_null())
                .map(|m| {
                    let sender = sender(m, &self.names);
                    preview(&format!("{sender}: {}", body(m, &self.names)), 60)
                })
                .unwrap_or_default();
            rows.push(vec![
                clean(c.get("conversation_id").and_then(Value::as_str).unwrap_or_default()),
                with,
                number(c, "unread"),
                number(c, "latest_seq"),
                last,
            ]);
        }
        Ok(self.line(table(&rows).trim_end())?)
    }

    /// A user's name (or id when unknown).
    fn name(&self, id: u64) -> String {
        self.names.get(&id).map(|n| clean(n)).unwrap_or_else(|| format!("user {id}"))
    }

    /// Looks up the usernames of `ids` not known yet, in one call; a
    /// failed lookup just leaves ids shown as numbers.
    async fn learn(&mut self, ids: &[u64]) {
        let Some(api) = self.api else { return };
        let mut missing: Vec<u64> =
            ids.iter().copied().filter(|id| *id != 0 && !self.names.contains_key(id)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        if let Ok(found) = api.usernames(&missing).await {
            self.names.extend(found);
        }
        // Do not ask again for ids the server does not know.
        for id in missing {
            self.names.entry(id).or_insert_with(|| format!("user {id}"));
        }
    }
}

/// The users a frame names: its sender, and those of a membership change.
fn frame_users(frame: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = frame.get("from").and_then(Value::as_u64).into_iter().collect();
    if let Some(list) = frame.pointer("/content/user_ids").and_then(Value::as_array) {
        ids.extend(list.iter().filter_map(Value::as_u64));
    }
    if let Some(by) = frame.pointer("/content/by").and_then(Value::as_u64) {
        ids.push(by);
    }
    ids
}

/// `[conversation #seq] sender: text` for a delivery frame.
pub fn message_line(frame: &Value, names: &HashMap<u64, String>) -> String {
    let conversation = frame.get("conversation_id").and_then(Value::as_str).unwrap_or("?");
    let seq = frame.get("seq").and_then(Value::as_u64).unwrap_or(0);
    format!("[{} #{seq}] {}: {}", clean(conversation), sender(frame, names), body(frame, names))
}

/// Who sent a frame: a username, `user <id>`, or `system` for id 0.
fn sender(frame: &Value, names: &HashMap<u64, String>) -> String {
    match frame.get("from").and_then(Value::as_u64) {
        Some(0) => "system".to_string(),
        Some(id) => names.get(&id).map(|n| clean(n)).unwrap_or_else(|| format!("user {id}")),
        None => "?".to_string(),
    }
}

/// What a frame says, as text: the message's `text`, an edit, a recall or
/// a membership change; other content as compact JSON.
fn body(frame: &Value, names: &HashMap<u64, String>) -> String {
    let content = frame.get("content").unwrap_or(&Value::Null);
    let ref_seq = frame.get("ref_seq").and_then(Value::as_u64).unwrap_or(0);
    match frame.get("kind").and_then(Value::as_str) {
        Some("recall") => format!("(recalled #{ref_seq})"),
        Some("edit") => format!("(edited #{ref_seq}) {}", content_text(content)),
        Some("membership") => {
            let who = |id: &Value| {
                id.as_u64()
                    .map(|id| names.get(&id).map(|n| clean(n)).unwrap_or_else(|| id.to_string()))
                    .unwrap_or_default()
            };
            let change = content.get("change").and_then(Value::as_str).unwrap_or("changed");
            let users: Vec<String> = content
                .get("user_ids")
                .and_then(Value::as_array)
                .map(|l| l.iter().map(who).collect())
                .unwrap_or_default();
            // "(by …)" unless the change was the user's own (joined, left)
            // or a backend's (by 0).
            let by = match content.get("by") {
                Some(by)
                    if by.as_u64().is_some_and(|b| b != 0)
                        && content.get("user_ids").and_then(Value::as_array)
                            != Some(&vec![by.clone()]) =>
                {
                    format!(" (by {})", who(by))
                }
                _ => String::new(),
            };
            format!("{} {}{by}", users.join(", "), clean(change))
        }
        _ if frame.get("recalled_at").is_some() => "(recalled)".to_string(),
        _ => content_text(content),
    }
}

/// A message's content as text: `text`, plus an attachment's name.
fn content_text(content: &Value) -> String {
    let text = match content {
        Value::String(s) => Some(s.as_str()),
        _ => content.get("text").and_then(Value::as_str),
    };
    let attachment = content.pointer("/attachment/name").and_then(Value::as_str);
    match (text, attachment) {
        (Some(t), Some(a)) => format!("{} [attachment: {}]", clean(t), clean(a)),
        (Some(t), None) => clean(t),
        (None, Some(a)) => format!("[attachment: {}]", clean(a)),
        (None, None) => content.to_string(),
    }
}

/// `text` without control characters (which could drive the terminal):
/// newlines and tabs are kept, the rest shown escaped.
pub fn clean(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' | '\t' => c.to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// At most `max` characters of `text` on one line.
fn preview(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\t'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut short: String = one_line.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// Rows as left-aligned columns two spaces apart (widths in characters).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["A".to_string(), "BB".to_string(), "C".to_string()],
            vec!["long".to_string(), "x".to_string(), "y".to_string()],
        ];
        assert_eq!(table(&rows), "A     BB  C\nlong  x   y\n");
    }

    #[test]
    fn lines_show_text_names_and_events() {
        let names = HashMap::from([(1, "alice".to_string()), (2, "bob".to_string())]);
        let hello = json!({"type":1,"conversation_id":"dm:1:2","seq":3,"from":1,"to":2,"content":{"text":"hi\u{1b}[2J"}});
        assert_eq!(message_line(&hello, &names), "[dm:1:2 #3] alice: hi\\u{1b}[2J");
        let edit = json!({"type":1,"conversation_id":"dm:1:2","seq":4,"from":2,"kind":"edit","ref_seq":3,"content":{"text":"fixed"}});
        assert_eq!(message_line(&edit, &names), "[dm:1:2 #4] bob: (edited #3) fixed");
        let joined = json!({"type":2,"conversation_id":"group:7","seq":1,"from":0,"group_id":7,"kind":"membership","content":{"change":"added","user_ids":[2],"by":1}});
        assert_eq!(message_line(&joined, &names), "[group:7 #1] system: bob added (by alice)");
        let left = json!({"type":2,"conversation_id":"group:7","seq":2,"from":0,"group_id":7,"kind":"membership","content":{"change":"left","user_ids":[2],"by":2}});
        assert_eq!(message_line(&left, &names), "[group:7 #2] system: bob left");
        let other = json!({"type":1,"conversation_id":"dm:1:9","seq":1,"from":9,"content":{"n":1}});
        assert_eq!(message_line(&other, &names), r#"[dm:1:9 #1] user 9: {"n":1}"#);
    }
}
