//! Conversations and messages: the rows, and the transactions that assign
//! seqs.
//!
//! Appends go through one writer task per store, which commits whatever has
//! queued up meanwhile in a single transaction (group commit): one commit,
//! one statement that moves every conversation head of the batch, one that
//! reads the new heads back, and one multi-row insert. Under light load a
//! batch is one message; under heavy load the per-commit cost (on SQLite
//! the WAL write and fsync, on a server the log flush) is shared by the
//! batch, and the next batch gathers in the queue while this one commits.
//! On MariaDB and PostgreSQL the next batch's statements also run while
//! the one before it commits, on a second connection, so the server's log
//! flush overlaps the next batch's work.
//! A batch that fails as a whole is replayed one message per transaction,
//! so one bad message (a concurrent duplicate, say) fails alone.
//!
//! Committed messages are handed to the router in commit order, before
//! their senders are answered, so pushes leave in seq order.
//!
//! With webhooks on, each transaction also writes a `message.stored` event
//! per message into the outbox (see `tern-webhook`): on SQLite one more
//! statement of the writer's script, elsewhere one more insert.

use sea_orm::sqlx::{self, Arguments, Row, Sqlite, SqlitePool, sqlite::SqliteArguments};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, SqlErr, TransactionTrait,
    sea_query::{CaseStatement, Expr, ExprTrait, SimpleExpr},
};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};
use tern_proto::pb::message::{Message, MessageKind, message::Target};
use tern_runtime::clock::{now_ms, now_secs};
use tern_webhook::{Event, Outbox};
use tokio::sync::{mpsc, oneshot};

/// Most messages committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Ranges one read of [`Store::pages`] asks for (three parameters each).
const PAGES_PER_READ: usize = 300;

pub mod conversations {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "conversations")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub last_seq: i64,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod messages {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "messages")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub conversation_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub seq: i64,
        pub message_id: String,
        pub sender_id: i64,
        pub to_user_id: Option<i64>,
        pub group_id: Option<i64>,
        #[sea_orm(column_type = "Text")]
        pub content_json: String,
        pub client_msg_id: String,
        pub created_at_ms: i64,
        /// `MessageKind`: a message, or an event about `ref_seq`.
        pub kind: i32,
        pub ref_seq: Option<i64>,
        pub edited_at_ms: Option<i64>,
        pub recalled_at_ms: Option<i64>,
        /// The device it was sent from; empty for the default device.
        pub sender_device: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// A message about to be stored; the store adds id, seq and time.
pub struct Draft {
    pub conversation_id: String,
    pub sender_id: i64,
    pub target: Target,
    pub content_json: String,
    pub client_msg_id: String,
    /// A message, or an event about the message at `ref_seq`.
    pub kind: MessageKind,
    pub ref_seq: Option<i64>,
    /// The group's member list version the send's check saw, handed to the
    /// router with the stored message (see [`Committed`]).
    pub members_version: Option<u64>,
    /// The sender's device, so the message reaches their other devices.
    pub sender_device: String,
}

/// A newly stored message on its way to the router, in commit order.
pub struct Committed {
    pub message: Message,
    pub members_version: Option<u64>,
}

/// What storing a draft did.
pub enum Stored {
    /// A new message.
    New(Message),
    /// `(sender, client_msg_id)` was already stored: the original.
    Duplicate(Message),
}

/// Typed access to conversations and messages.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// The writer task's queue.
    writer: mpsc::Sender<Job>,
    /// `tern_message_store_seconds` (queued → committed).
    store_seconds: metrics::Histogram,
    /// Messages committed in batches of more than one (read by tests).
    #[cfg_attr(not(test), allow(dead_code))]
    batched: Arc<AtomicU64>,
}

/// One append waiting for the writer.
struct Job {
    draft: Draft,
    done: oneshot::Sender<Result<Stored, DbErr>>,
}

/// An append the writer has queued; [`Queued::stored`] waits for its commit.
pub struct Queued {
    answer: oneshot::Receiver<Result<Stored, DbErr>>,
    started: std::time::Instant,
    /// `tern_message_store_seconds`, looked up once per store.
    seconds: metrics::Histogram,
}

impl Queued {
    /// Waits until the append is committed (or failed).
    #[tracing::instrument(name = "store.append", skip_all)]
    pub async fn stored(self) -> Result<Stored, DbErr> {
        let stored = self.answer.await.map_err(|_| writer_stopped())?;
        self.seconds.record(self.started.elapsed().as_secs_f64());
        stored
    }
}

fn writer_stopped() -> DbErr {
    DbErr::Custom("the store's writer stopped".into())
}

pub fn to_pb(row: messages::Model) -> Message {
    let target = match (row.to_user_id, row.group_id) {
        (_, Some(group)) => Some(Target::GroupId(group as u64)),
        (Some(user), None) => Some(Target::ToUserId(user as u64)),
        (None, None) => None,
    };
    Message {
        message_id: row.message_id,
        conversation_id: row.conversation_id,
        seq: row.seq as u64,
        sender_id: row.sender_id as u64,
        target,
        content_json: row.content_json,
        created_at_ms: row.created_at_ms,
        client_msg_id: row.client_msg_id,
        kind: row.kind,
        ref_seq: row.ref_seq.unwrap_or(0) as u64,
        edited_at_ms: row.edited_at_ms.unwrap_or(0),
        recalled_at_ms: row.recalled_at_ms.unwrap_or(0),
        sender_device: row.sender_device,
    }
}

impl Store {
    /// Wraps `db` and starts the writer task (needs a Tokio runtime).
    /// Every newly stored message goes to `committed`, in commit order.
    /// `db` serves reads; `write_db` (the writer's own connections, see
    /// [`tern_runtime::db::connect_writer`]) every append.
    /// `outbox` gets a `message.stored` event for every message, in the
    /// transaction that stores it.
    pub fn new(
        db: DatabaseConnection,
        write_db: DatabaseConnection,
        committed: mpsc::UnboundedSender<Committed>,
        outbox: Outbox,
    ) -> Self {
        let (writer, jobs) = mpsc::channel(MAX_BATCH * 4);
        let batched = Arc::new(AtomicU64::new(0));
        tokio::spawn(write_loop(write_db, jobs, committed, batched.clone(), outbox));
        let store_seconds = metrics::histogram!("tern_message_store_seconds");
        Self { db, writer, store_seconds, batched }
    }

    /// Messages committed so far in batches of more than one.
    #[cfg(test)]
    pub fn batched(&self) -> u64 {
        self.batched.load(Relaxed)
    }

    /// Whether the conversation row exists.
    pub async fn conversation_exists(&self, id: &str) -> Result<bool, DbErr> {
        Ok(conversations::Entity::find_by_id(id.to_string()).one(&self.db).await?.is_some())
    }

    /// Creates the conversation row if it is missing.
    pub async fn ensure_conversation(&self, id: &str) -> Result<(), DbErr> {
        conversations::Entity::insert(conversations::ActiveModel {
            id: Set(id.to_string()),
            last_seq: Set(0),
            created_at: Set(now_secs()),
        })
        .on_conflict_do_nothing_on([conversations::Column::Id])
        .exec(&self.db)
        .await?;
        Ok(())
    }

    /// The message a sender already stored under `client_msg_id`, if any.
    pub async fn find_sent(
        &self,
        sender: i64,
        client_msg_id: &str,
    ) -> Result<Option<Message>, DbErr> {
        find_sent(&self.db, sender, client_msg_id).await
    }

    /// Queues a draft for the writer, which stores it with the next seq of
    /// its conversation; drafts queued one after the other take seqs in that
    /// order. The seq bump and the insert share one transaction, so a failed
    /// insert leaves no gap. The conversation row must exist.
    pub async fn submit(&self, draft: Draft) -> Result<Queued, DbErr> {
        let started = std::time::Instant::now();
        let (done, answer) = oneshot::channel();
        self.writer.send(Job { draft, done }).await.map_err(|_| writer_stopped())?;
        Ok(Queued { answer, started, seconds: self.store_seconds.clone() })
    }

    /// Stores a draft, committed before this returns (see [`Store::submit`]).
    #[cfg(test)]
    #[tracing::instrument(name = "store.append", skip_all, fields(conversation = %draft.conversation_id))]
    pub async fn append(&self, draft: Draft) -> Result<Stored, DbErr> {
        self.submit(draft).await?.stored().await
    }

    /// The entry at `seq` of a conversation.
    pub async fn get(
        &self,
        conversation: &str,
        seq: i64,
    ) -> Result<Option<messages::Model>, DbErr> {
        messages::Entity::find_by_id((conversation.to_string(), seq)).one(&self.db).await
    }

    /// Changes a message that was not recalled: new content (`Some`, an
    /// edit) or none at all (a recall, which erases it for good). False when
    /// it was recalled already.
    pub async fn change(
        &self,
        conversation: &str,
        seq: i64,
        edit: Option<&str>,
    ) -> Result<bool, DbErr> {
        let now = now_ms();
        let update = messages::Entity::update_many()
            .filter(messages::Column::ConversationId.eq(conversation))
            .filter(messages::Column::Seq.eq(seq))
            .filter(messages::Column::RecalledAtMs.is_null());
        let update = match edit {
            Some(content) => update
                .col_expr(messages::Column::ContentJson, Expr::value(content))
                .col_expr(messages::Column::EditedAtMs, Expr::value(now)),
            None => update
                .col_expr(messages::Column::ContentJson, Expr::value("null"))
                .col_expr(messages::Column::RecalledAtMs, Expr::value(now)),
        };
        Ok(update.exec(&self.db).await?.rows_affected > 0)
    }

    /// Whether a recall event for the message at `seq` is stored.
    pub async fn recall_stored(&self, conversation: &str, seq: i64) -> Result<bool, DbErr> {
        let found = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation))
            .filter(messages::Column::Kind.eq(MessageKind::Recall as i32))
            .filter(messages::Column::RefSeq.eq(seq))
            .one(&self.db)
            .await?;
        Ok(found.is_some())
    }

    /// Messages with seq > `after`, in order, and the conversation's head.
    #[tracing::instrument(name = "store.list", skip_all)]
    pub async fn list(
        &self,
        conversation: &str,
        after: i64,
        limit: u64,
    ) -> Result<(Vec<Message>, u64), DbErr> {
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation))
            .filter(messages::Column::Seq.gt(after))
            .order_by_asc(messages::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        // A head moves only in the transaction that stores its message, and
        // seqs have no gaps: a page that stops short of `limit` ends at the
        // head as of the same read, so only a full or empty page asks.
        let head = match rows.last() {
            Some(last) if (rows.len() as u64) < limit => last.seq as u64,
            _ => self.heads(&[conversation.to_string()]).await?.pop().map_or(0, |(_, s)| s),
        };
        Ok((rows.into_iter().map(to_pb).collect(), head))
    }

    /// The messages of each range `(conversation, after, upto)`, seq in
    /// `after < seq <= upto`, in order, one list per range: many
    /// conversations' pages in one read per few hundred ranges. Seqs have
    /// no gaps, so a range up to a head read earlier is exactly the page
    /// `list` would give.
    #[tracing::instrument(name = "store.pages", skip_all)]
    pub async fn pages(&self, ranges: &[(String, i64, i64)]) -> Result<Vec<Vec<Message>>, DbErr> {
        // Rows by conversation, in seq order; ranges may overlap (two
        // members of one conversation listed together).
        let mut rows: HashMap<String, Vec<messages::Model>> = HashMap::new();
        for chunk in ranges.chunks(PAGES_PER_READ) {
            let mut any = sea_orm::Condition::any();
            for (conversation, after, upto) in chunk {
                any = any.add(
                    messages::Column::ConversationId
                        .eq(conversation.as_str())
                        .and(messages::Column::Seq.gt(*after))
                        .and(messages::Column::Seq.lte(*upto)),
                );
            }
            let found = messages::Entity::find()
                .filter(any)
                .order_by_asc(messages::Column::ConversationId)
                .order_by_asc(messages::Column::Seq)
                .all(&self.db)
                .await?;
            for row in found {
                let list = rows.entry(row.conversation_id.clone()).or_default();
                // The same row comes once per chunk that asks for it.
                if list.last().is_none_or(|last| last.seq < row.seq) {
                    list.push(row);
                } else if let Err(at) = list.binary_search_by_key(&row.seq, |r| r.seq) {
                    list.insert(at, row);
                }
            }
        }
        Ok(ranges
            .iter()
            .map(|(conversation, after, upto)| {
                let Some(list) = rows.get(conversation.as_str()) else { return Vec::new() };
                let from = list.partition_point(|r| r.seq <= *after);
                let to = list.partition_point(|r| r.seq <= *upto);
                list[from..to].iter().cloned().map(to_pb).collect()
            })
            .collect())
    }

    /// `(id, last_seq)` of the conversations that exist among `ids`.
    pub async fn heads(&self, ids: &[String]) -> Result<Vec<(String, u64)>, DbErr> {
        let rows: Vec<(String, i64)> = conversations::Entity::find()
            .select_only()
            .column(conversations::Column::Id)
            .column(conversations::Column::LastSeq)
            .filter(conversations::Column::Id.is_in(ids.iter().cloned()))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|(id, seq)| (id, seq as u64)).collect())
    }
}

/// Commits queued appends, a batch at a time, until every `Store` clone is
/// gone. While one batch commits, the next gathers in the queue; on a
/// database server its statements also run meanwhile (see [`Committing`]).
async fn write_loop(
    db: DatabaseConnection,
    mut jobs: mpsc::Receiver<Job>,
    committed: mpsc::UnboundedSender<Committed>,
    batched: Arc<AtomicU64>,
    outbox: Outbox,
) {
    let duplicate_total = metrics::counter!("tern_messages_duplicate_total");
    let batch_size = metrics::histogram!("tern_message_store_batch_size");
    let outbox = outbox.wants(STORED).then_some(outbox);
    let answers = Answers {
        committed,
        batched,
        outbox: outbox.clone(),
        stored_total: metrics::counter!("tern_messages_stored_total"),
        commit_seconds: metrics::histogram!("tern_message_store_commit_seconds"),
    };
    let mut sqlite = (db.get_database_backend() == sea_orm::DbBackend::Sqlite)
        .then(|| SqliteWriter::new(db.get_sqlite_connection_pool().clone()));
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // On a database server: the batch whose commit is in flight.
    let mut committing: Option<Committing> = None;
    loop {
        if let Some(writer) = &mut sqlite {
            writer.checkpoint_if_due(!jobs.is_empty()).await;
        }
        let received = match &mut committing {
            // Nothing queued: answer the batch in flight as soon as its
            // commit is done, unless a job comes first.
            Some(in_flight) if jobs.is_empty() => tokio::select! {
                biased;
                result = &mut in_flight.commit => Err(result),
                n = jobs.recv_many(&mut batch, MAX_BATCH) => Ok(n),
            },
            _ => Ok(jobs.recv_many(&mut batch, MAX_BATCH).await),
        };
        let received = match received {
            Ok(n) => n,
            Err(result) => {
                let in_flight = committing.take().expect("selected above");
                answers.committed(in_flight, result);
                continue;
            }
        };
        if received == 0 {
            break;
        }
        batch_size.record(batch.len() as f64);
        let started = std::time::Instant::now();
        let appended = match &mut sqlite {
            Some(writer) if SqliteWriter::fits(batch.len(), outbox.as_ref()) => {
                writer.append(&batch, outbox.as_ref()).await
            }
            Some(_) => append_batch(&db, &batch, outbox.as_ref()).await,
            None => {
                // This batch's statements run while the one before it
                // commits; that one is answered as soon as it has.
                let previous = committing.take();
                let (begun, ()) = tokio::join!(begin_batch(&db, &batch, outbox.as_ref()), async {
                    if let Some(mut in_flight) = previous {
                        let result = (&mut in_flight.commit).await;
                        answers.committed(in_flight, result);
                    }
                });
                match begun {
                    Ok((txn, messages)) => {
                        let commit = tokio::spawn(txn.commit());
                        let jobs = std::mem::take(&mut batch);
                        committing = Some(Committing { commit, jobs, messages, started });
                        continue;
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match appended {
            Ok(stored) => {
                answers.stored(batch.drain(..), stored, started);
                continue;
            }
            // A duplicate or a missing conversation spoils only its own
            // message: replay the batch one by one below.
            Err(error)
                if error.sql_err().is_some() || matches!(error, DbErr::RecordNotFound(_)) =>
            {
                tracing::debug!(%error, size = batch.len(), "batch refused; one by one");
            }
            // The database itself failed: so would every replay.
            Err(error) => {
                answers.failed(batch.drain(..), &error);
                continue;
            }
        }
        for job in batch.drain(..) {
            let members_version = job.draft.members_version;
            let stored = append_once(&db, job.draft, outbox.as_ref()).await;
            match &stored {
                Ok(Stored::New(message)) => {
                    answers.wake_outbox();
                    answers.route(message, members_version)
                }
                Ok(Stored::Duplicate(_)) => duplicate_total.increment(1),
                Err(_) => {}
            }
            let _ = job.done.send(stored);
        }
    }
    if let Some(mut in_flight) = committing {
        let result = (&mut in_flight.commit).await;
        answers.committed(in_flight, result);
    }
}

/// A batch whose statements have run and whose commit is in flight, on a
/// database server. Its rows hold their locks until the commit, so the
/// next batch's statements, which run meanwhile, wait there for any
/// conversation the two share and take the seqs after this one's: a
/// session's messages keep their order. Its answers and routes go out when
/// the commit is done, before the next batch's.
struct Committing {
    commit: tokio::task::JoinHandle<Result<(), DbErr>>,
    jobs: Vec<Job>,
    messages: Vec<Message>,
    started: std::time::Instant,
}

/// What the writer does with a batch's outcome: routes and answers.
struct Answers {
    committed: mpsc::UnboundedSender<Committed>,
    batched: Arc<AtomicU64>,
    outbox: Option<Outbox>,
    stored_total: metrics::Counter,
    /// `tern_message_store_commit_seconds`: a batch's statements and commit.
    commit_seconds: metrics::Histogram,
}

impl Answers {
    /// Hands a newly stored message to the router.
    fn route(&self, message: &Message, members_version: Option<u64>) {
        self.stored_total.increment(1);
        let _ = self.committed.send(Committed { message: message.clone(), members_version });
    }

    /// Tells the webhook dispatcher that new events are committed.
    fn wake_outbox(&self) {
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
    }

    /// Routes and answers a committed batch, in order.
    fn stored(
        &self,
        jobs: impl Iterator<Item = Job>,
        stored: Vec<Message>,
        started: std::time::Instant,
    ) {
        self.commit_seconds.record(started.elapsed().as_secs_f64());
        self.wake_outbox();
        if stored.len() > 1 {
            self.batched.fetch_add(stored.len() as u64, Relaxed);
        }
        for (job, message) in jobs.zip(stored) {
            self.route(&message, job.draft.members_version);
            let _ = job.done.send(Ok(Stored::New(message)));
        }
    }

    /// Answers every job of a batch the database failed.
    fn failed(&self, jobs: impl Iterator<Item = Job>, error: &DbErr) {
        let message = error.to_string();
        for job in jobs {
            let _ = job.done.send(Err(DbErr::Custom(message.clone())));
        }
    }

    /// Routes and answers a batch whose commit has ended with `result`.
    fn committed(
        &self,
        in_flight: Committing,
        result: Result<Result<(), DbErr>, tokio::task::JoinError>,
    ) {
        let Committing { jobs, messages, started, .. } = in_flight;
        match result.map_err(|e| DbErr::Custom(e.to_string())).and_then(|r| r) {
            Ok(()) => self.stored(jobs.into_iter(), messages, started),
            Err(error) => self.failed(jobs.into_iter(), &error),
        }
    }
}

/// Stores every draft of `jobs` in one transaction (see [`begin_batch`]).
async fn append_batch(
    db: &DatabaseConnection,
    jobs: &[Job],
    outbox: Option<&Outbox>,
) -> Result<Vec<Message>, DbErr> {
    let (txn, messages) = begin_batch(db, jobs, outbox).await?;
    txn.commit().await?;
    Ok(messages)
}

/// Runs the statements that store every draft of `jobs` and leaves the
/// transaction for the caller to commit: one statement moves each
/// conversation's head by the number of its drafts (which take seqs in
/// arrival order), one reads the heads back, one inserts every row. Rows
/// are locked by that one statement in key order, so two writers (two
/// message service instances) cannot deadlock each other.
async fn begin_batch(
    db: &DatabaseConnection,
    jobs: &[Job],
    outbox: Option<&Outbox>,
) -> Result<(DatabaseTransaction, Vec<Message>), DbErr> {
    let counts = drafts_per_conversation(jobs);
    let txn = db.begin().await?;
    let heads = bump_seqs(&txn, &counts).await?;
    // The first seq each conversation's drafts take.
    let mut next: HashMap<&str, i64> = counts
        .iter()
        .map(|&(id, n)| (id, heads.get(id).copied().unwrap_or_default() - i64::from(n) + 1))
        .collect();
    let now = now_ms();
    let rows: Vec<messages::Model> = jobs
        .iter()
        .map(|job| {
            let seq = next.get_mut(job.draft.conversation_id.as_str()).expect("counted above");
            let row = new_row(&job.draft, *seq, now);
            *seq += 1;
            row
        })
        .collect();
    let actives = rows.iter().cloned().map(messages::ActiveModel::from);
    messages::Entity::insert_many(actives).exec_without_returning(&txn).await?;
    if let Some(outbox) = outbox {
        outbox.enqueue(&txn, rows.iter().map(|row| stored_event(row, row.seq.into()))).await?;
    }
    Ok((txn, rows.into_iter().map(to_pb).collect()))
}

/// The webhook event type of a stored message.
const STORED: &str = "message.stored";

/// The `message.stored` event of a new row: its fields, with the content
/// as the JSON it is, in order per conversation. `seq` is the row's seq,
/// or [`tern_webhook::HOLE`] where SQL fills it in.
fn stored_event(row: &messages::Model, seq: serde_json::Value) -> Event {
    let kind = MessageKind::try_from(row.kind).unwrap_or(MessageKind::Message);
    let content: serde_json::Value =
        serde_json::from_str(&row.content_json).unwrap_or(serde_json::Value::Null);
    Event::new(
        STORED,
        format!("conversation:{}", row.conversation_id),
        serde_json::json!({
            "message_id": row.message_id,
            "conversation_id": row.conversation_id,
            "seq": seq,
            "sender_id": row.sender_id,
            "to_user_id": row.to_user_id,
            "group_id": row.group_id,
            "kind": kind.as_str_name().trim_start_matches("MESSAGE_KIND_").to_lowercase(),
            "ref_seq": row.ref_seq,
            "content": content,
            "client_msg_id": row.client_msg_id,
            "created_at_ms": row.created_at_ms,
        }),
    )
}

/// How many drafts of `jobs` each conversation has, in conversation order.
fn drafts_per_conversation(jobs: &[Job]) -> Vec<(&str, i32)> {
    let mut counts: HashMap<&str, i32> = HashMap::new();
    for job in jobs {
        *counts.entry(&job.draft.conversation_id).or_default() += 1;
    }
    let mut counts: Vec<(&str, i32)> = counts.into_iter().collect();
    counts.sort_unstable_by(|a, b| a.0.cmp(b.0));
    counts
}

/// [`append_batch`] on SQLite, in one round trip to the connection's
/// thread instead of one per statement (and per transaction step): the
/// transaction is one script of four statements. The UPDATE moves the
/// heads and returns them; the INSERT takes each row's seq from its
/// conversation's new head, less the number of that conversation's drafts
/// queued after it, so seqs follow arrival order as above. `OR ROLLBACK`
/// ends the whole transaction on the first failure, which spares SQLite a
/// statement journal (a copy of every page the multi-row INSERT changes);
/// a missing conversation leaves a row without a seq, which NOT NULL
/// refuses.
///
/// Compiling the script costs more than running it for a small batch, so
/// its text depends only on the batch's shape rounded up to powers of two
/// (padding binds NULL, which matches no conversation and inserts no row):
/// a handful of texts, each compiled once and kept in the connection's
/// statement cache.
///
/// The WAL is copied back into the database file in two steps, so that
/// sends seldom wait for it. The read pool's background checkpoint (see
/// [`tern_runtime::db::connect`]) copies it every 100 ms, beside the
/// commits (a PASSIVE checkpoint never blocks a writer). That alone would
/// let the WAL grow for as long as commits keep coming, since SQLite
/// starts it over only when a write begins with every frame copied. So the
/// writer also checkpoints itself, between two batches (see
/// [`SqliteWriter::checkpoint_if_due`]): no commit runs during that one, it
/// copies the frames the last background one left, and the next commit
/// starts the WAL over. The two take turns
/// ([`tern_runtime::db::CheckpointTurn`]), and the pool never forces a
/// reset with a RESTART checkpoint, which takes the write lock from outside
/// and left commits sleeping in SQLite's busy handler for 10–100 ms.
struct SqliteWriter {
    pool: SqlitePool,
    /// Held by whichever checkpoint runs, the writer's or the pool's.
    turn: Arc<tern_runtime::db::CheckpointTurn>,
    /// The script for each (conversations, rows, events) shape.
    scripts: HashMap<(usize, usize, usize), Arc<str>>,
    last_checkpoint: std::time::Instant,
    /// `tern_message_store_checkpoint_seconds`.
    checkpoint_seconds: metrics::Histogram,
}

/// How often the SQLite writer checkpoints between batches when no send is
/// waiting, and how long it lets sends wait for one at most.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);
const CHECKPOINT_LATEST: std::time::Duration = std::time::Duration::from_millis(1000);

/// A PASSIVE checkpoint: copies what no reader still needs, waits for
/// nobody.
async fn checkpoint(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    sqlx::query::<Sqlite>("PRAGMA wal_checkpoint(PASSIVE)").execute(&mut *conn).await?;
    Ok(())
}

impl SqliteWriter {
    fn new(pool: SqlitePool) -> Self {
        let turn = tern_runtime::db::checkpoint_turn(pool.connect_options().get_filename());
        turn.writer_restarts();
        Self {
            pool,
            turn,
            scripts: HashMap::new(),
            last_checkpoint: std::time::Instant::now(),
            checkpoint_seconds: metrics::histogram!("tern_message_store_checkpoint_seconds"),
        }
    }

    /// Checkpoints (PASSIVE: readers are never waited for) when one is
    /// due: after [`CHECKPOINT_EVERY`] when nothing is `waiting`, so no
    /// send waits for it, and after [`CHECKPOINT_LATEST`] in any case.
    async fn checkpoint_if_due(&mut self, waiting: bool) {
        let since = self.last_checkpoint.elapsed();
        if since < CHECKPOINT_EVERY || (waiting && since < CHECKPOINT_LATEST) {
            return;
        }
        // Beside the pool's checkpoint this one would copy nothing: try
        // again after the next batch rather than wait for it.
        let Ok(_turn) = self.turn.lock.try_lock() else { return };
        self.last_checkpoint = std::time::Instant::now();
        let started = std::time::Instant::now();
        if let Err(error) = checkpoint(&self.pool).await {
            tracing::debug!(%error, "WAL checkpoint failed; the next one retries");
        }
        self.checkpoint_seconds.record(started.elapsed().as_secs_f64());
    }

    /// Whether a batch of `jobs` drafts (and their events) fits the
    /// variables one SQLite statement may have, whatever its shape.
    fn fits(jobs: usize, outbox: Option<&Outbox>) -> bool {
        let events = outbox.map_or(0, |o| shape(jobs * o.rows_per_event()));
        3 * shape(jobs) + 12 * shape(jobs) + 9 * events <= 32_766
    }

    /// The script for a batch shape; with `events` rows for the outbox
    /// `table`, whose body is completed with the message's seq.
    fn script(
        &mut self,
        conversations: usize,
        rows: usize,
        events: usize,
        table: &str,
    ) -> Arc<str> {
        self.scripts
            .entry((conversations, rows, events))
            .or_insert_with(|| {
                let outbox = match events {
                    0 => String::new(),
                    n => format!(
                        "INSERT OR ROLLBACK INTO {table} (event_id, event_type, endpoint, \
                         order_key, body, attempts, next_attempt_ms, parked, created_ms) \
                         SELECT w.column1, w.column2, w.column3, w.column4, \
                         w.column5 || ((SELECT last_seq FROM conversations WHERE id = w.column6) \
                         - w.column7) || w.column8, 0, w.column9, 0, w.column9 \
                         FROM (VALUES {}) AS w WHERE w.column1 IS NOT NULL;",
                        vec!["(?,?,?,?,?,?,?,?,?)"; n].join(",")
                    ),
                };
                let pairs = vec!["WHEN ? THEN ?"; conversations].join(" ");
                let ids = vec!["?"; conversations].join(",");
                let values = vec!["(?,?,?,?,?,?,?,?,?,?,?,?)"; rows].join(",");
                format!(
                    "BEGIN IMMEDIATE;\
                     UPDATE OR ROLLBACK conversations SET last_seq = last_seq + \
                     CASE id {pairs} ELSE 0 END WHERE id IN ({ids}) RETURNING id, last_seq;\
                     INSERT OR ROLLBACK INTO messages (conversation_id, seq, message_id, \
                     sender_id, to_user_id, group_id, content_json, client_msg_id, created_at_ms, \
                     kind, ref_seq, sender_device) \
                     SELECT v.column1, \
                     (SELECT last_seq FROM conversations WHERE id = v.column1) - v.column2, \
                     v.column3, v.column4, v.column5, v.column6, v.column7, v.column8, v.column9, \
                     v.column10, v.column11, v.column12 \
                     FROM (VALUES {values}) AS v WHERE v.column1 IS NOT NULL;\
                     {outbox}\
                     COMMIT;"
                )
                .into()
            })
            .clone()
    }

    async fn append(
        &mut self,
        jobs: &[Job],
        outbox: Option<&Outbox>,
    ) -> Result<Vec<Message>, DbErr> {
        let counts = drafts_per_conversation(jobs);
        let (conversations, rows) = (shape(counts.len()), shape(jobs.len()));
        let per_event = outbox.map_or(0, Outbox::rows_per_event);
        let events = match per_event {
            0 => 0,
            n => shape(jobs.len() * n),
        };
        let table = outbox.map_or("", Outbox::table);
        let script = self.script(conversations, rows, events, table);
        let now = now_ms();
        let mut args = SqliteArguments::default();
        let bind = |result: Result<(), sqlx::error::BoxDynError>| {
            result.map_err(|e| DbErr::Custom(format!("cannot bind: {e}")))
        };
        let none = None::<i64>;
        for &(id, n) in &counts {
            bind(args.add(id))?;
            bind(args.add(n))?;
        }
        for _ in counts.len()..conversations {
            bind(args.add(none))?;
            bind(args.add(none))?;
        }
        for &(id, _) in &counts {
            bind(args.add(id))?;
        }
        for _ in counts.len()..conversations {
            bind(args.add(none))?;
        }
        // How many drafts of each conversation are still to come.
        let mut after: HashMap<&str, i32> = counts.iter().copied().collect();
        let mut stored = Vec::with_capacity(jobs.len());
        for job in jobs {
            let draft = &job.draft;
            let left = after.get_mut(draft.conversation_id.as_str()).expect("counted above");
            *left -= 1;
            // `seq` holds how many drafts follow until the heads are known.
            let row = new_row(draft, i64::from(*left), now);
            bind(args.add(row.conversation_id.as_str()))?;
            bind(args.add(row.seq))?;
            bind(args.add(row.message_id.as_str()))?;
            bind(args.add(row.sender_id))?;
            bind(args.add(row.to_user_id))?;
            bind(args.add(row.group_id))?;
            bind(args.add(row.content_json.as_str()))?;
            bind(args.add(row.client_msg_id.as_str()))?;
            bind(args.add(row.created_at_ms))?;
            bind(args.add(row.kind))?;
            bind(args.add(row.ref_seq))?;
            bind(args.add(row.sender_device.as_str()))?;
            stored.push(row);
        }
        for _ in 0..(rows - jobs.len()) * 12 {
            bind(args.add(none))?;
        }
        if let Some(outbox) = outbox {
            let mut written = 0;
            for row in &stored {
                // The seq is the head less the drafts after it, as above.
                let event = stored_event(row, tern_webhook::HOLE.into());
                for event in outbox.rows_with_hole(event) {
                    bind(args.add(event.event_id))?;
                    bind(args.add(event.event_type))?;
                    bind(args.add(event.endpoint))?;
                    bind(args.add(event.order_key))?;
                    bind(args.add(event.before))?;
                    bind(args.add(row.conversation_id.as_str()))?;
                    bind(args.add(row.seq))?;
                    bind(args.add(event.after))?;
                    bind(args.add(event.created_ms))?;
                    written += 1;
                }
            }
            for _ in 0..(events - written) * 9 {
                bind(args.add(none))?;
            }
        }
        let query = sqlx::query_with::<Sqlite, _>(sqlx::AssertSqlSafe(script), args);
        let mut conn = self.pool.acquire().await.map_err(sqlx_err)?;
        // sqlx runs every statement of the text in order and returns the
        // rows of all of them (only the UPDATE's here). sqlx has deprecated
        // several statements with parameters in one text, so a later sqlx
        // may need the four sent one by one on this connection instead.
        let heads: Result<HashMap<String, i64>, sqlx::Error> = async {
            let rows = query.fetch_all(&mut *conn).await?;
            rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect()
        }
        .await;
        let heads = match heads {
            Ok(heads) => heads,
            Err(error) => {
                // The transaction must not stay open (if OR ROLLBACK ended
                // it already, this fails harmlessly).
                let _ = sqlx::query::<Sqlite>("ROLLBACK").execute(&mut *conn).await;
                return Err(match error {
                    // A row without a seq: its conversation does not exist.
                    sqlx::Error::Database(e)
                        if e.kind() == sqlx::error::ErrorKind::NotNullViolation =>
                    {
                        DbErr::RecordNotFound("a conversation of the batch".into())
                    }
                    error => sqlx_err(error),
                });
            }
        };
        // Committed: every conversation of the batch had a head (a missing
        // one fails the INSERT above), so each row finds its own.
        Ok(stored
            .into_iter()
            .map(|mut row| {
                row.seq = heads[&row.conversation_id] - row.seq;
                to_pb(row)
            })
            .collect())
    }
}

/// The size a batch's script is written for: `n` rounded up to a power of two.
fn shape(n: usize) -> usize {
    n.next_power_of_two()
}

fn sqlx_err(error: sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(Arc::new(error)))
}

fn new_row(draft: &Draft, seq: i64, now: i64) -> messages::Model {
    let (to_user_id, group_id) = match draft.target {
        Target::ToUserId(u) => (Some(u as i64), None),
        Target::GroupId(g) => (None, Some(g as i64)),
    };
    messages::Model {
        conversation_id: draft.conversation_id.clone(),
        seq,
        message_id: uuid::Uuid::now_v7().to_string(),
        sender_id: draft.sender_id,
        to_user_id,
        group_id,
        content_json: draft.content_json.clone(),
        client_msg_id: draft.client_msg_id.clone(),
        created_at_ms: now,
        kind: draft.kind as i32,
        ref_seq: draft.ref_seq,
        edited_at_ms: None,
        recalled_at_ms: None,
        sender_device: draft.sender_device.clone(),
    }
}

/// Adds each `n` to its conversation's `last_seq` and returns the new
/// heads, in two statements whatever the number of conversations. The
/// UPDATE comes before the read so the rows (SQLite: the database) are
/// write-locked first: concurrent writers queue here instead of failing to
/// upgrade a read lock. `n` is a 32-bit parameter on purpose: PostgreSQL
/// types `last_seq + $1` from the column and refuses an 8-byte binding.
async fn bump_seqs(
    txn: &DatabaseTransaction,
    counts: &[(&str, i32)],
) -> Result<HashMap<String, i64>, DbErr> {
    let ids = || counts.iter().map(|(id, _)| id.to_string());
    let increment: SimpleExpr = match counts {
        [(_, n)] => Expr::val(*n),
        _ => {
            let mut case = CaseStatement::new();
            for (id, n) in counts {
                case = case.case(Expr::col(conversations::Column::Id).eq(*id), Expr::val(*n));
            }
            case.finally(Expr::val(0i32)).into()
        }
    };
    let last_seq = Expr::col(conversations::Column::LastSeq).add(increment);
    let update = conversations::Entity::update_many()
        .col_expr(conversations::Column::LastSeq, last_seq)
        .filter(conversations::Column::Id.is_in(ids()));
    let missing = || DbErr::RecordNotFound("a conversation of the batch".into());
    if txn.support_returning() {
        // SQLite and PostgreSQL: the new heads come back with the update.
        let heads = update.exec_with_returning(txn).await?;
        if heads.len() != counts.len() {
            return Err(missing());
        }
        return Ok(heads.into_iter().map(|c| (c.id, c.last_seq)).collect());
    }
    if update.exec(txn).await?.rows_affected != counts.len() as u64 {
        return Err(missing());
    }
    let heads: Vec<(String, i64)> = conversations::Entity::find()
        .select_only()
        .column(conversations::Column::Id)
        .column(conversations::Column::LastSeq)
        .filter(conversations::Column::Id.is_in(ids()))
        .into_tuple()
        .all(txn)
        .await?;
    Ok(heads.into_iter().collect())
}

async fn find_sent(
    db: &DatabaseConnection,
    sender: i64,
    client_msg_id: &str,
) -> Result<Option<Message>, DbErr> {
    Ok(messages::Entity::find()
        .filter(messages::Column::SenderId.eq(sender))
        .filter(messages::Column::ClientMsgId.eq(client_msg_id))
        .one(db)
        .await?
        .map(to_pb))
}

/// Stores one draft in its own transaction; a unique violation means a
/// concurrent retry of the same send won, and the original is returned.
async fn append_once(
    db: &DatabaseConnection,
    draft: Draft,
    outbox: Option<&Outbox>,
) -> Result<Stored, DbErr> {
    let txn = db.begin().await?;
    let heads = bump_seqs(&txn, &[(&draft.conversation_id, 1)]).await?;
    let seq = heads.get(&draft.conversation_id).copied().unwrap_or_default();
    let row = new_row(&draft, seq, now_ms());
    let active: messages::ActiveModel = row.clone().into();
    match messages::Entity::insert(active).exec_without_returning(&txn).await {
        Ok(_) => {
            if let Some(outbox) = outbox {
                outbox.enqueue(&txn, [stored_event(&row, row.seq.into())]).await?;
            }
            txn.commit().await?;
            Ok(Stored::New(to_pb(row)))
        }
        Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            txn.rollback().await?;
            match find_sent(db, row.sender_id, &row.client_msg_id).await? {
                Some(original) => Ok(Stored::Duplicate(original)),
                None => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_testkit::topology::{Database, Databases, Service};

    fn no_webhooks() -> Outbox {
        Outbox::new("message", &Default::default()).expect("webhooks off")
    }

    /// Where a test's store lives: SQLite in `dir`, or with
    /// `TERN_TEST_DATABASE` set to `mysql` or `postgres` fresh databases on
    /// that server (dropped with the guard), where the writer runs one
    /// batch's statements while the one before it commits.
    async fn store_url(dir: &tempfile::TempDir) -> (String, Option<Databases>) {
        let database = Database::from_env().unwrap();
        match Databases::create(database, None).await.unwrap() {
            Some(databases) => (databases.url(Service::Message), Some(databases)),
            None => (format!("sqlite://{}/m.db", dir.path().display()), None),
        }
    }

    /// A store on the database at `url`, migrated, and its read connection.
    async fn store_at(url: &str, outbox: Outbox) -> (Store, DatabaseConnection) {
        let db = tern_runtime::db::connect(url, 4).await.unwrap();
        crate::migration::apply(&db).await.unwrap();
        let writer = tern_runtime::db::connect_writer(url).await.unwrap();
        let (committed, _) = mpsc::unbounded_channel();
        (Store::new(db.clone(), writer, committed, outbox), db)
    }

    /// Concurrent appends with webhooks on: every message stored has its
    /// `message.stored` row in the outbox, written by the same commit, the
    /// seq filled in by the statement that assigned it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_batch_writes_its_events_with_their_seqs() {
        use sea_orm::{ConnectionTrait, Statement};
        let dir = tempfile::tempdir().unwrap();
        let settings = tern_webhook::Settings {
            // Two endpoints: two rows per event. Nothing is sent (the
            // dispatcher is not started).
            urls: "http://127.0.0.1:9/a, http://127.0.0.1:9/b".into(),
            secret: tern_runtime::Secret::new("a-webhook-secret-of-32-bytes-or-more"),
            ..Default::default()
        };
        let outbox = Outbox::new("message", &settings).unwrap();
        let (store, db) =
            store_at(&format!("sqlite://{}/m.db", dir.path().display()), outbox).await;
        for c in ["c0", "c1"] {
            store.ensure_conversation(c).await.unwrap();
        }
        let drafts = (0..100).map(|i| draft(&format!("c{}", i % 2), 3, &format!("w{i}")));
        let stored = futures::future::join_all(drafts.map(|d| {
            let store = store.clone();
            async move {
                match store.append(d).await.unwrap() {
                    Stored::New(message) => message,
                    Stored::Duplicate(_) => panic!("no twins here"),
                }
            }
        }))
        .await;
        assert!(store.batched() > 0, "concurrent appends were never batched");
        let sql = "SELECT endpoint, order_key, body FROM webhook_outbox_message ORDER BY id";
        let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql));
        let rows = rows.await.unwrap();
        assert_eq!(rows.len(), 200);
        for message in &stored {
            let events: Vec<(String, serde_json::Value)> = rows
                .iter()
                .map(|r| {
                    let body: String = r.try_get("", "body").unwrap();
                    (
                        r.try_get("", "endpoint").unwrap(),
                        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
                    )
                })
                .filter(|(_, body)| body["data"]["message_id"] == message.message_id)
                .collect();
            assert_eq!(events.len(), 2, "{message:?}");
            assert_eq!(events[0].0, "http://127.0.0.1:9/a");
            assert_eq!(events[1].0, "http://127.0.0.1:9/b");
            let body = &events[0].1;
            assert_eq!(body["type"], "message.stored");
            assert_eq!(body["data"]["seq"], message.seq);
            assert_eq!(body["data"]["conversation_id"], message.conversation_id);
            assert_eq!(body["data"]["content"]["c"], message.client_msg_id);
            assert_eq!(body["id"], events[1].1["id"]);
        }
    }

    fn draft(conversation: &str, sender: i64, client_msg_id: &str) -> Draft {
        Draft {
            conversation_id: conversation.into(),
            sender_id: sender,
            target: Target::GroupId(1),
            content_json: format!("{{\"c\":\"{client_msg_id}\"}}"),
            client_msg_id: client_msg_id.into(),
            kind: MessageKind::Message,
            ref_seq: None,
            members_version: None,
            sender_device: String::new(),
        }
    }

    /// A batch holding a draft for a conversation that does not exist: that
    /// draft alone fails, the others are stored gap-free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_missing_conversation_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _databases) = store_url(&dir).await;
        let (store, _) = store_at(&url, no_webhooks()).await;
        store.ensure_conversation("c0").await.unwrap();
        let drafts = (0..20).map(|i| {
            let conversation = if i == 7 { "missing" } else { "c0" };
            draft(conversation, 1, &format!("m{i}"))
        });
        let results = futures::future::join_all(drafts.map(|d| {
            let store = store.clone();
            async move { store.append(d).await }
        }))
        .await;
        for (i, result) in results.iter().enumerate() {
            assert_eq!(result.is_err(), i == 7, "draft {i}");
        }
        let (messages, head) = store.list("c0", 0, 100).await.unwrap();
        assert_eq!(head, 19);
        let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, (1..=19).collect::<Vec<_>>());
    }

    /// Many concurrent appends over three conversations: unique ones are
    /// committed in batches; then every send submitted twice at once (the
    /// batches fail on the twin and are replayed one by one). Each
    /// conversation ends with gap-free seqs, and each pair of twins
    /// resolves to one stored message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batched_appends_are_gap_free_and_twins_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let (url, _databases) = store_url(&dir).await;
        let (store, _) = store_at(&url, no_webhooks()).await;
        for c in ["c0", "c1", "c2"] {
            store.ensure_conversation(c).await.unwrap();
        }
        // Unique sends first: they commit in batches.
        let unique = (0..150).map(|i| draft(&format!("c{}", i % 3), 9, &format!("u{i}")));
        futures::future::join_all(unique.map(|d| {
            let store = store.clone();
            async move { store.append(d).await.map_err(|e| e.to_string()).unwrap() }
        }))
        .await;
        assert!(store.batched() > 0, "concurrent appends were never batched");
        let appends = (0..300).flat_map(|i| {
            let conversation = format!("c{}", i % 3);
            let id = format!("m{i}");
            [draft(&conversation, i % 7, &id), draft(&conversation, i % 7, &id)]
        });
        let results = futures::future::join_all(appends.map(|d| {
            let store = store.clone();
            async move { store.append(d).await.unwrap() }
        }))
        .await;
        let mut new = 0;
        let mut by_id: HashMap<String, (String, u64)> = HashMap::new();
        for stored in results {
            let message = match stored {
                Stored::New(m) => {
                    new += 1;
                    m
                }
                Stored::Duplicate(m) => m,
            };
            let place = (message.message_id.clone(), message.seq);
            // Both twins report the same stored message.
            let seen = by_id.entry(message.client_msg_id.clone()).or_insert(place.clone());
            assert_eq!(*seen, place);
        }
        assert_eq!(new, 300, "each send stored exactly once");
        for c in ["c0", "c1", "c2"] {
            let (messages, head) = store.list(c, 0, 1000).await.unwrap();
            assert_eq!(head, 150);
            let seqs: Vec<u64> = messages.iter().map(|m| m.seq).collect();
            assert_eq!(seqs, (1..=150).collect::<Vec<_>>(), "{c}");
        }
    }
}
