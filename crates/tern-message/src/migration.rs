//! The message service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateMessages)]
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
