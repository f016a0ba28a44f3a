//! The `tern.message.v1.MessageService` implementation.

use crate::{
    MessageError, Peers, Settings,
    attachments::Attachments,
    router::Router,
    store::{Draft, Queued, Store, Stored},
};
use quick_cache::sync::Cache;
use std::sync::Arc;
use tern_proto::{
    conversation,
    pb::{
        auth::GetUsersRequest,
        bus::{Read, Typing, bus_event::Event},
        group::{GetGroupRequest, IsMemberRequest},
        message::{
            Attachment, AttachmentAccess, AttachmentState, CompleteUploadRequest,
            ConversationState, CreateUploadRequest, CreateUploadResponse, EditRequest,
            GetAttachmentRequest, GetAttachmentResponse, GetConversationStatesRequest,
            GetConversationStatesResponse, ListMessagesRequest, ListMessagesResponse,
            MarkReadRequest, MarkReadResponse, Message, MessageKind, RecallRequest, SendAck,
            SendBatchRequest, SendBatchResponse, SendError, SendRequest, SendResponse, SendResult,
            TypingRequest, TypingResponse, message::Target as StoredTarget,
            message_service_server::MessageService, send_request::Target, send_result::Outcome,
            typing_request::Target as TypingTarget,
        },
        offline::InitCursorsRequest,
        offline::MarkReadRequest as OfflineMarkRead,
    },
};
use tern_runtime::clock::now_ms;
use tonic::{Request, Response, Status};

const MAX_CLIENT_MSG_ID: usize = 64;
const DEFAULT_PAGE: u32 = 200;
const MAX_PAGE: u32 = 1_000;
const MAX_STATES: usize = 10_000;
const MAX_SEND_BATCH: usize = 256;
/// Users, and conversations, the caches below remember (about 30 and 100
/// bytes each). One that falls out costs a lookup at its next send.
const KNOWN_USERS: usize = 200_000;
const KNOWN_CONVERSATIONS: usize = 200_000;

/// Where a send stands once it is checked.
enum Prepared {
    /// Queued for the writer.
    Queued(Queued),
    /// Answered without storing anything new (a refused retry whose
    /// original is stored).
    Answered(SendResponse),
}

/// The message service.
#[derive(Clone)]
pub struct Messages {
    store: Store,
    peers: Peers,
    router: Arc<Router>,
    attachments: Attachments,
    /// Users known to exist. Users are never deleted, so a positive answer
    /// can be kept and saves a call to auth on every 1:1 send.
    known_users: Arc<Cache<u64, ()>>,
    /// Conversations whose row (and cursors) are known to exist.
    known_conversations: Arc<Cache<String, ()>>,
    max_content_bytes: usize,
    /// Milliseconds after sending within which a sender may recall, and edit.
    recall_window_ms: i64,
    edit_window_ms: i64,
    /// The admin API of the webhook outbox.
    webhooks: tern_webhook::Admin,
}

impl Messages {
    /// `db` serves reads, `writer` (one connection) every append.
    pub(crate) fn new(
        db: sea_orm::DatabaseConnection,
        writer: sea_orm::DatabaseConnection,
        peers: Peers,
        settings: &Settings,
        attachments: Attachments,
        outbox: tern_webhook::Outbox,
    ) -> Self {
        let (committed, stored) = tokio::sync::mpsc::unbounded_channel();
        let webhooks = outbox.admin(db.clone());
        let router = Arc::new(Router::new(peers.clone()));
        tokio::spawn(router.clone().run(stored));
        Self {
            store: Store::new(db, writer, committed, outbox),
            router,
            attachments,
            peers,
            known_users: Arc::new(Cache::new(KNOWN_USERS)),
            known_conversations: Arc::new(Cache::new(KNOWN_CONVERSATIONS)),
            max_content_bytes: settings.max_content_bytes,
            recall_window_ms: settings.recall_window_secs.saturating_mul(1000) as i64,
            edit_window_ms: settings.edit_window_secs.saturating_mul(1000) as i64,
            webhooks,
        }
    }

    /// The admin API of this service's webhook outbox.
    pub fn webhooks(&self) -> tern_webhook::Admin {
        self.webhooks.clone()
    }

    async fn require_user(&self, user: u64) -> Result<(), MessageError> {
        if self.known_users.contains_key(&user) {
            return Ok(());
        }
        let found =
            self.peers.auth.clone().get_users(GetUsersRequest { user_ids: vec![user] }).await?;
        if found.into_inner().users.iter().any(|u| u.user_id == user) {
            self.known_users.insert(user, ());
            Ok(())
        } else {
            Err(MessageError::UnknownUser)
        }
    }

    /// Makes sure a 1:1 conversation exists with both cursors at 0. The
    /// cursors come first: if starting them fails, nothing is stored and
    /// the sender retries.
    async fn ensure_direct(
        &self,
        conversation_id: &str,
        a: u64,
        b: u64,
    ) -> Result<(), MessageError> {
        if self.known_conversations.contains_key(conversation_id) {
            return Ok(());
        }
        if !self.store.conversation_exists(conversation_id).await? {
            self.peers
                .offline
                .clone()
                .init_cursors(InitCursorsRequest {
                    conversation_id: conversation_id.to_string(),
                    user_ids: vec![a, b],
                    start_seq: Some(0),
                })
                .await?;
            self.store.ensure_conversation(conversation_id).await?;
        }
        self.known_conversations.insert(conversation_id.to_string(), ());
        Ok(())
    }

    async fn ensure_group(&self, conversation_id: &str) -> Result<(), MessageError> {
        if !self.known_conversations.contains_key(conversation_id) {
            self.store.ensure_conversation(conversation_id).await?;
            self.known_conversations.insert(conversation_id.to_string(), ());
        }
        Ok(())
    }

    /// Checks that `to` is another user who exists; the id of their 1:1
    /// conversation with `sender_id`.
    async fn require_peer(&self, sender_id: u64, to: u64) -> Result<String, MessageError> {
        if to == sender_id {
            return Err(MessageError::Invalid("a 1:1 conversation needs another user"));
        }
        if i64::try_from(to).is_err() {
            return Err(MessageError::UnknownUser);
        }
        self.require_user(to).await?;
        Ok(conversation::direct(sender_id, to))
    }

    /// Checks that `user` is a member of `group_id`; the member list
    /// version the check saw.
    async fn require_member(&self, group_id: u64, user_id: u64) -> Result<u64, MessageError> {
        let answer =
            self.peers.group.clone().is_member(IsMemberRequest { group_id, user_id }).await;
        match answer {
            Ok(r) if r.get_ref().is_member => Ok(r.get_ref().members_version),
            Ok(_) => Err(MessageError::NotMember),
            Err(s) if s.code() == tonic::Code::NotFound => Err(MessageError::UnknownGroup),
            Err(s) => Err(s.into()),
        }
    }

    /// Checks that `user_id` is in the conversation `conversation_id`.
    async fn require_in(&self, user_id: u64, conversation_id: &str) -> Result<(), MessageError> {
        match conversation::parse(conversation_id) {
            Some(conversation::Kind::Group(group_id)) => {
                self.require_member(group_id, user_id).await.map(|_| ())
            }
            Some(kind) => match kind.peer_of(user_id) {
                Some(peer) => self.require_user(peer).await,
                None => Err(MessageError::Forbidden("not in this conversation")),
            },
            None => Err(MessageError::Invalid("malformed conversation_id")),
        }
    }

    /// Starts an upload into a conversation the uploader is in.
    async fn create_upload(
        &self,
        request: CreateUploadRequest,
    ) -> Result<CreateUploadResponse, MessageError> {
        let CreateUploadRequest { user_id, conversation_id, name, size, content_type } = request;
        let user = i64::try_from(user_id).map_err(|_| MessageError::Invalid("bad user_id"))?;
        self.require_in(user_id, &conversation_id).await?;
        let (attachment, url, expires_at_ms) =
            self.attachments.create(user, &conversation_id, &name, size, &content_type).await?;
        Ok(CreateUploadResponse {
            attachment: Some(attachment),
            upload_url: url.unwrap_or_default(),
            expires_at_ms,
            max_bytes: self.attachments.max_bytes(),
        })
    }

    /// An attachment and a URL, for its uploader or (once sent) members of
    /// its conversation.
    async fn get_attachment(
        &self,
        request: GetAttachmentRequest,
    ) -> Result<GetAttachmentResponse, MessageError> {
        let GetAttachmentRequest { user_id, attachment_id, access } = request;
        let row = self.attachments.find(&attachment_id).await?;
        let mine = row.uploader_id as u64 == user_id;
        let upload = access == AttachmentAccess::Upload as i32;
        if upload {
            if !mine {
                return Err(MessageError::Forbidden("that upload is someone else's"));
            }
            if row.state != AttachmentState::Pending as i32 {
                return Err(MessageError::Completed);
            }
        } else if row.state == AttachmentState::Sent as i32 {
            self.require_in(user_id, &row.conversation_id).await.map_err(|e| match e {
                MessageError::NotMember | MessageError::Forbidden(_) => {
                    MessageError::Forbidden("not in the conversation this file was sent in")
                }
                other => other,
            })?;
        } else if !mine {
            return Err(MessageError::Forbidden("that file has not been sent to you"));
        }
        let (attachment, url, expires_at_ms) = self.attachments.access(row, upload).await?;
        Ok(GetAttachmentResponse {
            attachment: Some(attachment),
            url: url.unwrap_or_default(),
            expires_at_ms,
        })
    }

    /// Tells the other online members of a conversation that `sender_id`
    /// is typing in it, after the same checks as a send (but without
    /// creating the conversation: an indicator leaves nothing behind).
    async fn typing(&self, request: TypingRequest) -> Result<TypingResponse, MessageError> {
        let TypingRequest { sender_id, target } = request;
        if sender_id == 0 {
            return Err(MessageError::Invalid("sender_id is required"));
        }
        let target = target
            .ok_or(MessageError::Invalid("a recipient (to_user_id or group_id) is required"))?;
        let (conversation_id, group_id, recipients) = match target {
            TypingTarget::ToUserId(to) => (self.require_peer(sender_id, to).await?, 0, vec![to]),
            TypingTarget::GroupId(group_id) => {
                if i64::try_from(group_id).is_err() {
                    return Err(MessageError::UnknownGroup);
                }
                let version = self.require_member(group_id, sender_id).await?;
                let (_, members) = self.router.members(group_id, Some(version)).await?;
                let others = members.iter().copied().filter(|&m| m != sender_id).collect();
                (conversation::group(group_id), group_id, others)
            }
        };
        self.router
            .notify(&recipients, |recipients| {
                let conversation_id = conversation_id.clone();
                Event::Typing(Typing { from: sender_id, conversation_id, group_id, recipients })
            })
            .await?;
        Ok(TypingResponse { conversation_id })
    }

    /// Moves the reader's read marker and, when it moved, tells the
    /// reader's other sessions and the peer of a 1:1 conversation.
    async fn mark_read(&self, request: MarkReadRequest) -> Result<MarkReadResponse, MessageError> {
        let MarkReadRequest { user_id, conversation_id, seq, origin_session_id } = request;
        let kind = conversation::parse(&conversation_id)
            .ok_or(MessageError::Invalid("malformed conversation_id"))?;
        let marked = self
            .peers
            .offline
            .clone()
            .mark_read(OfflineMarkRead { user_id, conversation_id: conversation_id.clone(), seq })
            .await?
            .into_inner();
        if marked.advanced {
            let recipients: Vec<u64> =
                [Some(user_id), kind.peer_of(user_id)].into_iter().flatten().collect();
            self.router
                .notify(&recipients, |recipients| {
                    Event::Read(Read {
                        reader: user_id,
                        conversation_id: conversation_id.clone(),
                        seq: marked.read_seq,
                        recipients,
                        origin_session_id: origin_session_id.clone(),
                    })
                })
                .await?;
        }
        Ok(MarkReadResponse { read_seq: marked.read_seq })
    }

    /// The rules every stored body and `client_msg_id` follow.
    fn check_body(&self, content_json: &str, client_msg_id: &str) -> Result<(), MessageError> {
        if content_json.len() > self.max_content_bytes {
            return Err(MessageError::TooLarge);
        }
        if serde_json::from_str::<serde::de::IgnoredAny>(content_json).is_err() {
            return Err(MessageError::Invalid("content_json must be valid JSON"));
        }
        if client_msg_id.len() > MAX_CLIENT_MSG_ID {
            return Err(MessageError::Invalid("client_msg_id must be at most 64 bytes"));
        }
        Ok(())
    }

    /// Recalls (`edit` is `None`) or edits a message from `device`: checks who may, changes
    /// the stored message, then stores the event that tells the
    /// conversation, which takes the next seq and is routed like a message.
    /// The change comes first: if storing the event fails, the message is
    /// already changed for anyone who reads it, and a retry with the same
    /// `client_msg_id` stores the event.
    async fn change(
        &self,
        user_id: u64,
        conversation_id: String,
        seq: u64,
        client_msg_id: String,
        act: Act,
        device: String,
    ) -> Result<SendAck, MessageError> {
        let operator = matches!(act, Act::OperatorRecall);
        if operator && user_id != 0 {
            return Err(MessageError::Invalid("an operator recalls as user 0"));
        }
        let edit = match act {
            Act::Edit(content) => Some(content),
            Act::Recall | Act::OperatorRecall => None,
        };
        self.check_body(edit.as_deref().unwrap_or("null"), &client_msg_id)?;
        check_device(&device)?;
        let user = i64::try_from(user_id).map_err(|_| MessageError::NotMember)?;
        let at = i64::try_from(seq).map_err(|_| MessageError::NoSuchMessage)?;
        let kind = conversation::parse(&conversation_id)
            .ok_or(MessageError::Invalid("malformed conversation_id"))?;
        if !client_msg_id.is_empty()
            && let Some(event) = self.store.find_sent(user, &client_msg_id).await?
        {
            return Ok(slim(event, true));
        }
        let (target, members_version, group) = match kind {
            // The router sends an entry of a 1:1 conversation to both of
            // its users but the sender, so either names it.
            conversation::Kind::Direct(_, b) if operator => (StoredTarget::ToUserId(b), None, None),
            conversation::Kind::Group(g) if operator => (StoredTarget::GroupId(g), None, Some(g)),
            conversation::Kind::Direct(..) => {
                let peer = kind.peer_of(user_id).ok_or(MessageError::NotMember)?;
                (StoredTarget::ToUserId(peer), None, None)
            }
            conversation::Kind::Group(g) => {
                let version = self.require_member(g, user_id).await?;
                (StoredTarget::GroupId(g), Some(version), Some(g))
            }
        };
        let original =
            self.store.get(&conversation_id, at).await?.ok_or(MessageError::NoSuchMessage)?;
        if original.kind != MessageKind::Message as i32 {
            return Err(MessageError::Invalid("only a message can be recalled or edited"));
        }
        let mine = original.sender_id == user;
        let in_time = |window: i64| now_ms() - original.created_at_ms <= window;
        let recalled = original.recalled_at_ms.is_some();
        match &edit {
            Some(_) if !mine => {
                return Err(MessageError::Forbidden("only the sender may edit a message"));
            }
            Some(_) if recalled => return Err(MessageError::Recalled),
            Some(_) if !in_time(self.edit_window_ms) => {
                return Err(MessageError::Forbidden("the edit window has passed"));
            }
            Some(_) => {}
            // A recall stored whole is not repeated; one whose event was
            // lost (see above) is completed.
            None if recalled && self.store.recall_stored(&conversation_id, at).await? => {
                return Err(MessageError::Recalled);
            }
            None if operator => {}
            None if mine && in_time(self.recall_window_ms) => {}
            None if self.is_owner(group, user_id).await? => {}
            None if mine => return Err(MessageError::Forbidden("the recall window has passed")),
            None => {
                return Err(MessageError::Forbidden(
                    "only the sender, or the group's owner, may recall a message",
                ));
            }
        }
        let edit = match edit {
            Some(content) => Some(
                self.attachments.claim(&content, user, &conversation_id).await?.unwrap_or(content),
            ),
            None => None,
        };
        if !self.store.change(&conversation_id, at, edit.as_deref()).await? && edit.is_some() {
            return Err(MessageError::Recalled);
        }
        if edit.is_none() {
            self.attachments.recall(&original.content_json).await?;
        }
        let draft = Draft {
            conversation_id,
            sender_id: user,
            target,
            kind: if edit.is_some() { MessageKind::Edit } else { MessageKind::Recall },
            content_json: edit.unwrap_or_else(|| "null".into()),
            client_msg_id: own_or_new(client_msg_id).0,
            ref_seq: Some(at),
            members_version,
            sender_device: device,
        };
        Ok(acked(self.store.submit(draft).await?.stored().await?))
    }

    /// Whether `user_id` owns the group (if it is one).
    async fn is_owner(&self, group_id: Option<u64>, user_id: u64) -> Result<bool, MessageError> {
        let Some(group_id) = group_id else { return Ok(false) };
        let group =
            self.peers.group.clone().get_group(GetGroupRequest { group_id }).await?.into_inner();
        Ok(group.owner_id == user_id)
    }

    /// Checks that `sender` may send to `target` and makes sure the
    /// conversation exists: its id, the stored target, and (for groups)
    /// the member list version the check saw.
    async fn authorise(
        &self,
        sender_id: u64,
        target: Option<Target>,
        system: bool,
    ) -> Result<(String, StoredTarget, Option<u64>), MessageError> {
        let target = target
            .ok_or(MessageError::Invalid("a recipient (to_user_id or group_id) is required"))?;
        let mut members_version = None;
        let (conversation_id, stored_target) = match target {
            Target::ToUserId(to) => {
                let id = self.require_peer(sender_id, to).await?;
                self.ensure_direct(&id, sender_id, to).await?;
                (id, StoredTarget::ToUserId(to))
            }
            Target::GroupId(group_id) => {
                if i64::try_from(group_id).is_err() {
                    return Err(MessageError::UnknownGroup);
                }
                if !system {
                    members_version = Some(self.require_member(group_id, sender_id).await?);
                } else {
                    let (version, _) =
                        self.router.members(group_id, None).await.map_err(|s| match s.code() {
                            tonic::Code::NotFound => MessageError::UnknownGroup,
                            _ => MessageError::Peer(s),
                        })?;
                    members_version = Some(version);
                }
                let id = conversation::group(group_id);
                self.ensure_group(&id).await?;
                (id, StoredTarget::GroupId(group_id))
            }
        };
        Ok((conversation_id, stored_target, members_version))
    }

    /// Checks a send and queues it for the writer; the writer stores it,
    /// hands it to the router and answers through the returned [`Queued`].
    async fn prepare(&self, request: SendRequest) -> Result<Prepared, MessageError> {
        let SendRequest { sender_id, client_msg_id, target, content_json, system, kind, device } =
            request;
        if sender_id == 0 && !system {
            return Err(MessageError::Invalid("sender_id is required"));
        }
        let kind = match MessageKind::try_from(kind) {
            Ok(MessageKind::Message) => MessageKind::Message,
            Ok(MessageKind::Membership) if system => MessageKind::Membership,
            _ => {
                return Err(MessageError::Invalid(
                    "kind must be MESSAGE (or MEMBERSHIP, system only)",
                ));
            }
        };
        self.check_body(&content_json, &client_msg_id)?;
        check_device(&device)?;
        let sender = i64::try_from(sender_id)
            .map_err(|_| MessageError::Invalid("sender_id out of range"))?;
        let (client_msg_id, retryable) = own_or_new(client_msg_id);
        let (conversation_id, stored_target, members_version) =
            match self.authorise(sender_id, target, system).await {
                Ok(authorised) => authorised,
                // A retry returns the original even if it would not be
                // allowed any more (the sender has left the group since):
                // it was authorised when first stored. Only refusals pay
                // for this lookup; a retry that is allowed again meets the
                // unique key when it is stored and gets the original there.
                Err(refused) if retryable && refused.is_refusal() => {
                    return match self.store.find_sent(sender, &client_msg_id).await? {
                        Some(original) => Ok(Prepared::Answered(SendResponse {
                            message: Some(original),
                            duplicate: true,
                        })),
                        None => Err(refused),
                    };
                }
                Err(error) => return Err(error),
            };
        // A message naming an attachment carries its metadata instead.
        let content_json = match system {
            false => self
                .attachments
                .claim(&content_json, sender, &conversation_id)
                .await?
                .unwrap_or(content_json),
            true => content_json,
        };
        let draft = Draft {
            conversation_id,
            sender_id: sender,
            target: stored_target,
            content_json,
            client_msg_id,
            kind,
            ref_seq: None,
            members_version,
            sender_device: device,
        };
        Ok(Prepared::Queued(self.store.submit(draft).await?))
    }

    async fn send(&self, request: SendRequest) -> Result<SendResponse, MessageError> {
        let queued = match self.prepare(request).await? {
            Prepared::Queued(queued) => queued,
            Prepared::Answered(response) => return Ok(response),
        };
        // Stored (and handed to the router) before this answer.
        Ok(match queued.stored().await? {
            Stored::Duplicate(original) => {
                SendResponse { message: Some(original), duplicate: true }
            }
            Stored::New(message) => SendResponse { message: Some(message), duplicate: false },
        })
    }

    /// Sends in order: each is checked and queued before the next, so they
    /// take seqs in the order given, and the writer commits them together.
    async fn send_batch(&self, sends: Vec<SendRequest>) -> Vec<SendResult> {
        let mut prepared = Vec::with_capacity(sends.len());
        for request in sends {
            prepared.push(self.prepare(request).await);
        }
        let mut results = Vec::with_capacity(prepared.len());
        for step in prepared {
            let outcome = match step {
                Ok(Prepared::Queued(queued)) => match queued.stored().await {
                    Ok(stored) => Ok(acked(stored)),
                    Err(error) => Err(MessageError::from(error)),
                },
                Ok(Prepared::Answered(response)) => {
                    Ok(slim(response.message.unwrap_or_default(), response.duplicate))
                }
                Err(error) => Err(error),
            };
            results.push(SendResult {
                outcome: Some(match outcome {
                    Ok(ack) => Outcome::Ack(ack),
                    Err(error) => {
                        let status = tonic::Status::from(error);
                        Outcome::Error(SendError {
                            code: tern_proto::error_code_of(&status).as_str().to_string(),
                            message: status.message().to_string(),
                        })
                    }
                }),
            });
        }
        results
    }
}

/// What [`Messages::change`] does to a stored message.
enum Act {
    /// Replaces its content (its sender, within the edit window).
    Edit(String),
    /// Recalls it (its sender within the recall window, or a group's owner).
    Recall,
    /// Recalls it for an operator: any message, at any age, as user 0.
    OperatorRecall,
}

/// Refuses a malformed device id (see `tern_proto::device`).
fn check_device(device: &str) -> Result<(), MessageError> {
    let valid = tern_proto::device::is_valid(device);
    valid.then_some(()).ok_or(MessageError::Invalid(tern_proto::device::RULE))
}

/// The sender's `client_msg_id`, or a new one when none was given (the
/// send is then simply not idempotent); whether it was the sender's.
fn own_or_new(client_msg_id: String) -> (String, bool) {
    if client_msg_id.is_empty() {
        (uuid::Uuid::now_v7().to_string(), false)
    } else {
        (client_msg_id, true)
    }
}

/// The ack of a stored entry, new or a duplicate.
fn acked(stored: Stored) -> SendAck {
    match stored {
        Stored::New(m) => slim(m, false),
        Stored::Duplicate(m) => slim(m, true),
    }
}

/// What a send's acknowledgement needs of a stored message.
fn slim(message: Message, duplicate: bool) -> SendAck {
    SendAck {
        message_id: message.message_id,
        conversation_id: message.conversation_id,
        seq: message.seq,
        created_at_ms: message.created_at_ms,
        client_msg_id: message.client_msg_id,
        duplicate,
    }
}

#[tonic::async_trait]
impl MessageService for Messages {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        Ok(Response::new(Messages::send(self, request.into_inner()).await?))
    }

    async fn send_batch(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let sends = request.into_inner().sends;
        if sends.len() > MAX_SEND_BATCH {
            return Err(MessageError::Invalid("at most 256 sends per batch").into());
        }
        Ok(Response::new(SendBatchResponse { results: Messages::send_batch(self, sends).await }))
    }

    async fn list_messages(
        &self,
        request: Request<ListMessagesRequest>,
    ) -> Result<Response<ListMessagesResponse>, Status> {
        let ListMessagesRequest { conversation_id, after_seq, limit } = request.into_inner();
        let limit = match limit {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let after = i64::try_from(after_seq)
            .map_err(|_| MessageError::Invalid("after_seq out of range"))?;
        let (messages, latest_seq) = self
            .store
            .list(&conversation_id, after, u64::from(limit))
            .await
            .map_err(MessageError::from)?;
        Ok(Response::new(ListMessagesResponse { messages, latest_seq }))
    }

    async fn get_conversation_states(
        &self,
        request: Request<GetConversationStatesRequest>,
    ) -> Result<Response<GetConversationStatesResponse>, Status> {
        let GetConversationStatesRequest { conversation_ids: ids, after_seqs, limit, groups } =
            request.into_inner();
        if ids.len() > MAX_STATES {
            return Err(MessageError::Invalid("at most 10000 conversation ids per call").into());
        }
        if !after_seqs.is_empty() && after_seqs.len() != ids.len() {
            return Err(MessageError::Invalid("after_seqs must give one position per id").into());
        }
        let grouped: u64 = groups.iter().map(|g| u64::from(g.size)).sum();
        if groups.len() > MAX_STATES || (!groups.is_empty() && grouped != ids.len() as u64) {
            return Err(
                MessageError::Invalid("group sizes must add up to the number of ids").into()
            );
        }
        let mut heads = std::collections::HashMap::new();
        for chunk in ids.chunks(500) {
            heads.extend(self.store.heads(chunk).await.map_err(MessageError::from)?);
        }
        // Each conversation's page as a range of seqs (seqs have no gaps),
        // while its group's budget lasts; then every page in a few reads.
        let groups = match groups.is_empty() {
            true => vec![(ids.len(), limit)],
            false => groups.iter().map(|g| (g.size as usize, g.limit)).collect(),
        };
        let (mut ranges, mut paged) = (Vec::new(), Vec::with_capacity(ids.len()));
        let mut at = 0;
        for (size, limit) in groups {
            let mut budget = match after_seqs.is_empty() {
                true => 0,
                false => u64::from(limit.min(MAX_PAGE)),
            };
            for (i, id) in ids.iter().enumerate().skip(at).take(size) {
                let latest = heads.get(id).copied().unwrap_or(0);
                let after = after_seqs.get(i).copied().unwrap_or(0);
                let wanted = budget > 0 && latest > after;
                if wanted {
                    let take = (latest - after).min(budget);
                    budget -= take;
                    // Below a head read from an i64 column, so in range.
                    ranges.push((id.clone(), after as i64, (after + take) as i64));
                }
                paged.push(wanted);
            }
            at += size;
        }
        let mut pages = self.store.pages(&ranges).await.map_err(MessageError::from)?.into_iter();
        let states = ids
            .into_iter()
            .zip(paged)
            .map(|(id, paged)| ConversationState {
                latest_seq: heads.get(&id).copied().unwrap_or(0),
                messages: if paged { pages.next().unwrap_or_default() } else { Vec::new() },
                conversation_id: id,
            })
            .collect();
        Ok(Response::new(GetConversationStatesResponse { states }))
    }

    async fn typing(
        &self,
        request: Request<TypingRequest>,
    ) -> Result<Response<TypingResponse>, Status> {
        Ok(Response::new(Messages::typing(self, request.into_inner()).await?))
    }

    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        Ok(Response::new(Messages::mark_read(self, request.into_inner()).await?))
    }

    async fn recall(&self, request: Request<RecallRequest>) -> Result<Response<SendAck>, Status> {
        let RecallRequest { user_id, conversation_id, seq, client_msg_id, device, system } =
            request.into_inner();
        let act = if system { Act::OperatorRecall } else { Act::Recall };
        let recall = self.change(user_id, conversation_id, seq, client_msg_id, act, device);
        Ok(Response::new(recall.await?))
    }

    async fn create_upload(
        &self,
        request: Request<CreateUploadRequest>,
    ) -> Result<Response<CreateUploadResponse>, Status> {
        Ok(Response::new(Messages::create_upload(self, request.into_inner()).await?))
    }

    async fn complete_upload(
        &self,
        request: Request<CompleteUploadRequest>,
    ) -> Result<Response<Attachment>, Status> {
        let CompleteUploadRequest { user_id, attachment_id } = request.into_inner();
        let user = i64::try_from(user_id).map_err(|_| MessageError::Invalid("bad user_id"))?;
        Ok(Response::new(self.attachments.complete(user, &attachment_id).await?))
    }

    async fn get_attachment(
        &self,
        request: Request<GetAttachmentRequest>,
    ) -> Result<Response<GetAttachmentResponse>, Status> {
        Ok(Response::new(Messages::get_attachment(self, request.into_inner()).await?))
    }

    async fn edit(&self, request: Request<EditRequest>) -> Result<Response<SendAck>, Status> {
        let EditRequest { user_id, conversation_id, seq, content_json, client_msg_id, device } =
            request.into_inner();
        let edit = self.change(
            user_id,
            conversation_id,
            seq,
            client_msg_id,
            Act::Edit(content_json),
            device,
        );
        Ok(Response::new(edit.await?))
    }
}
