//! Conversations and messages: the rows, and the one transaction that
//! assigns a seq.

use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    SqlErr, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tern_proto::pb::message::{Message, message::Target};

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
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
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
    }
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
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
            created_at: Set(now_ms() / 1000),
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
        Ok(messages::Entity::find()
            .filter(messages::Column::SenderId.eq(sender))
            .filter(messages::Column::ClientMsgId.eq(client_msg_id))
            .one(&self.db)
            .await?
            .map(to_pb))
    }

    /// Stores a draft with the next seq of its conversation. The seq bump
    /// and the insert share one transaction, so a failed insert leaves no
    /// gap. The conversation row must exist.
    #[tracing::instrument(name = "store.append", skip_all, fields(conversation = %draft.conversation_id))]
    pub async fn append(&self, draft: Draft) -> Result<Stored, DbErr> {
        let started = std::time::Instant::now();
        let stored = self.append_once(draft).await;
        metrics::histogram!("tern_message_store_seconds").record(started.elapsed().as_secs_f64());
        match &stored {
            Ok(Stored::New(_)) => metrics::counter!("tern_messages_stored_total").increment(1),
            Ok(Stored::Duplicate(_)) => {
                metrics::counter!("tern_messages_duplicate_total").increment(1)
            }
            Err(_) => {}
        }
        stored
    }

    async fn append_once(&self, draft: Draft) -> Result<Stored, DbErr> {
        let txn = self.db.begin().await?;
        // The UPDATE comes first so the row (SQLite: the database) is
        // write-locked before the read: concurrent sends queue here
        // instead of failing to upgrade a read lock.
        let bumped = conversations::Entity::update_many()
            .col_expr(
                conversations::Column::LastSeq,
                Expr::col(conversations::Column::LastSeq).add(1),
            )
            .filter(conversations::Column::Id.eq(&draft.conversation_id))
            .exec(&txn)
            .await?;
        if bumped.rows_affected != 1 {
            return Err(DbErr::RecordNotFound(format!("conversation {}", draft.conversation_id)));
        }
        let seq: i64 = conversations::Entity::find_by_id(draft.conversation_id.clone())
            .select_only()
            .column(conversations::Column::LastSeq)
            .into_tuple()
            .one(&txn)
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(draft.conversation_id.clone()))?;
        let (to_user_id, group_id) = match draft.target {
            Target::ToUserId(u) => (Some(u as i64), None),
            Target::GroupId(g) => (None, Some(g as i64)),
        };
        let row = messages::Model {
            conversation_id: draft.conversation_id,
            seq,
            message_id: uuid::Uuid::now_v7().to_string(),
            sender_id: draft.sender_id,
            to_user_id,
            group_id,
            content_json: draft.content_json,
            client_msg_id: draft.client_msg_id,
            created_at_ms: now_ms(),
        };
        let active: messages::ActiveModel = row.clone().into();
        match messages::Entity::insert(active).exec_without_returning(&txn).await {
            Ok(_) => {
                txn.commit().await?;
                Ok(Stored::New(to_pb(row)))
            }
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                // A concurrent retry of the same send won the race.
                txn.rollback().await?;
                match self.find_sent(row.sender_id, &row.client_msg_id).await? {
                    Some(original) => Ok(Stored::Duplicate(original)),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Messages with seq > `after`, in order, and the conversation's head.
    #[tracing::instrument(name = "store.list", skip_all)]
    pub async fn list(
        &self,
        conversation: &str,
        after: i64,
        limit: u64,
    ) -> Result<(Vec<Message>, u64), DbErr> {
        let head =
            self.heads(&[conversation.to_string()]).await?.pop().map(|(_, s)| s).unwrap_or(0);
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.eq(conversation))
            .filter(messages::Column::Seq.gt(after))
            .order_by_asc(messages::Column::Seq)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok((rows.into_iter().map(to_pb).collect(), head))
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
