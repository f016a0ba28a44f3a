//! Rows the group service owns, and the queries on them.

use crate::GroupError;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tern_runtime::clock::now_secs;
use tern_webhook::{Event, Outbox};

/// A change of a group's members, as `group.changed` reports it.
pub struct Change<'a> {
    /// `added`, `joined`, `removed` or `left`.
    pub kind: &'a str,
    pub user_ids: &'a [i64],
    /// Who made it (0: a backend).
    pub by: u64,
}

fn changed(group_id: i64, kind: &str, user_ids: &[i64], by: u64) -> Event {
    let data = serde_json::json!({
        "group_id": group_id,
        "change": kind,
        "user_ids": user_ids,
        "by": by,
    });
    Event::new("group.changed", format!("group:{group_id}"), data)
}

pub mod groups {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "groups")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub name: String,
        pub owner_id: i64,
        pub members_version: i64,
        pub created_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod members {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "group_members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub group_id: i64,
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i64,
        pub joined_at: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Typed access to the group tables.
#[derive(Clone)]
pub struct Store {
    db: DatabaseConnection,
    /// Where `group.*` webhook events are written, each in the transaction
    /// of its change.
    outbox: Outbox,
}

impl Store {
    pub fn new(db: DatabaseConnection, outbox: Outbox) -> Self {
        Self { db, outbox }
    }

    /// Creates a group with its members (owner included) in one transaction.
    pub async fn create(
        &self,
        name: &str,
        owner: i64,
        members: &[i64],
    ) -> Result<groups::Model, GroupError> {
        let txn = self.db.begin().await?;
        let group = groups::Entity::insert(groups::ActiveModel {
            name: Set(name.to_string()),
            owner_id: Set(owner),
            members_version: Set(1),
            created_at: Set(now_secs()),
            ..Default::default()
        })
        .exec_with_returning(&txn)
        .await?;
        insert_members(&txn, group.id, members).await?;
        let data = serde_json::json!({
            "group_id": group.id,
            "name": group.name,
            "owner_id": group.owner_id,
            "member_ids": members,
            "created_at": group.created_at,
        });
        let event = Event::new("group.created", format!("group:{}", group.id), data);
        self.outbox.enqueue(&txn, [event]).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(group)
    }

    /// Deletes a group whose creation could not be completed; its
    /// `group.created` is followed by `group.changed` with change `deleted`.
    pub async fn delete(&self, group_id: i64) -> Result<(), GroupError> {
        let txn = self.db.begin().await?;
        members::Entity::delete_many()
            .filter(members::Column::GroupId.eq(group_id))
            .exec(&txn)
            .await?;
        groups::Entity::delete_by_id(group_id).exec(&txn).await?;
        self.outbox.enqueue(&txn, [changed(group_id, "deleted", &[], 0)]).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    pub async fn get(&self, group_id: i64) -> Result<Option<groups::Model>, GroupError> {
        Ok(groups::Entity::find_by_id(group_id).one(&self.db).await?)
    }

    /// Adds members (those already in the group are left as they are) and
    /// bumps the group's `members_version`, with the change's event, in one
    /// transaction.
    pub async fn add_members(&self, group_id: i64, change: Change<'_>) -> Result<(), GroupError> {
        if change.user_ids.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        insert_members(&txn, group_id, change.user_ids).await?;
        bump_version(&txn, group_id).await?;
        let event = changed(group_id, change.kind, change.user_ids, change.by);
        self.outbox.enqueue(&txn, [event]).await?;
        txn.commit().await?;
        self.outbox.wake();
        Ok(())
    }

    /// Removes members (with the change's event, when there was a change);
    /// returns how many were removed.
    pub async fn remove_members(
        &self,
        group_id: i64,
        change: Change<'_>,
    ) -> Result<u64, GroupError> {
        let txn = self.db.begin().await?;
        let result = members::Entity::delete_many()
            .filter(members::Column::GroupId.eq(group_id))
            .filter(members::Column::UserId.is_in(change.user_ids.iter().copied()))
            .exec(&txn)
            .await?;
        if result.rows_affected > 0 {
            bump_version(&txn, group_id).await?;
            let event = changed(group_id, change.kind, change.user_ids, change.by);
            self.outbox.enqueue(&txn, [event]).await?;
        }
        txn.commit().await?;
        self.outbox.wake();
        Ok(result.rows_affected)
    }

    /// Member ids, sorted.
    pub async fn member_ids(&self, group_id: i64) -> Result<Vec<i64>, GroupError> {
        Ok(members::Entity::find()
            .select_only()
            .column(members::Column::UserId)
            .filter(members::Column::GroupId.eq(group_id))
            .order_by_asc(members::Column::UserId)
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    pub async fn is_member(&self, group_id: i64, user_id: i64) -> Result<bool, GroupError> {
        Ok(members::Entity::find_by_id((group_id, user_id)).one(&self.db).await?.is_some())
    }

    pub async fn groups_of(&self, user_id: i64) -> Result<Vec<groups::Model>, GroupError> {
        let ids: Vec<i64> = members::Entity::find()
            .select_only()
            .column(members::Column::GroupId)
            .filter(members::Column::UserId.eq(user_id))
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(groups::Entity::find()
            .filter(groups::Column::Id.is_in(ids))
            .order_by_asc(groups::Column::Id)
            .all(&self.db)
            .await?)
    }
}

/// Marks the member list as changed, so cached copies are refreshed.
async fn bump_version(db: &impl sea_orm::ConnectionTrait, group_id: i64) -> Result<(), GroupError> {
    groups::Entity::update_many()
        .col_expr(groups::Column::MembersVersion, Expr::col(groups::Column::MembersVersion).add(1))
        .filter(groups::Column::Id.eq(group_id))
        .exec(db)
        .await?;
    Ok(())
}

async fn insert_members(
    db: &impl sea_orm::ConnectionTrait,
    group_id: i64,
    users: &[i64],
) -> Result<(), GroupError> {
    let now = now_secs();
    // Large groups go in chunks to stay under every backend's bind limit.
    for chunk in users.chunks(500) {
        let rows = chunk.iter().map(|&user_id| members::ActiveModel {
            group_id: Set(group_id),
            user_id: Set(user_id),
            joined_at: Set(now),
        });
        members::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([members::Column::GroupId, members::Column::UserId])
            .exec(db)
            .await?;
    }
    Ok(())
}
