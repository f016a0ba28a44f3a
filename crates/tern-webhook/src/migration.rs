//! The outbox's tables, as a migration each producing service adds to its
//! own list (services may share one database, so each outbox table is
//! named after its service; the lease table is shared, one row per outbox).

use sea_orm_migration::{prelude::*, schema::*};

/// The outbox table of service `name`.
pub(crate) fn table(name: &str) -> String {
    format!("webhook_outbox_{name}")
}

/// The columns of an outbox table.
#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum Outbox {
    Id,
    EventId,
    EventType,
    Endpoint,
    OrderKey,
    Body,
    Attempts,
    NextAttemptMs,
    Parked,
    LastError,
    CreatedMs,
}

impl Outbox {
    pub(crate) fn table(name: &str) -> Alias {
        Alias::new(name)
    }
}

/// Which dispatcher holds which outbox, and until when.
#[derive(DeriveIden, Clone, Copy)]
pub(crate) enum WebhookLeases {
    Table,
    Outbox,
    Holder,
    UntilMs,
}

/// The migration that creates service `name`'s outbox (and the shared
/// lease table if it is missing).
pub fn migration(name: &str) -> Box<dyn MigrationTrait> {
    Box::new(CreateOutbox { table: table(name) })
}

struct CreateOutbox {
    table: String,
}

impl MigrationName for CreateOutbox {
    fn name(&self) -> &str {
        "m0100_create_webhook_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let name = Outbox::table(&self.table);
        manager
            .create_table(
                Table::create()
                    .table(name.clone())
                    .if_not_exists()
                    .col(big_pk_auto(Outbox::Id))
                    .col(string_len(Outbox::EventId, 36))
                    .col(string_len(Outbox::EventType, 32))
                    .col(text(Outbox::Endpoint))
                    .col(string_len(Outbox::OrderKey, 96))
                    .col(text(Outbox::Body))
                    .col(integer(Outbox::Attempts))
                    .col(big_integer(Outbox::NextAttemptMs))
                    .col(boolean(Outbox::Parked))
                    .col(text_null(Outbox::LastError))
                    .col(big_integer(Outbox::CreatedMs))
                    .to_owned(),
            )
            .await?;
        // The dispatcher reads the live events in order; parked ones stay
        // out of its way.
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name(format!("idx_{}_parked_id", self.table))
                    .table(name)
                    .col(Outbox::Parked)
                    .col(Outbox::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WebhookLeases::Table)
                    .if_not_exists()
                    .col(string_len(WebhookLeases::Outbox, 64).primary_key())
                    .col(string_len(WebhookLeases::Holder, 64))
                    .col(big_integer(WebhookLeases::UntilMs))
                    .to_owned(),
            )
            .await
    }
}
