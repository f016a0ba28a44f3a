//! Rows the auth service owns, and the queries on them.

use crate::AuthError;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    SqlErr, TransactionTrait, sea_query::Expr,
};
use tern_runtime::clock::{now_ms, now_secs};
use tern_webhook::{Event, Outbox};

pub mod users {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub username: String,
        pub password_hash: String,
        pub created_at: i64,
        /// Access tokens issued before this (Unix milliseconds) are refused.
        pub tokens_valid_after: i64,
        /// When an operator banned the user (Unix milliseconds); none when
        /// they are not banned.
        pub banned_at_ms: Option<i64>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod refresh_tokens {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "refresh_tokens")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub token_hash: String,
        pub user_id: i64,
        pub expires_at: i64,
        pub revoked: bool,
        /// Every token descended from one login shares its family.
        pub family: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Typed access to the auth tables.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Where `user.*` webhook events are written.
    outbox: Outbox,
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Writes a `user.online` or `user.offline` event, when webhooks want
    /// it.
    pub async fn record_presence(
        &self,
        user_id: u64,
        online: bool,
        node_id: &str,
        at_ms: i64,
    ) -> Result<(), AuthError> {
        let kind = if online { "user.online" } else { "user.offline" };
        if !self.outbox.wants(kind) {
            return Ok(());
        }
        let data = serde_json::json!({ "user_id": user_id, "node_id": node_id, "at_ms": at_ms });
        self.outbox.enqueue(&self.db, [Event::new(kind, format!("user:{user_id}"), data)]).await?;
        self.outbox.wake();
        Ok(())
    }

    /// Inserts a user, and its `user.registered` event in the same
    /// transaction; `UsernameTaken` when the unique index refuses it.
    pub async fn create_user(
        &self,
        username: &str,
        password_hash: String,
    ) -> Result<users::Model, AuthError> {
        let row = users::ActiveModel {
            username: Set(username.to_string()),
            password_hash: Set(password_hash),
            created_at: Set(now_secs()),
            tokens_valid_after: Set(0),
            banned_at_ms: Set(None),
            ..Default::default()
        };
        let txn = self.db.begin().await?;
        let user = match users::Entity::insert(row).exec_with_returning(&txn).await {
            Ok(user) => user,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                return Err(AuthError::UsernameTaken);
            }
            Err(e) => return Err(e.into()),
        };
        let data = serde_json::json!({
            "user_id": user.id,
            "username": user.username,
            "created_at": user.created_at,
        });
        let event = Event::new("user.registered", format!("user:{}", user.id), data);
        self.outbox.enqueue(&txn, [event]).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(user)
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<users::Model>, AuthError> {
        Ok(users::Entity::find().filter(users::Column::Username.eq(username)).one(&self.db).await?)
    }

    pub async fn users_by_ids(&self, ids: &[i64]) -> Result<Vec<users::Model>, AuthError> {
        Ok(users::Entity::find()
            .filter(users::Column::Id.is_in(ids.iter().copied()))
            .all(&self.db)
            .await?)
    }

    pub async fn store_refresh(
        &self,
        token_hash: String,
        user_id: i64,
        expires_at: i64,
        family: String,
    ) -> Result<(), AuthError> {
        let row = refresh_tokens::ActiveModel {
            token_hash: Set(token_hash),
            user_id: Set(user_id),
            expires_at: Set(expires_at),
            revoked: Set(false),
            family: Set(family),
        };
        refresh_tokens::Entity::insert(row).exec(&self.db).await?;
        Ok(())
    }

    pub async fn refresh_row(
        &self,
        token_hash: &str,
    ) -> Result<Option<refresh_tokens::Model>, AuthError> {
        Ok(refresh_tokens::Entity::find_by_id(token_hash.to_string()).one(&self.db).await?)
    }

    /// Spends a live refresh token. Only one caller can win for a given
    /// token: the update is conditional on `revoked = false`.
    pub async fn spend_refresh(&self, token_hash: &str) -> Result<bool, AuthError> {
        let updated = refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::Revoked, Expr::value(true))
            .filter(refresh_tokens::Column::TokenHash.eq(token_hash))
            .filter(refresh_tokens::Column::Revoked.eq(false))
            .exec(&self.db)
            .await?;
        Ok(updated.rows_affected == 1)
    }

    /// Revokes every refresh token of a login.
    pub async fn revoke_family(&self, family: &str) -> Result<(), AuthError> {
        self.revoke_refresh(refresh_tokens::Column::Family.eq(family)).await
    }

    /// Revokes every refresh token of the user, whatever login it is from.
    pub async fn revoke_all_refresh(&self, user_id: i64) -> Result<(), AuthError> {
        self.revoke_refresh(refresh_tokens::Column::UserId.eq(user_id)).await
    }

    /// Revokes the refresh tokens `which` selects.
    async fn revoke_refresh(
        &self,
        which: impl sea_orm::sea_query::IntoCondition,
    ) -> Result<(), AuthError> {
        refresh_tokens::Entity::update_many()
            .col_expr(refresh_tokens::Column::Revoked, Expr::value(true))
            .filter(which)
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Bans (`at` = when) or unbans (`None`) the user.
    pub async fn set_banned(&self, user_id: i64, at: Option<i64>) -> Result<(), AuthError> {
        users::Entity::update_many()
            .col_expr(users::Column::BannedAtMs, Expr::value(at))
            .filter(users::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Users whose access-token watermark is later than `since_ms`, with
    /// it (an index on the watermark keeps this a range read).
    pub async fn revoked_after(&self, since_ms: i64) -> Result<Vec<(i64, i64)>, AuthError> {
        Ok(users::Entity::find()
            .select_only()
            .columns([users::Column::Id, users::Column::TokensValidAfter])
            .filter(users::Column::TokensValidAfter.gt(since_ms))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// Refuses every access token of the user issued until now; returns
    /// the new watermark (Unix ms).
    pub async fn revoke_access_tokens(&self, user_id: i64) -> Result<i64, AuthError> {
        let watermark = now_ms();
        users::Entity::update_many()
            .col_expr(users::Column::TokensValidAfter, Expr::value(watermark))
            .filter(users::Column::Id.eq(user_id))
            .exec(&self.db)
            .await?;
        Ok(watermark)
    }
}
