//! `tern-cli`: a command-line client of a Tern server, for people and
//! scripts. Accounts, conversations and history go over the HTTP API;
//! sending and following go over the WebSocket protocol v1
//! (docs/protocol.md).

mod http;
mod output;
mod ws;

use anyhow::{Context, bail};
use clap::{ArgGroup, Parser, Subcommand};
use http::{Api, require_token};
use output::{Mode, Output};
use serde_json::{Value, json};
use std::{io::BufRead, process::ExitCode};

/// The server used when neither `--server` nor `TERN_SERVER` names one.
const DEFAULT_SERVER: &str = "http://localhost:8080";

/// Command-line client for the Tern messaging server.
#[derive(Parser, Debug)]
#[command(
    name = "tern-cli",
    version,
    about = "Command-line client for the Tern messaging server",
    long_about = "Command-line client for the Tern messaging server: create an account, log in, \
send messages, follow what arrives, list conversations and read history.\n\n\
Log in once and keep the token in the environment:\n\n    \
export TERN_PASSWORD='correct horse battery staple'\n    \
export TERN_TOKEN=$(tern-cli login alice)\n\n\
Errors go to stderr as `error: <code>: <message>` with exit status 1.",
    after_help = "Environment: TERN_SERVER, TERN_TOKEN, TERN_DEVICE, TERN_PASSWORD, \
TERN_ADMIN_TOKEN (see each option and `admin --help`)."
)]
struct Cli {
    /// Base URL of the server [env: TERN_SERVER] [default: http://localhost:8080]
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,

    /// Access token from `login` [env: TERN_TOKEN]. Prefer the environment
    /// variable: arguments are visible to other users of the machine.
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,

    /// Print machine-readable output: one JSON value per result, one per
    /// line for streams (`follow`).
    #[arg(long, global = true)]
    json: bool,

    /// Device id to connect as (letters, digits, `-`, `_`; at most 64)
    /// [env: TERN_DEVICE]. Each device has its own delivery position;
    /// without one, every session shares the user's default device.
    #[arg(long, global = true, value_name = "ID")]
    device: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create an account, then log in and print the access token.
    ///
    /// The password is read from the first line of stdin with
    /// --password-stdin, else from the TERN_PASSWORD environment variable;
    /// never from an argument. Passwords are 8-72 bytes; usernames 1-32
    /// letters, digits, `_`, `-` or `.`. With --json, prints the login
    /// answer ({token, user_id, username, refresh_token, expires_in}).
    Register {
        /// The new account's username.
        username: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },

    /// Log in and print the access token.
    ///
    /// Plain output is the token alone, so `export TERN_TOKEN=$(tern-cli
    /// login alice)` works. The password is read from the first line of
    /// stdin with --password-stdin, else from TERN_PASSWORD. With --json,
    /// prints the server's answer ({token, user_id, username,
    /// refresh_token, expires_in}).
    Login {
        /// The account's username.
        username: String,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },

    /// Send a text message to a user or a group, and wait until the server
    /// has stored it.
    ///
    /// Prints the stored message's conversation, seq and message_id (with
    /// --json, the server's send ack frame). A refusal (unknown user, not a
    /// member, rate limited, ...) is printed to stderr with exit status 1.
    Send(Outgoing),

    /// List your conversations, most recent first, with unread counts.
    Conversations,

    /// Print messages as they arrive, until Ctrl-C.
    ///
    /// Messages not yet received by this device come first, then new ones
    /// live. Each message is acknowledged once printed, so it is not sent
    /// to this device again. Plain lines read `[conversation #seq] sender:
    /// text`; with --json, each delivered frame is printed on its own line.
    /// Status lines go to stderr.
    Follow {
        /// Only show this conversation (e.g. `dm:1:2` or `group:7`); other
        /// messages are left unacknowledged for later.
        #[arg(long, value_name = "ID")]
        conversation: Option<String>,
    },

    /// Print a conversation's messages, oldest first.
    ///
    /// By default the latest --limit messages; with --after-seq, the
    /// messages after that seq. With --json, the server's answer
    /// ({messages, acked_seq, latest_seq}).
    History {
        /// The conversation (`dm:<low id>:<high id>` or `group:<id>`, as
        /// listed by `conversations`).
        conversation_id: String,
        /// How many messages at most (1-1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Start after this seq instead of showing the latest messages.
        #[arg(long, value_name = "SEQ")]
        after_seq: Option<u64>,
    },

    /// Operators' commands: bans, revocations, system messages, recalls.
    ///
    /// They need the server's admin token (TERN__GATEWAY__ADMIN_TOKEN on
    /// the server), read from the TERN_ADMIN_TOKEN environment variable;
    /// a user's access token is never accepted.
    Admin {
        #[command(subcommand)]
        action: AdminCommand,
    },
}

/// A message to send: its recipient and text.
#[derive(clap::Args, Debug)]
#[command(group(ArgGroup::new("recipient").required(true).args(["to", "group"])))]
struct Outgoing {
    /// The recipient's user id.
    #[arg(long, value_name = "USER_ID")]
    to: Option<u64>,
    /// The group's id.
    #[arg(long, value_name = "GROUP_ID")]
    group: Option<u64>,
    /// The message text; `-` reads it from stdin.
    text: String,
    /// Idempotency key: a retried send with the same id is stored once.
    /// A fresh one is made when omitted.
    #[arg(long, value_name = "ID")]
    client_msg_id: Option<String>,
}

#[derive(Subcommand, Debug)]
enum AdminCommand {
    /// Ban a user: their sessions are closed on every node, their tokens
    /// stop working, and login is refused until `unban`.
    Ban { user_id: u64 },
    /// Lift a user's ban.
    Unban { user_id: u64 },
    /// End every login of a user (as a logout on every device); they may
    /// log in again.
    Revoke { user_id: u64 },
    /// Which of these users are online, and on which gateway nodes.
    Online {
        /// User ids (at most 1,000).
        #[arg(required = true, num_args = 1..)]
        user_ids: Vec<u64>,
    },
    /// Send a system message (from user 0) to a user or a group.
    Message(Outgoing),
    /// Recall any message: its content is removed and every member is told.
    Recall {
        /// The conversation (`dm:<low>:<high>` or `group:<id>`).
        conversation_id: String,
        /// The message's seq.
        seq: u64,
    },
    /// List webhook events that failed every attempt and were parked.
    Parked,
    /// Send parked webhook events again (their attempts start over).
    Retry {
        /// Events as `parked` lists them: `<outbox>:<id>`, e.g. `message:42`.
        #[arg(required_unless_present = "all")]
        events: Vec<String>,
        /// Every parked event (at most 1,000 at a time).
        #[arg(long, conflicts_with = "events")]
        all: bool,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): not an error of ours.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Whether `error` is a write to a closed pipe.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// An option, else its environment variable (empty counts as unset).
fn option_or_env(option: Option<String>, var: &str) -> Option<String> {
    option.or_else(|| std::env::var(var).ok()).filter(|v| !v.is_empty())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let server = option_or_env(cli.server, "TERN_SERVER").unwrap_or_else(|| DEFAULT_SERVER.into());
    let server = http::server_url(&server)?;
    let token = option_or_env(cli.token, "TERN_TOKEN");
    let device = option_or_env(cli.device, "TERN_DEVICE");
    let mode = if cli.json { Mode::Json } else { Mode::Plain };
    let api = Api::new(server.clone(), token.clone())?;
    let mut out = Output::new(mode, Some(&api));
    let target = |token| ws::Target { server: &server, token, device: device.as_deref() };

    match cli.command {
        Command::Register { username, password_stdin } => {
            let password = password(password_stdin)?;
            api.register(&username, &password).await?;
            let login = api.login(&username, &password).await?;
            print_login(&out, &login)?;
        }
        Command::Login { username, password_stdin } => {
            let password = password(password_stdin)?;
            let login = api.login(&username, &password).await?;
            print_login(&out, &login)?;
        }
        Command::Send(Outgoing { to, group, text, client_msg_id }) => {
            let token = require_token(token.as_deref())?;
            let text = if text == "-" { read_stdin()? } else { text };
            let client_msg_id =
                client_msg_id.unwrap_or_else(|| format!("cli-{}", uuid::Uuid::now_v7()));
            let content = json!({ "text": text });
            let frame = match (to, group) {
                (Some(to), _) => {
                    json!({ "type": 1, "to": to, "content": content, "client_msg_id": client_msg_id })
                }
                (None, Some(group)) => json!({
                    "type": 2, "group_id": group, "content": content, "client_msg_id": client_msg_id
                }),
                (None, None) => bail!("give --to <USER_ID> or --group <GROUP_ID>"),
            };
            let ack = ws::send(&target(token), frame).await?;
            match mode {
                Mode::Json => out.json(&ack)?,
                Mode::Plain => {
                    let field = |name: &str| ack.get(name).cloned().unwrap_or(Value::Null);
                    let text = |v: Value| match v {
                        Value::String(s) => output::clean(&s),
                        other => other.to_string(),
                    };
                    let duplicate = if field("duplicate") == Value::Bool(true) {
                        " (already sent earlier with this --client-msg-id)"
                    } else {
                        ""
                    };
                    out.line(&format!(
                        "sent to {} as #{} (message_id {}){duplicate}",
                        text(field("conversation_id")),
                        text(field("seq")),
                        text(field("message_id")),
                    ))?;
                }
            }
        }
        Command::Conversations => {
            let list = api.conversations(device.as_deref()).await?;
            out.conversations(&list).await?;
        }
        Command::Follow { conversation } => {
            let token = require_token(token.as_deref())?;
            let options = ws::Follow { conversation: conversation.as_deref() };
            ws::follow(&target(token), &options, &mut out).await?;
        }
        Command::History { conversation_id, limit, after_seq } => {
            let after_seq = match after_seq {
                Some(seq) => seq,
                // The latest `limit`: learn the latest seq first.
                None => {
                    let probe = api.history(&conversation_id, 0, 1).await?;
                    let latest = probe.get("latest_seq").and_then(Value::as_u64).unwrap_or(0);
                    latest.saturating_sub(u64::from(limit))
                }
            };
            let page = api.history(&conversation_id, after_seq, limit).await?;
            out.history(&page).await?;
        }
        Command::Admin { action } => admin(&api, &out, action).await?,
    }
    Ok(())
}

/// Runs an operator's command with the admin token from `TERN_ADMIN_TOKEN`.
async fn admin(api: &Api, out: &Output<'_>, action: AdminCommand) -> anyhow::Result<()> {
    use reqwest::Method;
    let token = option_or_env(None, "TERN_ADMIN_TOKEN")
        .context("no admin token: set TERN_ADMIN_TOKEN to the server's admin token")?;
    let on_user = |id: u64, act: &str| vec!["users".to_string(), id.to_string(), act.to_string()];
    let webhooks = |act: &str| vec!["webhooks".to_string(), act.to_string()];
    // The request: method, path under /api/admin/, query and body.
    let (method, path, ids, body) = match &action {
        AdminCommand::Ban { user_id } => (Method::POST, on_user(*user_id, "ban"), None, None),
        AdminCommand::Unban { user_id } => (Method::DELETE, on_user(*user_id, "ban"), None, None),
        AdminCommand::Revoke { user_id } => (Method::POST, on_user(*user_id, "revoke"), None, None),
        AdminCommand::Online { user_ids } => {
            let ids: Vec<String> = user_ids.iter().map(u64::to_string).collect();
            (Method::GET, vec!["online".to_string()], Some(("ids", ids.join(","))), None)
        }
        AdminCommand::Message(Outgoing { to, group, text, client_msg_id }) => {
            let text = if text == "-" { read_stdin()? } else { text.clone() };
            let mut body = json!({ "content": { "text": text } });
            match (to, group) {
                (Some(to), _) => body["to"] = json!(to),
                (None, Some(group)) => body["group_id"] = json!(group),
                (None, None) => bail!("give --to <USER_ID> or --group <GROUP_ID>"),
            }
            if let Some(id) = client_msg_id {
                body["client_msg_id"] = json!(id);
            }
            (Method::POST, vec!["messages".to_string()], None, Some(body))
        }
        AdminCommand::Recall { conversation_id, seq } => {
            let path = ["conversations", conversation_id, "messages", &seq.to_string(), "recall"];
            (Method::POST, path.map(str::to_string).to_vec(), None, None)
        }
        AdminCommand::Parked => {
            (Method::GET, webhooks("parked"), Some(("limit", "1000".to_string())), None)
        }
        AdminCommand::Retry { events, all } => {
            let refs = match all {
                true => {
                    let limit = Some(("limit", "1000".to_string()));
                    let listed =
                        api.admin(&token, Method::GET, &["webhooks", "parked"], limit, None);
                    let listed = listed.await?;
                    let events = listed["events"].as_array().cloned().unwrap_or_default();
                    events.iter().map(|e| json!({ "outbox": e["outbox"], "id": e["id"] })).collect()
                }
                false => {
                    events.iter().map(|e| parse_ref(e)).collect::<anyhow::Result<Vec<Value>>>()?
                }
            };
            (Method::POST, webhooks("retry"), None, Some(json!({ "events": refs })))
        }
    };
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let answer = api.admin(&token, method, &path, ids, body).await?;
    if out.mode == Mode::Json {
        return Ok(out.json(&answer)?);
    }
    let summary = match action {
        AdminCommand::Ban { user_id } => format!("user {user_id} banned"),
        AdminCommand::Unban { user_id } => format!("user {user_id} unbanned"),
        AdminCommand::Revoke { user_id } => format!("every login of user {user_id} ended"),
        AdminCommand::Online { .. } => {
            let online =
                answer.get("online").and_then(Value::as_array).cloned().unwrap_or_default();
            let lines: Vec<String> = online
                .iter()
                .map(|o| {
                    let nodes: Vec<&str> = o["nodes"]
                        .as_array()
                        .map(|n| n.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    format!("user {} online on {}", o["user_id"], output::clean(&nodes.join(", ")))
                })
                .collect();
            if lines.is_empty() { "none of them is online".into() } else { lines.join("\n") }
        }
        AdminCommand::Message(_) => format!(
            "sent to {} as #{}",
            output::clean(answer["conversation_id"].as_str().unwrap_or_default()),
            answer["seq"]
        ),
        AdminCommand::Recall { conversation_id, seq } => {
            format!("{} #{seq} recalled", output::clean(&conversation_id))
        }
        AdminCommand::Parked => {
            let events =
                answer.get("events").and_then(Value::as_array).cloned().unwrap_or_default();
            let lines: Vec<String> = events
                .iter()
                .map(|e| {
                    let text = |key: &str| output::clean(e[key].as_str().unwrap_or_default());
                    format!(
                        "{}:{} {} to {} after {} attempts: {} (event {})",
                        text("outbox"),
                        e["id"],
                        text("event_type"),
                        text("endpoint"),
                        e["attempts"],
                        text("last_error"),
                        text("event_id"),
                    )
                })
                .collect();
            if lines.is_empty() { "no parked events".into() } else { lines.join("\n") }
        }
        AdminCommand::Retry { .. } => format!("events due again: {}", answer["retried"]),
    };
    Ok(out.line(&summary)?)
}

/// A parked event named as `parked` prints it: `<outbox>:<id>`.
fn parse_ref(text: &str) -> anyhow::Result<Value> {
    let (outbox, id) = text
        .split_once(':')
        .and_then(|(outbox, id)| Some((outbox, id.parse::<i64>().ok()?)))
        .with_context(|| format!("{text:?} is not <outbox>:<id>, e.g. message:42"))?;
    Ok(json!({ "outbox": outbox, "id": id }))
}

/// Prints a login answer: the token alone, or the whole answer as JSON.
fn print_login(out: &Output<'_>, login: &Value) -> anyhow::Result<()> {
    match out.mode {
        Mode::Json => out.json(login)?,
        Mode::Plain => {
            let token = login
                .get("token")
                .and_then(Value::as_str)
                .context("the server's login answer has no token")?;
            out.line(token)?;
        }
    }
    Ok(())
}

/// The password: the first line of stdin, or `TERN_PASSWORD`.
fn password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from stdin")?;
        let password = line.trim_end_matches(['\n', '\r']).to_string();
        if password.is_empty() {
            bail!("--password-stdin: stdin gave no password (send it as the first line)");
        }
        return Ok(password);
    }
    match std::env::var("TERN_PASSWORD") {
        Ok(p) if !p.is_empty() => Ok(p),
        _ => {
            bail!("no password: pass --password-stdin and write it to stdin, or set TERN_PASSWORD")
        }
    }
}

/// All of stdin, without its final newline (for `send ... -`).
fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut text)
        .context("reading the message from stdin")?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    let text = text.strip_suffix('\r').unwrap_or(text);
    if text.is_empty() {
        bail!("the message read from stdin is empty");
    }
    Ok(text.to_string())
}
