//! Protocol v1 as the gateway speaks it (docs/protocol.md): the frame types,
//! parsing what clients send, writing what the server sends, and the close
//! codes. Only this module knows the JSON shapes.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tern_proto::{
    ErrorCode,
    pb::message::{Message, MessageKind, SendAck, message::Target},
};
use utoipa::ToSchema;

/// Frame type codes, kept from the original guide.
pub mod kind {
    pub const SINGLE: i64 = 1;
    pub const GROUP: i64 = 2;
    pub const ERROR: i64 = 3;
    pub const ACK: i64 = 30;
    pub const READ: i64 = 31;
    pub const TYPING: i64 = 40;
    pub const PRESENCE: i64 = 50;
    pub const RECALL: i64 = 60;
    pub const EDIT: i64 = 61;
    pub const HEARTBEAT: i64 = 99;
    pub const KICKED: i64 = 100;
}

/// Close codes the gateway uses (RFC 6455 §7.4 plus two of our own).
pub mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const INVALID_DATA: u16 = 1007;
    pub const TOO_BIG: u16 = 1009;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// Another session of the same user took over, or the token expired.
    pub const KICKED: u16 = 4001;
}

/// A client frame that parsed and carries what its type needs.
#[derive(Debug, PartialEq)]
pub enum ClientFrame {
    /// Type 1 or 2: send a message.
    Send { target: SendTarget, content: String, client_msg_id: Option<String> },
    /// Type 30: everything up to `seq` in the conversation was delivered.
    Ack { conversation_id: String, seq: u64 },
    /// Type 31: everything up to `seq` in the conversation was read.
    Read { conversation_id: String, seq: u64 },
    /// Type 60: take back the message at `seq`.
    Recall { conversation_id: String, seq: u64, client_msg_id: Option<String> },
    /// Type 61: replace the content of the message at `seq`.
    Edit { conversation_id: String, seq: u64, content: String, client_msg_id: Option<String> },
    /// Type 40: the user is typing to `to` or in `group_id`.
    Typing { target: SendTarget },
    /// Type 99.
    Heartbeat,
}

/// Where a send goes.
#[derive(Debug, PartialEq, Clone, Copy)]
pub enum SendTarget {
    User(u64),
    Group(u64),
}

/// Why a frame was refused; answered as a type 3 frame.
#[derive(Debug, PartialEq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    /// Echoed so the client can match the error to its send.
    pub client_msg_id: Option<String>,
}

impl FrameError {
    fn new(code: ErrorCode, message: impl Into<String>, client_msg_id: Option<String>) -> Self {
        Self { code, message: message.into(), client_msg_id }
    }
}

/// The loose shape every client frame is read into; unknown fields are
/// ignored, and ids may come as numbers or numeric strings.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(borrow)]
    to: Option<&'a RawValue>,
    #[serde(borrow)]
    group_id: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    client_msg_id: Option<&'a RawValue>,
    conversation_id: Option<serde_json::Value>,
    #[serde(borrow)]
    seq: Option<&'a RawValue>,
}

/// Reads an id given as a JSON number or a string of digits.
fn id_of(raw: Option<&RawValue>) -> Option<u64> {
    let raw = raw?.get();
    raw.parse::<u64>().ok().or_else(|| serde_json::from_str::<String>(raw).ok()?.parse().ok())
}

fn client_msg_id_of(raw: Option<&RawValue>) -> Result<Option<String>, ()> {
    let Some(raw) = raw else { return Ok(None) };
    match serde_json::from_str::<serde_json::Value>(raw.get()) {
        Ok(serde_json::Value::String(s)) => Ok(Some(s)),
        Ok(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Ok(serde_json::Value::Null) => Ok(None),
        _ => Err(()),
    }
}

/// Parses one text frame.
pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let raw: RawFrame<'_> = serde_json::from_str(text).map_err(|_| {
        FrameError::new(ErrorCode::MalformedFrame, "frame must be a JSON object", None)
    })?;
    let client_msg_id = client_msg_id_of(raw.client_msg_id).map_err(|_| {
        FrameError::new(ErrorCode::MissingField, "client_msg_id must be a string", None)
    })?;
    let kind = raw.kind.as_ref().and_then(serde_json::Value::as_i64).ok_or_else(|| {
        FrameError::new(
            ErrorCode::UnknownType,
            "numeric field 'type' is required",
            client_msg_id.clone(),
        )
    })?;
    let missing = |what: &str| {
        FrameError::new(ErrorCode::MissingField, what.to_string(), client_msg_id.clone())
    };
    match kind {
        kind::SINGLE | kind::GROUP => {
            let target = if kind == kind::SINGLE {
                SendTarget::User(id_of(raw.to).ok_or_else(|| missing("'to' must be a user id"))?)
            } else {
                let group = id_of(raw.group_id).or_else(|| id_of(raw.to));
                SendTarget::Group(group.ok_or_else(|| missing("'group_id' must be a group id"))?)
            };
            let content = raw
                .content
                .filter(|c| c.get() != "null")
                .ok_or_else(|| missing("'content' is required"))?;
            Ok(ClientFrame::Send { target, content: content.get().to_string(), client_msg_id })
        }
        kind::ACK | kind::READ => {
            let conversation_id = match raw.conversation_id {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(missing("'conversation_id' is required")),
            };
            let seq =
                id_of(raw.seq).ok_or_else(|| missing("'seq' must be a non-negative integer"))?;
            Ok(if kind == kind::ACK {
                ClientFrame::Ack { conversation_id, seq }
            } else {
                ClientFrame::Read { conversation_id, seq }
            })
        }
        kind::TYPING => {
            let target = match (id_of(raw.group_id), id_of(raw.to)) {
                (Some(group), _) => SendTarget::Group(group),
                (None, Some(user)) => SendTarget::User(user),
                (None, None) => return Err(missing("'to' or 'group_id' is required")),
            };
            Ok(ClientFrame::Typing { target })
        }
        kind::RECALL | kind::EDIT => {
            let conversation_id = match raw.conversation_id {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(missing("'conversation_id' is required")),
            };
            let seq = id_of(raw.seq).ok_or_else(|| missing("'seq' must be a message's seq"))?;
            if kind == kind::RECALL {
                return Ok(ClientFrame::Recall { conversation_id, seq, client_msg_id });
            }
            let content = raw
                .content
                .filter(|c| c.get() != "null")
                .ok_or_else(|| missing("'content' is required"))?;
            let content = content.get().to_string();
            Ok(ClientFrame::Edit { conversation_id, seq, content, client_msg_id })
        }
        kind::HEARTBEAT => Ok(ClientFrame::Heartbeat),
        other => Err(FrameError::new(
            ErrorCode::UnknownType,
            format!("unknown frame type {other}"),
            client_msg_id,
        )),
    }
}

#[derive(Serialize)]
struct TypingFrame<'a> {
    #[serde(rename = "type")]
    kind: i64,
    conversation_id: &'a str,
    from: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    group_id: Option<u64>,
}

/// A typing indicator (type 40): `from` is typing in the conversation; in
/// a group conversation `group_id` says which group.
pub fn typing(from: u64, conversation_id: &str, group_id: u64) -> String {
    let group_id = (group_id != 0).then_some(group_id);
    serde_json::to_string(&TypingFrame { kind: kind::TYPING, conversation_id, from, group_id })
        .expect("serialising plain fields cannot fail")
}

#[derive(Serialize)]
struct ReadFrame<'a> {
    #[serde(rename = "type")]
    kind: i64,
    conversation_id: &'a str,
    user_id: u64,
    seq: u64,
}

/// A read marker moved (type 31): `user_id` has read the conversation up
/// to `seq` (the 1:1 peer, or the user's own other session).
pub fn read(user_id: u64, conversation_id: &str, seq: u64) -> String {
    serde_json::to_string(&ReadFrame { kind: kind::READ, conversation_id, user_id, seq })
        .expect("serialising plain fields cannot fail")
}

#[derive(Serialize)]
struct PresenceFrame {
    #[serde(rename = "type")]
    kind: i64,
    user_id: u64,
    online: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<i64>,
}

/// A contact came online, or went offline (type 50; `last_seen` in Unix
/// milliseconds when offline).
pub fn presence(user_id: u64, online: bool, last_seen_ms: i64) -> String {
    let last_seen = (!online && last_seen_ms > 0).then_some(last_seen_ms);
    serde_json::to_string(&PresenceFrame { kind: kind::PRESENCE, user_id, online, last_seen })
        .expect("serialising plain fields cannot fail")
}

/// A message as delivered on the WebSocket (frame type 1 or 2).
#[derive(Serialize, ToSchema)]
pub struct Delivered<'a> {
    /// 1 in a 1:1 conversation, 2 in a group.
    #[serde(rename = "type")]
    #[schema(minimum = 1, maximum = 2)]
    frame_type: i64,
    message_id: &'a str,
    conversation_id: &'a str,
    seq: u64,
    /// The sender; 0 for a system message.
    from: u64,
    /// The recipient of a 1:1 message.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    to: Option<u64>,
    /// The group of a group message.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    group_id: Option<u64>,
    /// Whatever JSON the sender sent.
    #[schema(value_type = Value)]
    content: &'a RawValue,
    /// When it was stored (Unix ms).
    timestamp: i64,
    /// Set on an event about the message at `ref_seq`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    kind: Option<Event>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    ref_seq: Option<u64>,
    /// When the message was edited (history of an edited message).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    edited_at: Option<i64>,
    /// When the message was recalled; its content is `null`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    recalled_at: Option<i64>,
}

/// What an event entry does: `edit` or `recall` the message at `ref_seq`,
/// or record a group's `membership` change (from user 0).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Edit,
    Recall,
    Membership,
}

/// A delivered message (type 1 or 2).
pub fn delivered(message: &Message) -> String {
    let (frame_type, to, group_id) = match message.target {
        Some(Target::GroupId(g)) => (kind::GROUP, None, Some(g)),
        Some(Target::ToUserId(u)) => (kind::SINGLE, Some(u), None),
        None => (kind::SINGLE, None, None),
    };
    // Content was validated as JSON when stored; fall back to null rather
    // than fail the whole delivery if a row was edited by hand.
    let null = RawValue::from_string("null".into()).expect("null is JSON");
    let content = serde_json::from_str::<&RawValue>(&message.content_json).unwrap_or(&null);
    let event = match MessageKind::try_from(message.kind) {
        Ok(MessageKind::Edit) => Some(Event::Edit),
        Ok(MessageKind::Recall) => Some(Event::Recall),
        Ok(MessageKind::Membership) => Some(Event::Membership),
        _ => None,
    };
    let set = |t: i64| (t != 0).then_some(t);
    serde_json::to_string(&Delivered {
        frame_type,
        message_id: &message.message_id,
        conversation_id: &message.conversation_id,
        seq: message.seq,
        from: message.sender_id,
        to,
        group_id,
        content,
        timestamp: message.created_at_ms,
        kind: event,
        ref_seq: (message.ref_seq != 0).then_some(message.ref_seq),
        edited_at: set(message.edited_at_ms),
        recalled_at: set(message.recalled_at_ms),
    })
    .expect("serialising plain fields cannot fail")
}

#[derive(Serialize)]
struct SendAckFrame<'a> {
    #[serde(rename = "type")]
    kind: i64,
    client_msg_id: &'a str,
    message_id: &'a str,
    conversation_id: &'a str,
    seq: u64,
    timestamp: i64,
    duplicate: bool,
}

/// The send acknowledgement (type 30).
pub fn send_ack(ack: &SendAck) -> String {
    serde_json::to_string(&SendAckFrame {
        kind: kind::ACK,
        client_msg_id: &ack.client_msg_id,
        message_id: &ack.message_id,
        conversation_id: &ack.conversation_id,
        seq: ack.seq,
        timestamp: ack.created_at_ms,
        duplicate: ack.duplicate,
    })
    .expect("serialising plain fields cannot fail")
}

/// An error (type 3).
pub fn error(error: &FrameError) -> String {
    let mut frame = serde_json::json!({
        "type": kind::ERROR,
        "code": error.code.as_str(),
        "message": error.message,
        "retryable": error.code.retryable(),
    });
    if let Some(id) = &error.client_msg_id {
        frame["client_msg_id"] = id.clone().into();
    }
    frame.to_string()
}

/// The heartbeat answer (type 99).
pub fn heartbeat() -> String {
    serde_json::json!({ "type": kind::HEARTBEAT, "timestamp": tern_runtime::clock::now_ms() })
        .to_string()
}

/// The kick notice (type 100).
pub fn kicked(reason: &str) -> String {
    serde_json::json!({ "type": kind::KICKED, "content": { "reason": reason } }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_guide_examples() {
        let f = parse(r#"{"type":1,"to":2,"content":"hi","timestamp":1}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                target: SendTarget::User(2),
                content: "\"hi\"".into(),
                client_msg_id: None
            }
        );
        let f =
            parse(r#"{"type":2,"to":"7","content":{"text":"x"},"client_msg_id":"c1"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                target: SendTarget::Group(7),
                content: r#"{"text":"x"}"#.into(),
                client_msg_id: Some("c1".into())
            }
        );
        assert_eq!(parse(r#"{"type":99}"#).unwrap(), ClientFrame::Heartbeat);
        assert_eq!(
            parse(r#"{"type":30,"conversation_id":"dm:1:2","seq":4}"#).unwrap(),
            ClientFrame::Ack { conversation_id: "dm:1:2".into(), seq: 4 }
        );
    }

    #[test]
    fn refuses_bad_frames_with_stable_codes() {
        let code = |s: &str| parse(s).unwrap_err().code;
        assert_eq!(code("not json"), ErrorCode::MalformedFrame);
        assert_eq!(code("[1,2]"), ErrorCode::MalformedFrame);
        assert_eq!(code(r#"{"to":2}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"1"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":42}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":1,"content":"x"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":1,"to":-3,"content":"x"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":1,"to":2}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":1,"to":2,"content":null}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"type":30,"seq":1}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"type":30,"conversation_id":"dm:1:2","seq":-1}"#),
            ErrorCode::MissingField
        );
    }

    #[test]
    fn typing_frames_name_a_user_or_a_group() {
        assert_eq!(
            parse(r#"{"type":40,"to":2}"#).unwrap(),
            ClientFrame::Typing { target: SendTarget::User(2) }
        );
        assert_eq!(
            parse(r#"{"type":40,"group_id":"7"}"#).unwrap(),
            ClientFrame::Typing { target: SendTarget::Group(7) }
        );
        assert_eq!(parse(r#"{"type":40}"#).unwrap_err().code, ErrorCode::MissingField);
        let frame: serde_json::Value = serde_json::from_str(&typing(1, "group:7", 7)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type":40,"conversation_id":"group:7","from":1,"group_id":7})
        );
        let frame: serde_json::Value = serde_json::from_str(&typing(1, "dm:1:2", 0)).unwrap();
        assert_eq!(frame, serde_json::json!({"type":40,"conversation_id":"dm:1:2","from":1}));
    }

    #[test]
    fn read_frames_carry_a_conversation_and_a_seq() {
        assert_eq!(
            parse(r#"{"type":31,"conversation_id":"dm:1:2","seq":"4"}"#).unwrap(),
            ClientFrame::Read { conversation_id: "dm:1:2".into(), seq: 4 }
        );
        assert_eq!(parse(r#"{"type":31,"seq":1}"#).unwrap_err().code, ErrorCode::MissingField);
        let frame: serde_json::Value = serde_json::from_str(&read(2, "dm:1:2", 4)).unwrap();
        assert_eq!(
            frame,
            serde_json::json!({"type":31,"conversation_id":"dm:1:2","user_id":2,"seq":4})
        );
    }

    #[test]
    fn presence_frames_say_last_seen_only_when_offline() {
        let frame: serde_json::Value = serde_json::from_str(&presence(2, true, 0)).unwrap();
        assert_eq!(frame, serde_json::json!({"type":50,"user_id":2,"online":true}));
        let frame: serde_json::Value = serde_json::from_str(&presence(2, false, 9)).unwrap();
        assert_eq!(frame, serde_json::json!({"type":50,"user_id":2,"online":false,"last_seen":9}));
    }

    #[test]
    fn errors_echo_the_client_msg_id() {
        let e = parse(r#"{"type":1,"client_msg_id":"abc","content":1}"#).unwrap_err();
        assert_eq!(e.client_msg_id.as_deref(), Some("abc"));
        let frame: serde_json::Value = serde_json::from_str(&error(&e)).unwrap();
        assert_eq!(frame["type"], 3);
        assert_eq!(frame["client_msg_id"], "abc");
        assert_eq!(frame["code"], "missing_field");
    }

    #[test]
    fn delivered_frames_embed_content_verbatim() {
        let m = Message {
            message_id: "m".into(),
            conversation_id: "group:9".into(),
            seq: 3,
            sender_id: 5,
            target: Some(Target::GroupId(9)),
            content_json: r#"{"text":"hé"}"#.into(),
            created_at_ms: 10,
            client_msg_id: "c".into(),
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::from_str(&delivered(&m)).unwrap();
        assert_eq!(v["type"], 2);
        assert_eq!(v["group_id"], 9);
        assert_eq!(v["from"], 5);
        assert_eq!(v["content"]["text"], "hé");
        assert!(v.get("kind").is_none() && v.get("edited_at").is_none(), "{v}");
        // An edit names the message it changes; a recalled message says when.
        let edit = Message { kind: MessageKind::Edit as i32, ref_seq: 2, ..m.clone() };
        let v: serde_json::Value = serde_json::from_str(&delivered(&edit)).unwrap();
        assert_eq!((v["kind"].as_str(), v["ref_seq"].as_u64()), (Some("edit"), Some(2)));
        let recalled = Message { content_json: "null".into(), recalled_at_ms: 11, ..m };
        let v: serde_json::Value = serde_json::from_str(&delivered(&recalled)).unwrap();
        assert_eq!((v["content"].is_null(), v["recalled_at"].as_i64()), (true, Some(11)));
    }

    #[test]
    fn recall_and_edit_frames_name_a_message() {
        assert_eq!(
            parse(r#"{"type":60,"conversation_id":"dm:1:2","seq":3,"client_msg_id":"r"}"#).unwrap(),
            ClientFrame::Recall {
                conversation_id: "dm:1:2".into(),
                seq: 3,
                client_msg_id: Some("r".into())
            }
        );
        assert_eq!(
            parse(r#"{"type":61,"conversation_id":"dm:1:2","seq":3,"content":{"t":1}}"#).unwrap(),
            ClientFrame::Edit {
                conversation_id: "dm:1:2".into(),
                seq: 3,
                content: r#"{"t":1}"#.into(),
                client_msg_id: None
            }
        );
        let code = |text: &str| parse(text).unwrap_err().code;
        assert_eq!(
            code(r#"{"type":61,"conversation_id":"dm:1:2","seq":3}"#),
            ErrorCode::MissingField
        );
        assert_eq!(code(r#"{"type":60,"seq":3}"#), ErrorCode::MissingField);
    }
}
