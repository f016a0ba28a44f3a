//! The offline service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateCursors)]
    }

    fn migration_table_name() -> DynIden {
        "tern_offline_migrations".into_iden()
    }
}

/// Applies pending migrations.
pub async fn apply(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

#[derive(DeriveIden)]
enum Cursors {
    Table,
    UserId,
    ConversationId,
    StartSeq,
    AckedSeq,
}

struct CreateCursors;

// Named explicitly: the derive would name every migration of this module
// `migration`.
impl MigrationName for CreateCursors {
    fn name(&self) -> &str {
        "m0001_create_cursors"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateCursors {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Cursors::Table)
                    .if_not_exists()
                    .col(big_integer(Cursors::UserId))
                    .col(string_len(Cursors::ConversationId, 64))
                    .col(big_integer(Cursors::StartSeq))
                    .col(big_integer(Cursors::AckedSeq))
                    .primary_key(Index::create().col(Cursors::UserId).col(Cursors::ConversationId))
                    .to_owned(),
            )
            .await
    }
}
