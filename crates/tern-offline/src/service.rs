//! The `tern.offline.v1.OfflineService` implementation.

use crate::{OfflineError, Peers, store::Store};
use std::collections::HashMap;
use tern_proto::{
    conversation,
    pb::{
        message::{
            ConversationState, GetConversationStatesRequest, ListMessagesRequest, PageGroup,
        },
        offline::{
            AckBatchRequest, AckBatchResponse, AckRequest, AckResponse, Backlog,
            DropCursorsRequest, DropCursorsResponse, InitCursorsRequest, InitCursorsResponse,
            ListBacklogRequest, ListBacklogResponse, ListBacklogsRequest, ListBacklogsResponse,
            MarkReadRequest, MarkReadResponse, PullRequest, PullResponse, ReadPosition,
            ReadPositionsRequest, ReadPositionsResponse, SharedWithRequest, SharedWithResponse,
            offline_service_server::OfflineService,
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

/// Most listings one `ListBacklogs` call may carry.
const MAX_LISTINGS: usize = 1_000;

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
        let mut heads = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(STATES_PER_CALL) {
            let request = GetConversationStatesRequest {
                conversation_ids: chunk.to_vec(),
                ..Default::default()
            };
            let answer = self.peers.message.clone().get_conversation_states(request).await?;
            heads.extend(
                answer.into_inner().states.into_iter().map(|s| (s.conversation_id, s.latest_seq)),
            );
        }
        Ok(heads)
    }

    /// Each listing's conversation states from the message service, with
    /// the messages after each position, up to the listing's page: as few
    /// calls as the per-call cap allows. A listing too large for one call
    /// is sent in pieces, each carrying what its page has left.
    async fn paged_states(
        &self,
        listings: Vec<Listing>,
    ) -> Result<Vec<Vec<ConversationState>>, OfflineError> {
        let mut answers = Vec::with_capacity(listings.len());
        let mut call = StatesCall::default();
        for listing in listings {
            if call.len() + listing.ids.len() > STATES_PER_CALL {
                answers.extend(call.send(self).await?);
            }
            if listing.ids.len() <= STATES_PER_CALL {
                call.add(listing.ids, listing.after, listing.page);
                continue;
            }
            let (mut states, mut page) = (Vec::with_capacity(listing.ids.len()), listing.page);
            for (ids, after) in
                listing.ids.chunks(STATES_PER_CALL).zip(listing.after.chunks(STATES_PER_CALL))
            {
                call.add(ids.to_vec(), after.to_vec(), page);
                let piece = call.send(self).await?.pop().unwrap_or_default();
                let carried: usize = piece.iter().map(|s| s.messages.len()).sum();
                page = page.saturating_sub(carried as u32);
                states.extend(piece);
            }
            answers.push(states);
        }
        answers.extend(call.send(self).await?);
        Ok(answers)
    }

    /// Lists the backlogs of many `(user, device)` at once (see
    /// `ListBacklogs`): the cursors of all of them in one read, and every
    /// page in as few message-service calls as the cap allows.
    async fn backlogs(
        &self,
        requests: Vec<ListBacklogRequest>,
    ) -> Result<Vec<ListBacklogResponse>, OfflineError> {
        let users: Vec<i64> =
            requests.iter().map(|r| user_id(r.user_id)).collect::<Result<_, _>>()?;
        requests.iter().try_for_each(|r| valid_device(&r.device))?;
        let mut distinct = users.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let mut cursors: HashMap<i64, Vec<Cursor>> = HashMap::new();
        for cursor in self.store.of_users(&distinct).await? {
            cursors.entry(cursor.user_id).or_default().push(cursor);
        }
        let mut named: Vec<(i64, String)> = users
            .iter()
            .zip(&requests)
            .filter(|(_, r)| !r.device.is_empty())
            .map(|(&user, r)| (user, r.device.clone()))
            .collect();
        named.sort_unstable();
        named.dedup();
        let mut devices = self.store.of_devices(&named).await?;
        // A device's first listing pins its cursors at the read marker (or
        // at an ack of the device not written yet), so from then on it is
        // sent everything it has not acked itself.
        let mut pins = Vec::new();
        for (&user, request) in users.iter().zip(&requests).filter(|(_, r)| !r.device.is_empty()) {
            let own = devices.entry((user, request.device.clone())).or_default();
            for c in cursors.get(&user).into_iter().flatten() {
                if own.contains_key(&c.conversation_id) {
                    continue;
                }
                // An ack out of range is dropped, as `AckBatch` drops it.
                let unwritten = request.unwritten_acks.get(&c.conversation_id);
                let unwritten = unwritten.and_then(|&seq| i64::try_from(seq).ok());
                let seq = unwritten.unwrap_or(c.read_seq);
                own.insert(c.conversation_id.clone(), seq);
                pins.push((user, request.device.clone(), c.conversation_id.clone(), seq));
            }
        }
        self.store.pin_devices(&pins).await?;
        let no_cursors = Vec::new();
        let mut listings = Vec::with_capacity(requests.len());
        let mut positions = Vec::with_capacity(requests.len());
        for (&user, request) in users.iter().zip(&requests) {
            let mine = cursors.get(&user).unwrap_or(&no_cursors);
            let own = devices.get(&(user, request.device.clone()));
            let acked: Vec<u64> = mine
                .iter()
                .map(|c| {
                    device_acked(
                        c,
                        &request.device,
                        own.and_then(|o| o.get(&c.conversation_id).copied()),
                    )
                })
                .collect();
            // History from before the member joined is not theirs.
            let after = mine.iter().zip(&acked).map(|(c, &a)| a.max(c.start_seq as u64)).collect();
            let ids = mine.iter().map(|c| c.conversation_id.clone()).collect();
            listings.push(Listing { ids, after, page: request.page.min(MAX_PAGE) });
            positions.push((mine, acked));
        }
        let states = self.paged_states(listings).await?;
        let mut answers = Vec::with_capacity(requests.len());
        for ((request, (mine, acked)), states) in requests.iter().zip(positions).zip(states) {
            let mut conversations = Vec::new();
            for ((c, acked), state) in mine.iter().zip(acked).zip(states) {
                if !request.include_read && state.latest_seq <= acked {
                    continue;
                }
                conversations.push(Backlog {
                    conversation_id: c.conversation_id.clone(),
                    acked_seq: acked,
                    latest_seq: state.latest_seq,
                    read_seq: c.read_seq as u64,
                    messages: state.messages,
                });
            }
            answers.push(ListBacklogResponse { conversations });
        }
        Ok(answers)
    }
}

type Cursor = crate::store::cursors::Model;

/// One user's conversations, positions and page, for [`Offline::paged_states`].
struct Listing {
    ids: Vec<String>,
    after: Vec<u64>,
    page: u32,
}

/// A `GetConversationStates` call being filled, one group per listing.
#[derive(Default)]
struct StatesCall {
    request: GetConversationStatesRequest,
}

impl StatesCall {
    fn len(&self) -> usize {
        self.request.conversation_ids.len()
    }

    fn add(&mut self, ids: Vec<String>, after: Vec<u64>, page: u32) {
        let size = ids.len() as u32;
        self.request.conversation_ids.extend(ids);
        self.request.after_seqs.extend(after);
        self.request.groups.push(PageGroup { size, limit: page });
    }

    /// Makes the call, if it names any conversation, and splits the
    /// answer into one list per group (users in no conversation get an
    /// empty one without a call).
    async fn send(
        &mut self,
        offline: &Offline,
    ) -> Result<Vec<Vec<ConversationState>>, OfflineError> {
        let request = std::mem::take(&mut self.request);
        if request.conversation_ids.is_empty() {
            return Ok(vec![Vec::new(); request.groups.len()]);
        }
        let sizes: Vec<usize> = request.groups.iter().map(|g| g.size as usize).collect();
        let answer = offline.peers.message.clone().get_conversation_states(request).await?;
        let mut states = answer.into_inner().states.into_iter();
        Ok(sizes.into_iter().map(|size| states.by_ref().take(size).collect()).collect())
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
        let answer = self.backlogs(vec![request.into_inner()]).await?.pop();
        Ok(Response::new(answer.unwrap_or_default()))
    }

    async fn list_backlogs(
        &self,
        request: Request<ListBacklogsRequest>,
    ) -> Result<Response<ListBacklogsResponse>, Status> {
        let requests = request.into_inner().requests;
        if requests.len() > MAX_LISTINGS {
            return Err(OfflineError::Invalid("at most 1000 listings per call").into());
        }
        let answers = self.backlogs(requests).await?;
        Ok(Response::new(ListBacklogsResponse { answers }))
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
