//! The `cursors` and `device_cursors` tables and the queries on them.

use std::collections::HashMap;

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    ExprTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
};

pub mod cursors {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub conversation_id: String,
        /// Where the member came in; nothing before it is theirs to read.
        pub start_seq: i64,
        pub acked_seq: i64,
        /// The read marker, shared by the user's devices.
        pub read_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod device_cursors {
    use sea_orm::entity::prelude::*;

    /// The delivery cursor of one of a user's devices other than the
    /// default one, whose cursor is `cursors.acked_seq`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "device_cursors")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub device: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub conversation_id: String,
        pub acked_seq: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// One cumulative ack: (user, device, conversation, seq).
pub type Ack = (i64, String, String, i64);

/// Typed access to cursors.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Creates missing cursors at `start`; existing ones are kept.
    pub async fn init(&self, conversation: &str, users: &[i64], start: i64) -> Result<(), DbErr> {
        for chunk in users.chunks(500) {
            let rows = chunk.iter().map(|&user_id| cursors::ActiveModel {
                user_id: Set(user_id),
                conversation_id: Set(conversation.to_string()),
                start_seq: Set(start),
                acked_seq: Set(start),
                read_seq: Set(start),
            });
            cursors::Entity::insert_many(rows)
                .on_conflict_do_nothing_on([
                    cursors::Column::UserId,
                    cursors::Column::ConversationId,
                ])
                .exec(&self.db)
                .await?;
        }
        Ok(())
    }

    pub async fn drop(&self, conversation: &str, users: &[i64]) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        device_cursors::Entity::delete_many()
            .filter(device_cursors::Column::ConversationId.eq(conversation))
            .filter(device_cursors::Column::UserId.is_in(users.iter().copied()))
            .exec(&txn)
            .await?;
        cursors::Entity::delete_many()
            .filter(cursors::Column::ConversationId.eq(conversation))
            .filter(cursors::Column::UserId.is_in(users.iter().copied()))
            .exec(&txn)
            .await?;
        txn.commit().await
    }

    /// Every cursor of each `(user, device)`, by conversation; devices
    /// without one are left out.
    pub async fn of_devices(
        &self,
        devices: &[(i64, String)],
    ) -> Result<HashMap<(i64, String), HashMap<String, i64>>, DbErr> {
        let mut found: HashMap<(i64, String), HashMap<String, i64>> = HashMap::new();
        for chunk in devices.chunks(500) {
            let mut any = sea_orm::Condition::any();
            for (user, device) in chunk {
                any = any.add(
                    device_cursors::Column::UserId
                        .eq(*user)
                        .and(device_cursors::Column::Device.eq(device.as_str())),
                );
            }
            let rows = device_cursors::Entity::find().filter(any).all(&self.db).await?;
            for row in rows {
                let own = found.entry((row.user_id, row.device)).or_default();
                own.insert(row.conversation_id, row.acked_seq);
            }
        }
        Ok(found)
    }

    /// A device's cursor in one conversation, if it has one yet.
    pub async fn device_get(
        &self,
        user: i64,
        device: &str,
        conversation: &str,
    ) -> Result<Option<i64>, DbErr> {
        let key = (user, device.to_string(), conversation.to_string());
        Ok(device_cursors::Entity::find_by_id(key).one(&self.db).await?.map(|c| c.acked_seq))
    }

    /// Starts devices' missing cursors, `(user, device, conversation,
    /// seq)` each; existing ones are kept.
    pub async fn pin_devices(&self, starts: &[Ack]) -> Result<(), DbErr> {
        for chunk in starts.chunks(500) {
            insert_device_cursors(&self.db, chunk).await?;
        }
        Ok(())
    }

    /// Every cursor of each of `users`, ordered by user, then conversation.
    pub async fn of_users(&self, users: &[i64]) -> Result<Vec<cursors::Model>, DbErr> {
        let mut found = Vec::new();
        for chunk in users.chunks(500) {
            let rows = cursors::Entity::find()
                .filter(cursors::Column::UserId.is_in(chunk.iter().copied()))
                .order_by_asc(cursors::Column::UserId)
                .order_by_asc(cursors::Column::ConversationId)
                .all(&self.db)
                .await?;
            found.extend(rows);
        }
        Ok(found)
    }

    /// Every cursor of a user, ordered by conversation.
    pub async fn of_user(&self, user: i64) -> Result<Vec<cursors::Model>, DbErr> {
        cursors::Entity::find()
            .filter(cursors::Column::UserId.eq(user))
            .order_by_asc(cursors::Column::ConversationId)
            .all(&self.db)
            .await
    }

    pub async fn get(
        &self,
        user: i64,
        conversation: &str,
    ) -> Result<Option<cursors::Model>, DbErr> {
        cursors::Entity::find_by_id((user, conversation.to_string())).one(&self.db).await
    }

    /// Moves a device's cursor forward to `seq`; never backwards, even when
    /// two acks race.
    pub async fn advance(
        &self,
        user: i64,
        device: &str,
        conversation: &str,
        seq: i64,
    ) -> Result<(), DbErr> {
        advance_delivery(&self.db, &(user, device.to_string(), conversation.to_string(), seq))
            .await?;
        Ok(())
    }

    /// Moves the read marker forward to `seq`; whether it moved.
    pub async fn advance_read(
        &self,
        user: i64,
        conversation: &str,
        seq: i64,
    ) -> Result<bool, DbErr> {
        let moved = advance(&self.db, cursors::Column::ReadSeq, user, conversation, seq).await?;
        Ok(moved > 0)
    }

    /// The distinct read markers of a conversation's members other than
    /// `except`, each with how many members are at it, highest first: one
    /// scan of the `(conversation_id, read_seq)` index.
    pub async fn read_positions(
        &self,
        conversation: &str,
        except: i64,
    ) -> Result<Vec<(i64, i64)>, DbErr> {
        cursors::Entity::find()
            .select_only()
            .column(cursors::Column::ReadSeq)
            .column_as(cursors::Column::UserId.count(), "members")
            .filter(cursors::Column::ConversationId.eq(conversation))
            .filter(cursors::Column::UserId.ne(except))
            .group_by(cursors::Column::ReadSeq)
            .order_by_desc(cursors::Column::ReadSeq)
            .into_tuple()
            .all(&self.db)
            .await
    }

    /// Which of `candidates` have a cursor in one of `conversations`.
    pub async fn members_among(
        &self,
        conversations: &[String],
        candidates: &[i64],
    ) -> Result<Vec<i64>, DbErr> {
        let mut found = Vec::new();
        for chunk in conversations.chunks(500) {
            let rows: Vec<i64> = cursors::Entity::find()
                .select_only()
                .column(cursors::Column::UserId)
                .distinct()
                .filter(cursors::Column::ConversationId.is_in(chunk.iter().cloned()))
                .filter(cursors::Column::UserId.is_in(candidates.iter().copied()))
                .into_tuple()
                .all(&self.db)
                .await?;
            found.extend(rows);
        }
        found.sort_unstable();
        found.dedup();
        Ok(found)
    }

    /// Moves many cursors forward in one transaction (one commit); returns
    /// how many moved.
    pub async fn advance_many(&self, acks: &[Ack]) -> Result<u64, DbErr> {
        let txn = self.db.begin().await?;
        let mut moved = 0;
        for ack in acks {
            moved += advance_delivery(&txn, ack).await?;
        }
        txn.commit().await?;
        Ok(moved)
    }
}

async fn insert_device_cursors(db: &impl ConnectionTrait, starts: &[Ack]) -> Result<u64, DbErr> {
    if starts.is_empty() {
        return Ok(0);
    }
    let rows = starts.iter().map(|(user, device, conversation, seq)| device_cursors::ActiveModel {
        user_id: Set(*user),
        device: Set(device.clone()),
        conversation_id: Set(conversation.clone()),
        acked_seq: Set(*seq),
    });
    let inserted = device_cursors::Entity::insert_many(rows)
        .on_conflict_do_nothing_on([
            device_cursors::Column::UserId,
            device_cursors::Column::Device,
            device_cursors::Column::ConversationId,
        ])
        .exec_without_returning(db)
        .await?;
    Ok(match inserted {
        sea_orm::TryInsertResult::Inserted(rows) => rows,
        _ => 0,
    })
}

/// Moves one delivery cursor forward: the default device's column of
/// `cursors`, or a row of `device_cursors`, made on a device's first ack in
/// a conversation (only for a member: acks of a conversation the user left
/// are skipped). How many cursors moved.
async fn advance_delivery(db: &impl ConnectionTrait, ack: &Ack) -> Result<u64, DbErr> {
    let (user, device, conversation, seq) = ack;
    if device.is_empty() {
        return advance(db, cursors::Column::AckedSeq, *user, conversation, *seq).await;
    }
    let moved = advance_device(db, ack).await?;
    if moved > 0 {
        return Ok(moved);
    }
    let member =
        cursors::Entity::find_by_id((*user, conversation.clone())).one(db).await?.is_some();
    if !member {
        return Ok(0);
    }
    match insert_device_cursors(db, std::slice::from_ref(ack)).await? {
        0 => advance_device(db, ack).await, // another ack made the row first
        made => Ok(made),
    }
}

async fn advance_device(db: &impl ConnectionTrait, ack: &Ack) -> Result<u64, DbErr> {
    let (user, device, conversation, seq) = ack;
    let moved = device_cursors::Entity::update_many()
        .col_expr(device_cursors::Column::AckedSeq, Expr::value(*seq))
        .filter(device_cursors::Column::UserId.eq(*user))
        .filter(device_cursors::Column::Device.eq(device))
        .filter(device_cursors::Column::ConversationId.eq(conversation))
        .filter(device_cursors::Column::AckedSeq.lt(*seq))
        .exec(db)
        .await?;
    Ok(moved.rows_affected)
}

/// Moves `column` (the delivery cursor or the read marker) of one row
/// forward to `seq`, never backwards, even when two calls race; how many
/// rows moved.
async fn advance(
    db: &impl ConnectionTrait,
    column: cursors::Column,
    user: i64,
    conversation: &str,
    seq: i64,
) -> Result<u64, DbErr> {
    let moved = cursors::Entity::update_many()
        .col_expr(column, Expr::value(seq))
        .filter(cursors::Column::UserId.eq(user))
        .filter(cursors::Column::ConversationId.eq(conversation))
        .filter(column.lt(seq))
        .exec(db)
        .await?;
    Ok(moved.rows_affected)
}
