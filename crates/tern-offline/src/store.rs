//! The `cursors` table and the queries on it.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
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
        cursors::Entity::delete_many()
            .filter(cursors::Column::ConversationId.eq(conversation))
            .filter(cursors::Column::UserId.is_in(users.iter().copied()))
            .exec(&self.db)
            .await?;
        Ok(())
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

    /// Moves the cursor forward to `seq`; never backwards, even when two
    /// acks race.
    pub async fn advance(&self, user: i64, conversation: &str, seq: i64) -> Result<(), DbErr> {
        advance(&self.db, cursors::Column::AckedSeq, user, conversation, seq).await?;
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
    pub async fn advance_many(&self, acks: &[(i64, String, i64)]) -> Result<u64, DbErr> {
        let txn = self.db.begin().await?;
        let mut moved = 0;
        for (user, conversation, seq) in acks {
            moved += advance(&txn, cursors::Column::AckedSeq, *user, conversation, *seq).await?;
        }
        txn.commit().await?;
        Ok(moved)
    }
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
