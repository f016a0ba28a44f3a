//! The auth service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateUsers),
            Box::new(AddRevocation),
            Box::new(AddBans),
            Box::new(IndexRevocations),
            tern_webhook::migration("auth"),
        ]
    }

    // Services may share one database; each keeps its own migration log.
    fn migration_table_name() -> DynIden {
        "tern_auth_migrations".into_iden()
    }
}

/// Applies pending migrations.
pub async fn apply(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    CreatedAt,
    TokensValidAfter,
    BannedAtMs,
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    TokenHash,
    UserId,
    ExpiresAt,
    Revoked,
    Family,
}

struct CreateUsers;

// Named explicitly: the derive would name every migration of this module
// `migration`.
impl MigrationName for CreateUsers {
    fn name(&self) -> &str {
        "m0001_create_users"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateUsers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Users::Id))
                    .col(string_len_uniq(Users::Username, 64))
                    .col(string_len(Users::PasswordHash, 100))
                    .col(big_integer(Users::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RefreshTokens::Table)
                    .if_not_exists()
                    .col(string_len(RefreshTokens::TokenHash, 64).primary_key())
                    .col(big_integer(RefreshTokens::UserId))
                    .col(big_integer(RefreshTokens::ExpiresAt))
                    .col(boolean(RefreshTokens::Revoked))
                    .to_owned(),
            )
            .await
    }
}

/// Refresh-token families (reuse detection) and per-user access-token
/// revocation (logout).
struct AddRevocation;

impl MigrationName for AddRevocation {
    fn name(&self) -> &str {
        "m0002_add_revocation"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddRevocation {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One change per statement: SQLite allows no more.
        manager
            .alter_table(
                Table::alter()
                    .table(RefreshTokens::Table)
                    .add_column(string_len(RefreshTokens::Family, 36).default(""))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer(Users::TokensValidAfter).default(0))
                    .to_owned(),
            )
            .await
    }
}

/// Operators' bans: a banned user cannot log in or refresh.
struct AddBans;

impl MigrationName for AddBans {
    fn name(&self) -> &str {
        "m0003_add_bans"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddBans {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(big_integer_null(Users::BannedAtMs))
                    .to_owned(),
            )
            .await
    }
}

/// Gateways list the recent revocations when they start
/// (`ListRevocations`): a range read of this index, not a scan of every
/// user.
struct IndexRevocations;

impl MigrationName for IndexRevocations {
    fn name(&self) -> &str {
        "m0004_index_revocations"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for IndexRevocations {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .name("idx_users_tokens_valid_after")
                    .table(Users::Table)
                    .col(Users::TokensValidAfter)
                    .if_not_exists()
                    .to_owned(),
            )
            .await
    }
}
