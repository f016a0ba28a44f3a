//! Rows the group service owns, and the queries on them.

use crate::GroupError;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use tern_runtime::clock::now_secs;

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
}

impl Store {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
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
        txn.commit().await?;
        Ok(group)
    }

    /// Deletes a group whose creation could not be completed.
    pub async fn delete(&self, group_id: i64) -> Result<(), GroupError> {
        members::Entity::delete_many()
            .filter(members::Column::GroupId.eq(group_id))
            .exec(&self.db)
            .await?;
        groups::Entity::delete_by_id(group_id).exec(&self.db).await?;
        Ok(())
    }

    pub async fn get(&self, group_id: i64) -> Result<Option<groups::Model>, GroupError> {
        Ok(groups::Entity::find_by_id(group_id).one(&self.db).await?)
    }

    /// Adds members (those already in the group are left as they are) and
    /// bumps the group's `members_version`, in one transaction.
    pub async fn add_members(&self, group_id: i64, users: &[i64]) -> Result<(), GroupError> {
        if users.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin().await?;
        insert_members(&txn, group_id, users).await?;
        bump_version(&txn, group_id).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Removes members; returns how many were removed.
    pub async fn remove_members(&self, group_id: i64, users: &[i64]) -> Result<u64, GroupError> {
        let txn = self.db.begin().await?;
        let result = members::Entity::delete_many()
            .filter(members::Column::GroupId.eq(group_id))
            .filter(members::Column::UserId.is_in(users.iter().copied()))
            .exec(&txn)
            .await?;
        if result.rows_affected > 0 {
            bump_version(&txn, group_id).await?;
        }
        txn.commit().await?;
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
