//! The offline service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateCursors), Box::new(AddReadMarkers), Box::new(CreateDeviceCursors)]
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
    ReadSeq,
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

/// Read markers: a column beside the delivery cursor, starting where the
/// cursor is (unread counts used to come from the cursor), and an index
/// by conversation for `ReadPositions`.
struct AddReadMarkers;

impl MigrationName for AddReadMarkers {
    fn name(&self) -> &str {
        "m0002_add_read_markers"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddReadMarkers {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Cursors::Table)
                    .add_column(big_integer(Cursors::ReadSeq).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .get_connection()
            .execute_unprepared("UPDATE cursors SET read_seq = acked_seq")
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_cursors_conversation_read")
                    .table(Cursors::Table)
                    .col(Cursors::ConversationId)
                    .col(Cursors::ReadSeq)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum DeviceCursors {
    Table,
    UserId,
    Device,
    ConversationId,
    AckedSeq,
}

/// Delivery cursors of a user's devices other than the default one (whose
/// cursor is `cursors.acked_seq`).
struct CreateDeviceCursors;

impl MigrationName for CreateDeviceCursors {
    fn name(&self) -> &str {
        "m0003_create_device_cursors"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateDeviceCursors {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeviceCursors::Table)
                    .if_not_exists()
                    .col(big_integer(DeviceCursors::UserId))
                    .col(string_len(DeviceCursors::Device, 64))
                    .col(string_len(DeviceCursors::ConversationId, 64))
                    .col(big_integer(DeviceCursors::AckedSeq))
                    .primary_key(
                        Index::create()
                            .col(DeviceCursors::UserId)
                            .col(DeviceCursors::Device)
                            .col(DeviceCursors::ConversationId),
                    )
                    .to_owned(),
            )
            .await
    }
}
