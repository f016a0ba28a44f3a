//! The group service's schema, as migrations it applies at start.

use sea_orm_migration::{prelude::*, schema::*};

struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateGroups), tern_webhook::migration("group")]
    }

    fn migration_table_name() -> DynIden {
        "tern_group_migrations".into_iden()
    }
}

/// Applies pending migrations.
pub async fn apply(db: &sea_orm::DatabaseConnection) -> Result<(), DbErr> {
    Migrator::up(db, None).await
}

#[derive(DeriveIden)]
enum Groups {
    Table,
    Id,
    Name,
    OwnerId,
    MembersVersion,
    CreatedAt,
}

#[derive(DeriveIden)]
enum GroupMembers {
    Table,
    GroupId,
    UserId,
    JoinedAt,
}

struct CreateGroups;

// Named explicitly: the derive would name every migration of this module
// `migration`.
impl MigrationName for CreateGroups {
    fn name(&self) -> &str {
        "m0001_create_groups"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateGroups {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Groups::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Groups::Id))
                    .col(string_len(Groups::Name, 255))
                    .col(big_integer(Groups::OwnerId))
                    .col(big_integer(Groups::MembersVersion))
                    .col(big_integer(Groups::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(GroupMembers::Table)
                    .if_not_exists()
                    .col(big_integer(GroupMembers::GroupId))
                    .col(big_integer(GroupMembers::UserId))
                    .col(big_integer(GroupMembers::JoinedAt))
                    .primary_key(
                        Index::create().col(GroupMembers::GroupId).col(GroupMembers::UserId),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_group_members_user")
                    .table(GroupMembers::Table)
                    .col(GroupMembers::UserId)
                    .to_owned(),
            )
            .await
    }
}
