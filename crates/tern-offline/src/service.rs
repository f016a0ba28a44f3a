//! The `tern.offline.v1.OfflineService` implementation.

use crate::{OfflineError, Peers, store::Store};
use std::collections::HashMap;
use tern_proto::{
    conversation,
    pb::{
        message::{ConversationState, GetConversationStatesRequest, ListMessagesRequest},
        offline::{
            AckBatchRequest, AckBatchResponse, AckRequest, AckResponse, Backlog,
            DropCursorsRequest, DropCursorsResponse, InitCursorsRequest, InitCursorsResponse,
            ListBacklogRequest, ListBacklogResponse, MarkReadRequest, MarkReadResponse,
            PullRequest, PullResponse, ReadPosition, ReadPositionsRequest, ReadPositionsResponse,
            SharedWithRequest, SharedWithResponse, offline_service_server::OfflineService,
        },
    },
};
use tonic::{Request, Response, Status};

/// Most candidates one `SharedWith` call may name.
const MAX_CANDIDATES: usize = 1_000;

/// Most messages one `ListBacklog` answer carries.
const MAX_PAGE: u32 = 1_000;

/// Conversations per `GetConversationStates` call (the message service
/// takes up to 10,000).
const STATES_PER_CALL: usize = 5_000;

/// Most acks one `AckBatch` call may carry.
const MAX_ACK_BATCH: usize = 10_000;

/// The offline service.
#[derive(Clone)]
pub struct Offline {
    store: Store,
    peers: Peers,
}

fn user_id(id: u64) -> Result<i64, OfflineError> {
    i64::try_from(id).map_err(|_| OfflineError::NotMember)
}

fn valid_device(device: &str) -> Result<(), OfflineError> {
    let valid = tern_proto::device::is_valid(device);
    valid.then_some(()).ok_or(OfflineError::Invalid(tern_proto::device::RULE))
}

/// Where `device`'s delivery cursor is, given the member's row `cursor` and
/// the device's own row `own`: the default device's is the member's row;
/// another device's, until it has its own row, starts at the read marker.
fn device_acked(cursor: &crate::store::cursors::Model, device: &str, own: Option<i64>) -> u64 {
    match device.is_empty() {
        true => cursor.acked_seq as u64,
        false => own.unwrap_or(cursor.read_seq) as u64,
    }
}

fn valid_conversation(id: &str) -> Result<(), OfflineError> {
    conversation::parse(id).map(|_| ()).ok_or(OfflineError::Invalid("malformed conversation_id"))
}

impl Offline {
    pub(crate) fn new(db: sea_orm::DatabaseConnection, peers: Peers) -> Self {
        Self { store: Store::new(db), peers }
    }

    /// The user's cursor in a conversation; `NotMember` without one.
    async fn cursor(
        &self,
        user: i64,
        conversation_id: &str,
    ) -> Result<crate::store::cursors::Model, OfflineError> {
        self.store.get(user, conversation_id).await?.ok_or(OfflineError::NotMember)
    }

    /// Where `device`'s delivery cursor is in the conversation of `cursor`
    /// (see [`device_acked`]).
    async fn acked(
        &self,
        cursor: &crate::store::cursors::Model,
        device: &str,
    ) -> Result<u64, OfflineError> {
        if device.is_empty() {
            return Ok(device_acked(cursor, device, None));
        }
        let own = self.store.device_get(cursor.user_id, device, &cursor.conversation_id).await?;
        Ok(device_acked(cursor, device, own))
    }

    /// Refuses a seq beyond the conversation's latest message: acking or
    /// reading it would hide messages not yet sent.
    async fn require_sent(&self, conversation_id: &str, seq: u64) -> Result<(), OfflineError> {
        let heads = self.heads(vec![conversation_id.to_string()]).await?;
        if seq > heads.get(conversation_id).copied().unwrap_or(0) {
            return Err(OfflineError::Invalid("seq is beyond the latest message"));
        }
        Ok(())
    }

    /// Latest seq of each conversation, from the message service.
    async fn heads(&self, ids: Vec<String>) -> Result<HashMap<String, u64>, OfflineError> {
        let states = self.states(ids, Vec::new(), 0).await?;
        Ok(states.into_iter().map(|s| (s.conversation_id, s.latest_seq)).collect())
    }

    /// Each conversation's state from the message service, in the order
    /// of `ids`; with `after` (one position per id), also the messages
    /// after each position, `limit` in all.
    async fn states(
        &self,
        ids: Vec<String>,
        after: Vec<u64>,
        limit: u32,
    ) -> Result<Vec<ConversationState>, OfflineError> {
        let mut states = Vec::with_capacity(ids.len());
        let mut budget = limit;
        for (i, chunk) in ids.chunks(STATES_PER_CALL).enumerate() {
            let after_seqs = match after.is_empty() {
                true => Vec::new(),
                false => after[i * STATES_PER_CALL..][..chunk.len()].to_vec(),
            };
            let request = GetConversationStatesRequest {
                conversation_ids: chunk.to_vec(),
                after_seqs,
                limit: budget,
            };
            let answer = self.peers.message.clone().get_conversation_states(request).await?;
            let chunk_states = answer.into_inner().states;
            let carried: usize = chunk_states.iter().map(|s| s.messages.len()).sum();
            budget = budget.saturating_sub(carried as u32);
            states.extend(chunk_states);
        }
        Ok(states)
    }
}

#[tonic::async_trait]
impl OfflineService for Offline {
    async fn init_cursors(
        &self,
        request: Request<InitCursorsRequest>,
    ) -> Result<Response<InitCursorsResponse>, Status> {
        let InitCursorsRequest { conversation_id, user_ids, start_seq } = request.into_inner();
        valid_conversation(&conversation_id)?;
        let start = match start_seq {
            Some(seq) => seq,
            None => self
                .heads(vec![conversation_id.clone()])
                .await?
                .get(&conversation_id)
                .copied()
                .unwrap_or(0),
        };
        let users: Vec<i64> = user_ids.into_iter().map(user_id).collect::<Result<_, _>>()?;
        self.store
            .init(&conversation_id, &users, start as i64)
            .await
            .map_err(OfflineError::from)?;
        Ok(Response::new(InitCursorsResponse { start_seq: start }))
    }

    async fn drop_cursors(
        &self,
        request: Request<DropCursorsRequest>,
    ) -> Result<Response<DropCursorsResponse>, Status> {
        let DropCursorsRequest { conversation_id, user_ids } = request.into_inner();
        let users: Vec<i64> = user_ids.into_iter().filter_map(|u| i64::try_from(u).ok()).collect();
        self.store.drop(&conversation_id, &users).await.map_err(OfflineError::from)?;
        Ok(Response::new(DropCursorsResponse {}))
    }

    async fn list_backlog(
        &self,
        request: Request<ListBacklogRequest>,
    ) -> Result<Response<ListBacklogResponse>, Status> {
        let ListBacklogRequest { user_id: user, include_read, device, page, unwritten_acks } =
            request.into_inner();
        let user = user_id(user)?;
        valid_device(&device)?;
        let cursors = self.store.of_user(user).await.map_err(OfflineError::from)?;
        // A device's first listing pins its cursors at the read marker (or
        // at an ack of the device not written yet), so from then on it is
        // sent everything it has not acked itself.
        let mut devices = HashMap::new();
        if !device.is_empty() {
            devices = self.store.of_device(user, &device).await.map_err(OfflineError::from)?;
            let missing: Vec<(String, i64)> = cursors
                .iter()
                .filter(|c| !devices.contains_key(&c.conversation_id))
                .map(|c| {
                    // An ack out of range is dropped, as `AckBatch` drops it.
                    let unwritten = unwritten_acks.get(&c.conversation_id);
                    let unwritten = unwritten.and_then(|&seq| i64::try_from(seq).ok());
                    (c.conversation_id.clone(), unwritten.unwrap_or(c.read_seq))
                })
                .collect();
            self.store.pin_device(user, &device, &missing).await.map_err(OfflineError::from)?;
            devices.extend(missing);
        }
        let acked: Vec<u64> = cursors
            .iter()
            .map(|c| device_acked(c, &device, devices.get(&c.conversation_id).copied()))
            .collect();
        // Each conversation's head and the messages after the device's
        // position, from one call: history from before the member joined
        // is not theirs.
        let after: Vec<u64> =
            cursors.iter().zip(&acked).map(|(c, &a)| a.max(c.start_seq as u64)).collect();
        let ids = cursors.iter().map(|c| c.conversation_id.clone()).collect();
        let states = self.states(ids, after, page.min(MAX_PAGE)).await?;
        let mut conversations = Vec::new();
        for ((c, acked), state) in cursors.into_iter().zip(acked).zip(states) {
            if !include_read && state.latest_seq <= acked {
                continue;
            }
            conversations.push(Backlog {
                conversation_id: c.conversation_id,
                acked_seq: acked,
                latest_seq: state.latest_seq,
                read_seq: c.read_seq as u64,
                messages: state.messages,
            });
        }
        Ok(Response::new(ListBacklogResponse { conversations }))
    }

    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullResponse>, Status> {
        let PullRequest { user_id: user, conversation_id, after_seq, limit, device } =
            request.into_inner();
        let user = user_id(user)?;
        valid_device(&device)?;
        let cursor = self.cursor(user, &conversation_id).await?;
        let acked = self.acked(&cursor, &device).await?;
        let page = self
            .peers
            .message
            .clone()
            .list_messages(ListMessagesRequest {
                conversation_id,
                // History from before the member joined is not theirs.
                after_seq: after_seq.unwrap_or(acked).max(cursor.start_seq as u64),
                limit,
            })
            .await
            .map_err(OfflineError::from)?
            .into_inner();
        Ok(Response::new(PullResponse {
            messages: page.messages,
            acked_seq: acked,
            latest_seq: page.latest_seq,
        }))
    }

    async fn ack_batch(
        &self,
        request: Request<AckBatchRequest>,
    ) -> Result<Response<AckBatchResponse>, Status> {
        let acks = request.into_inner().acks;
        if acks.len() > MAX_ACK_BATCH {
            return Err(OfflineError::Invalid("at most 10000 acks per batch").into());
        }
        acks.iter().try_for_each(|a| valid_device(&a.device))?;
        let acks: Vec<crate::store::Ack> = acks
            .into_iter()
            .filter_map(|a| {
                Some((
                    i64::try_from(a.user_id).ok()?,
                    a.device,
                    a.conversation_id,
                    i64::try_from(a.seq).ok()?,
                ))
            })
            .collect();
        let advanced = self.store.advance_many(&acks).await.map_err(OfflineError::from)?;
        Ok(Response::new(AckBatchResponse { advanced: advanced as u32 }))
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let AckRequest { user_id: user, conversation_id, seq, device } = request.into_inner();
        let user = user_id(user)?;
        valid_device(&device)?;
        let cursor = self.cursor(user, &conversation_id).await?;
        let acked = self.acked(&cursor, &device).await?;
        if seq <= acked {
            return Ok(Response::new(AckResponse { acked_seq: acked }));
        }
        // An ack beyond the head would hide messages not yet sent.
        self.require_sent(&conversation_id, seq).await?;
        self.store
            .advance(user, &device, &conversation_id, seq as i64)
            .await
            .map_err(OfflineError::from)?;
        Ok(Response::new(AckResponse { acked_seq: seq }))
    }

    async fn mark_read(
        &self,
        request: Request<MarkReadRequest>,
    ) -> Result<Response<MarkReadResponse>, Status> {
        let MarkReadRequest { user_id: user, conversation_id, seq } = request.into_inner();
        let user = user_id(user)?;
        let cursor = self.cursor(user, &conversation_id).await?;
        let read = cursor.read_seq as u64;
        if seq <= read {
            return Ok(Response::new(MarkReadResponse { read_seq: read, advanced: false }));
        }
        self.require_sent(&conversation_id, seq).await?;
        let advanced = self
            .store
            .advance_read(user, &conversation_id, seq as i64)
            .await
            .map_err(OfflineError::from)?;
        // Not moved here means another call moved it at least as far.
        Ok(Response::new(MarkReadResponse { read_seq: seq, advanced }))
    }

    async fn read_positions(
        &self,
        request: Request<ReadPositionsRequest>,
    ) -> Result<Response<ReadPositionsResponse>, Status> {
        let ReadPositionsRequest { user_id: user, conversation_id } = request.into_inner();
        let user = user_id(user)?;
        self.cursor(user, &conversation_id).await?;
        let rows =
            self.store.read_positions(&conversation_id, user).await.map_err(OfflineError::from)?;
        let positions = rows
            .into_iter()
            .map(|(seq, members)| ReadPosition { seq: seq as u64, members: members as u32 })
            .collect();
        Ok(Response::new(ReadPositionsResponse { positions }))
    }

    async fn shared_with(
        &self,
        request: Request<SharedWithRequest>,
    ) -> Result<Response<SharedWithResponse>, Status> {
        let SharedWithRequest { user_id: user, candidates } = request.into_inner();
        if candidates.len() > MAX_CANDIDATES {
            return Err(OfflineError::Invalid("at most 1000 candidates").into());
        }
        let me = user_id(user)?;
        let candidates: Vec<i64> =
            candidates.into_iter().filter_map(|c| i64::try_from(c).ok()).collect();
        let conversations: Vec<String> = self
            .store
            .of_user(me)
            .await
            .map_err(OfflineError::from)?
            .into_iter()
            .map(|c| c.conversation_id)
            .collect();
        let mut shared = self
            .store
            .members_among(&conversations, &candidates)
            .await
            .map_err(OfflineError::from)?;
        if candidates.contains(&me) && !shared.contains(&me) {
            shared.push(me);
        }
        Ok(Response::new(SharedWithResponse {
            user_ids: shared.into_iter().map(|u| u as u64).collect(),
        }))
    }
}
