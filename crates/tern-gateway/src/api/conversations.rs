//! `/api/conversations` (the caller's conversations with unread counts),
//! `/api/conversations/{id}/messages` (history, members only) and
//! `/api/conversations/{id}/reads` (how far the other members have read).

use super::{Caller, ServiceErrors};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    protocol::{self, Delivered},
};
use axum::{
    Json,
    extract::{Path, Query, State, rejection::QueryRejection},
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tern_proto::{
    conversation,
    pb::{
        message::Message,
        offline::{ListBacklogRequest, PullRequest, ReadPositionsRequest},
    },
};
use utoipa::{IntoParams, ToSchema};

/// A conversation in the caller's list.
#[derive(Serialize, ToSchema)]
pub struct ConversationView {
    conversation_id: String,
    kind: ConversationKind,
    /// The peer of a direct conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    user_id: Option<u64>,
    /// The group of a group conversation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    group_id: Option<u64>,
    acked_seq: u64,
    /// The caller's read marker, shared by the caller's devices.
    read_seq: u64,
    latest_seq: u64,
    /// Messages after the read marker.
    unread: u64,
    /// The latest message, as a delivery frame, for the preview line;
    /// `null` in a conversation without messages.
    #[schema(value_type = Option<Delivered>, required)]
    last_message: Option<Box<RawValue>>,
    #[serde(skip)]
    last_at_ms: i64,
}

/// A direct (1:1) conversation, or a group's.
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ConversationKind {
    Direct,
    Group,
}

#[derive(Serialize, ToSchema)]
pub struct Conversations {
    conversations: Vec<ConversationView>,
}

/// A page of history.
#[derive(Serialize, ToSchema)]
pub struct History {
    /// Delivery frames, in seq order.
    #[schema(value_type = Vec<Delivered>)]
    messages: Vec<Box<RawValue>>,
    acked_seq: u64,
    latest_seq: u64,
}

/// A stored message as the delivery frame clients know.
fn frame(message: &Message) -> Box<RawValue> {
    RawValue::from_string(protocol::delivered(message)).expect("a delivery frame is JSON")
}

/// Query string of `GET /api/conversations`.
#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Whose delivery cursors `acked_seq` reports (the device the client
    /// connects its socket as); the default device without it.
    device: Option<String>,
}

/// Every conversation of the caller.
///
/// Newest activity first, with unread counts (from the read marker, which
/// every device shares) and the latest message.
#[utoipa::path(
    get,
    path = "/api/conversations",
    tag = "conversations",
    security(("access_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, body = Conversations, description = "The caller's conversations"),
        (status = 400, body = ErrorBody, description = "`bad_request`: a malformed `device`"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        ServiceErrors,
    ),
)]
pub async fn conversations(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Conversations>, ApiError> {
    let Query(ListQuery { device }) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let device = crate::error::device(device)?;
    // Before the read: see `AckBuffer::of_device`.
    let buffered = state.acks.of_device(user_id, &device);
    let unwritten_acks = buffered.clone();
    let request =
        ListBacklogRequest { user_id, include_read: true, device, page: 0, unwritten_acks };
    let backlog = state.services.offline.clone().list_backlog(request).await?.into_inner();
    let mut items = Vec::with_capacity(backlog.conversations.len());
    for b in backlog.conversations {
        // The latest message, for the list's preview line.
        let last = if b.latest_seq == 0 {
            None
        } else {
            let request = PullRequest {
                user_id,
                conversation_id: b.conversation_id.clone(),
                after_seq: Some(b.latest_seq - 1),
                limit: 1,
                ..Default::default()
            };
            state.services.offline.clone().pull(request).await?.into_inner().messages.pop()
        };
        let (kind, user_id, group_id) = match conversation::parse(&b.conversation_id) {
            Some(direct @ conversation::Kind::Direct(..)) => {
                (ConversationKind::Direct, direct.peer_of(user_id), None)
            }
            Some(conversation::Kind::Group(g)) => (ConversationKind::Group, None, Some(g)),
            None => continue,
        };
        // This node may hold a newer ack than storage (written behind).
        let acked = buffered.get(&b.conversation_id).copied().unwrap_or(0).max(b.acked_seq);
        items.push(ConversationView {
            kind,
            user_id,
            group_id,
            acked_seq: acked,
            read_seq: b.read_seq,
            latest_seq: b.latest_seq,
            unread: b.latest_seq.saturating_sub(b.read_seq),
            last_message: last.as_ref().map(frame),
            last_at_ms: last.as_ref().map_or(0, |m| m.created_at_ms),
            conversation_id: b.conversation_id,
        });
    }
    items.sort_by_key(|i| std::cmp::Reverse(i.last_at_ms));
    Ok(Json(Conversations { conversations: items }))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Messages after this seq; 0 (the default) from the start.
    after_seq: Option<u64>,
    /// Page size: 200 without it (or with 0), at most 1,000.
    limit: Option<u32>,
}

/// A page of a conversation's history, for its members.
#[utoipa::path(
    get,
    path = "/api/conversations/{conversation_id}/messages",
    tag = "conversations",
    security(("access_token" = [])),
    params(
        ("conversation_id" = String, Path,
            description = "`dm:<lower user id>:<higher user id>` or `group:<group id>`"),
        HistoryQuery,
    ),
    responses(
        (status = 200, body = History, description = "Messages after `after_seq`, in seq order"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: a malformed conversation id or query"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a member"),
        ServiceErrors,
    ),
)]
pub async fn history(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(conversation_id): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if conversation::parse(&conversation_id).is_none() {
        return Err(ApiError::bad_request("malformed conversation id"));
    }
    let page = state
        .services
        .offline
        .clone()
        .pull(PullRequest {
            user_id,
            conversation_id,
            after_seq: Some(q.after_seq.unwrap_or(0)),
            limit: q.limit.unwrap_or(0),
            ..Default::default()
        })
        .await?
        .into_inner();
    Ok(Json(History {
        messages: page.messages.iter().map(frame).collect(),
        acked_seq: page.acked_seq,
        latest_seq: page.latest_seq,
    }))
}

/// How far the other members of a conversation have read.
#[derive(Serialize, ToSchema)]
pub struct Reads {
    conversation_id: String,
    /// Highest seq first; a message `s` has been read by the sum of
    /// `members` over the entries with `seq >= s`.
    reads: Vec<ReadView>,
}

/// How many of the other members have read up to `seq`.
#[derive(Serialize, ToSchema)]
pub struct ReadView {
    seq: u64,
    members: u32,
}

/// The other members' read markers, counted per position (members only).
#[utoipa::path(
    get,
    path = "/api/conversations/{conversation_id}/reads",
    tag = "conversations",
    security(("access_token" = [])),
    params(
        ("conversation_id" = String, Path,
            description = "`dm:<lower user id>:<higher user id>` or `group:<group id>`"),
    ),
    responses(
        (status = 200, body = Reads, description = "The read markers, highest first"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: a malformed conversation id"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not a member"),
        ServiceErrors,
    ),
)]
pub async fn reads(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(conversation_id): Path<String>,
) -> Result<Json<Reads>, ApiError> {
    if conversation::parse(&conversation_id).is_none() {
        return Err(ApiError::bad_request("malformed conversation id"));
    }
    let request = ReadPositionsRequest { user_id, conversation_id: conversation_id.clone() };
    let positions =
        state.services.offline.clone().read_positions(request).await?.into_inner().positions;
    let reads =
        positions.into_iter().map(|p| ReadView { seq: p.seq, members: p.members }).collect();
    Ok(Json(Reads { conversation_id, reads }))
}
