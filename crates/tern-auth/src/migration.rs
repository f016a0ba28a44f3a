//! The auth service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateUsers)]
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
}

#[derive(DeriveIden)]
enum RefreshTokens {
    Table,
    TokenHash,
    UserId,
    ExpiresAt,
    Revoked,
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
