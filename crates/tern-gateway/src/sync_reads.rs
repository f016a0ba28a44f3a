//! The storage reads of session syncs. A session's backlog listing is
//! queued and sent with the listings of every other session of this node
//! that queued meanwhile, in one `ListBacklogs` call: while a batch is out
//! the next gathers, so a lone reconnect is listed at once and a storm of
//! them costs a few reads per batch rather than per session. Pulls (gap
//! fills and large backlogs) go out as they come.

use std::sync::Arc;
use tern_proto::{
    clients::OfflineClient,
    pb::offline::{
        ListBacklogRequest, ListBacklogResponse, ListBacklogsRequest, PullRequest, PullResponse,
    },
};
use tern_runtime::grpc::GrpcChannel;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

/// Most listings in one call (the offline service takes up to 1,000).
const MAX_LISTINGS: usize = 256;

/// Batches out at once: one gathers while another is answered.
const IN_FLIGHT: usize = 2;

type Answer = oneshot::Sender<Result<ListBacklogResponse, Status>>;

/// Shared by a node's sessions.
pub struct SyncReads {
    offline: OfflineClient<GrpcChannel>,
    queue: mpsc::UnboundedSender<(ListBacklogRequest, Answer)>,
}

impl SyncReads {
    /// Starts the batching task, which ends once every handle is gone.
    /// Must be called on the runtime that serves the sessions.
    pub fn new(offline: OfflineClient<GrpcChannel>) -> Arc<Self> {
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(gather(offline.clone(), queued));
        Arc::new(Self { offline, queue })
    }

    /// One user's backlog, as `ListBacklog` answers it, listed in a batch.
    pub async fn list(&self, request: ListBacklogRequest) -> Result<ListBacklogResponse, Status> {
        let (answer, answered) = oneshot::channel();
        let stopped = || Status::unavailable("backlog listing stopped");
        self.queue.send((request, answer)).map_err(|_| stopped())?;
        answered.await.map_err(|_| stopped())?
    }

    pub async fn pull(&self, request: PullRequest) -> Result<PullResponse, Status> {
        Ok(self.offline.clone().pull(request).await?.into_inner())
    }
}

/// Sends what is queued, up to [`MAX_LISTINGS`] a call and [`IN_FLIGHT`]
/// calls at a time, until every [`SyncReads`] handle is gone.
async fn gather(
    offline: OfflineClient<GrpcChannel>,
    mut queued: mpsc::UnboundedReceiver<(ListBacklogRequest, Answer)>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let batch_size = metrics::histogram!("tern_gateway_sync_listing_batch_size");
    let mut batch = Vec::with_capacity(MAX_LISTINGS);
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        if queued.recv_many(&mut batch, MAX_LISTINGS).await == 0 {
            return;
        }
        batch_size.record(batch.len() as f64);
        let (requests, answers): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let mut offline = offline.clone();
        tokio::spawn(async move {
            let listed = offline.list_backlogs(ListBacklogsRequest { requests }).await;
            match listed.map(|answer| answer.into_inner().answers) {
                Ok(lists) if lists.len() == answers.len() => {
                    for (answer, list) in answers.into_iter().zip(lists) {
                        let _ = answer.send(Ok(list));
                    }
                }
                Ok(_) => answer_all(answers, &Status::internal("listings and answers differ")),
                Err(status) => answer_all(answers, &status),
            }
            drop(slot);
        });
    }
}

fn answer_all(answers: Vec<Answer>, status: &Status) {
    for answer in answers {
        let _ = answer.send(Err(status.clone()));
    }
}
