//! The message service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateMessages),
            Box::new(AddMessageKinds),
            Box::new(AddSenderDevice),
            Box::new(CreateAttachments),
            tern_webhook::migration("message"),
        ]
    }

    fn migration_table_name() -> DynIden {
        "tern_message_migrations".into_iden()
    }
}

/// Applies pending migrations.
pub async fn apply(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

#[derive(DeriveIden)]
enum Conversations {
    Table,
    Id,
    LastSeq,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ConversationId,
    Seq,
    MessageId,
    SenderId,
    ToUserId,
    GroupId,
    ContentJson,
    ClientMsgId,
    Kind,
    RefSeq,
    EditedAtMs,
    RecalledAtMs,
    SenderDevice,
    CreatedAtMs,
}

struct CreateMessages;

// Named explicitly: the derive would name every migration of this module
// `migration`.
impl MigrationName for CreateMessages {
    fn name(&self) -> &str {
        "m0001_create_messages"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateMessages {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Conversations::Table)
                    .if_not_exists()
                    .col(string_len(Conversations::Id, 64).primary_key())
                    .col(big_integer(Conversations::LastSeq))
                    .col(big_integer(Conversations::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Messages::Table)
                    .if_not_exists()
                    .col(string_len(Messages::ConversationId, 64))
                    .col(big_integer(Messages::Seq))
                    .col(string_len_uniq(Messages::MessageId, 36))
                    .col(big_integer(Messages::SenderId))
                    .col(big_integer_null(Messages::ToUserId))
                    .col(big_integer_null(Messages::GroupId))
                    .col(text(Messages::ContentJson))
                    .col(string_len(Messages::ClientMsgId, 64))
                    .col(big_integer(Messages::CreatedAtMs))
                    .primary_key(Index::create().col(Messages::ConversationId).col(Messages::Seq))
                    .to_owned(),
            )
            .await?;
        // Idempotent sends: one message per (sender, client_msg_id).
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("uq_messages_sender_client_msg")
                    .table(Messages::Table)
                    .col(Messages::SenderId)
                    .col(Messages::ClientMsgId)
                    .unique()
                    .to_owned(),
            )
            .await
    }
}

/// Edits and recalls: a message row may be an event about an earlier one
/// (`kind`, `ref_seq`), and a message remembers being edited or recalled.
struct AddMessageKinds;

impl MigrationName for AddMessageKinds {
    fn name(&self) -> &str {
        "m0002_add_message_kinds"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddMessageKinds {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite adds one at a time.
        for column in [
            integer(Messages::Kind).default(0).to_owned(),
            big_integer_null(Messages::RefSeq),
            big_integer_null(Messages::EditedAtMs),
            big_integer_null(Messages::RecalledAtMs),
        ] {
            let mut column = column;
            manager
                .alter_table(
                    Table::alter().table(Messages::Table).add_column(&mut column).to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

/// Several devices per user: a message remembers the device it came from,
/// so it reaches the sender's other devices and never echoes back.
struct AddSenderDevice;

impl MigrationName for AddSenderDevice {
    fn name(&self) -> &str {
        "m0003_add_sender_device"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddSenderDevice {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let mut column = string_len(Messages::SenderDevice, 64).default("").to_owned();
        manager
            .alter_table(Table::alter().table(Messages::Table).add_column(&mut column).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Attachments {
    Table,
    Id,
    ConversationId,
    UploaderId,
    Name,
    Size,
    ContentType,
    Width,
    Height,
    State,
    ObjectKey,
    CreatedAtMs,
}

/// Attachments: one row per upload, from its start to its sweep.
struct CreateAttachments;

impl MigrationName for CreateAttachments {
    fn name(&self) -> &str {
        "m0004_create_attachments"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateAttachments {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Attachments::Table)
                    .if_not_exists()
                    .col(string_len(Attachments::Id, 36).primary_key())
                    .col(string_len(Attachments::ConversationId, 64))
                    .col(big_integer(Attachments::UploaderId))
                    .col(string_len(Attachments::Name, 255))
                    .col(big_integer(Attachments::Size))
                    .col(string_len(Attachments::ContentType, 127))
                    .col(integer(Attachments::Width))
                    .col(integer(Attachments::Height))
                    .col(integer(Attachments::State))
                    .col(string_len(Attachments::ObjectKey, 160))
                    .col(big_integer(Attachments::CreatedAtMs))
                    .to_owned(),
            )
            .await?;
        // The sweep looks for old unreferenced uploads.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("ix_attachments_state_created")
                    .table(Attachments::Table)
                    .col(Attachments::State)
                    .col(Attachments::CreatedAtMs)
                    .to_owned(),
            )
            .await
    }
}
