//! The `tern.group.v1.GroupService` implementation.

use crate::{
    GroupError, Peers,
    store::{Change, Store},
};
use backon::{ExponentialBuilder, Retryable};
use std::collections::BTreeSet;
use tern_proto::{
    conversation,
    pb::{
        auth::GetUsersRequest,
        group::{
            AddMembersRequest, CreateGroupRequest, GetGroupRequest, Group, IsMemberRequest,
            IsMemberResponse, JoinGroupRequest, LeaveGroupRequest, ListUserGroupsRequest,
            ListUserGroupsResponse, RemoveMemberRequest, group_service_server::GroupService,
        },
        message::{MessageKind, SendRequest, send_request::Target},
        offline::{DropCursorsRequest, InitCursorsRequest},
    },
};
use tonic::{Request, Response, Status};

/// The group service.
#[derive(Clone)]
pub struct Groups {
    store: Store,
    peers: Peers,
    max_members: usize,
    /// The admin API of the webhook outbox.
    webhooks: tern_webhook::Admin,
}

fn to_i64(ids: impl IntoIterator<Item = u64>) -> Result<Vec<i64>, GroupError> {
    ids.into_iter()
        .map(|id| i64::try_from(id).map_err(|_| GroupError::UnknownUsers(vec![id])))
        .collect()
}

impl Groups {
    pub(crate) fn new(
        db: sea_orm::DatabaseConnection,
        peers: Peers,
        max_members: usize,
        outbox: tern_webhook::Outbox,
    ) -> Self {
        let webhooks = outbox.admin(db.clone());
        Self { store: Store::new(db, outbox), peers, max_members, webhooks }
    }

    /// The admin API of this service's webhook outbox.
    pub fn webhooks(&self) -> tern_webhook::Admin {
        self.webhooks.clone()
    }

    /// Fails with `UnknownUsers` unless every id is a registered user.
    async fn require_users(&self, ids: &BTreeSet<u64>) -> Result<(), GroupError> {
        let found = self
            .peers
            .auth
            .clone()
            .get_users(GetUsersRequest { user_ids: ids.iter().copied().collect() })
            .await?
            .into_inner()
            .users;
        let found: BTreeSet<u64> = found.into_iter().map(|u| u.user_id).collect();
        let missing: Vec<u64> = ids.difference(&found).copied().collect();
        if missing.is_empty() { Ok(()) } else { Err(GroupError::UnknownUsers(missing)) }
    }

    async fn init_cursors(
        &self,
        group_id: i64,
        users: &[i64],
        start_seq: Option<u64>,
    ) -> Result<(), GroupError> {
        if users.is_empty() {
            return Ok(());
        }
        self.peers
            .offline
            .clone()
            .init_cursors(InitCursorsRequest {
                conversation_id: conversation::group(group_id as u64),
                user_ids: users.iter().map(|&u| u as u64).collect(),
                start_seq,
            })
            .await?;
        Ok(())
    }

    async fn describe(&self, group_id: i64) -> Result<Group, GroupError> {
        let group = self.store.get(group_id).await?.ok_or(GroupError::UnknownGroup)?;
        let members = self.store.member_ids(group_id).await?;
        Ok(Group {
            group_id: group.id as u64,
            name: group.name,
            owner_id: group.owner_id as u64,
            member_ids: members.into_iter().map(|m| m as u64).collect(),
            members_version: group.members_version as u64,
        })
    }

    /// Adds users to an existing group. Their cursors start first, at the
    /// group's latest message, and only then does the membership commit:
    /// a message stored in between reaches them as an offline message
    /// instead of falling between cursor and membership. If the membership
    /// cannot be stored the cursors are dropped again; the call is
    /// idempotent, so the caller simply retries.
    /// With `actor` set, only the owner may add.
    async fn add(
        &self,
        group_id: u64,
        users: BTreeSet<u64>,
        actor: Option<u64>,
    ) -> Result<Group, GroupError> {
        let gid = i64::try_from(group_id).map_err(|_| GroupError::UnknownGroup)?;
        let group = self.store.get(gid).await?.ok_or(GroupError::UnknownGroup)?;
        if actor.is_some_and(|a| a != group.owner_id as u64) {
            return Err(GroupError::NotOwner);
        }
        if users.is_empty() {
            return Err(GroupError::Invalid("user_ids must not be empty".into()));
        }
        self.require_users(&users).await?;
        let existing = self.store.member_ids(gid).await?;
        let new: Vec<i64> =
            to_i64(users)?.into_iter().filter(|u| existing.binary_search(u).is_err()).collect();
        if new.is_empty() {
            return self.describe(gid).await;
        }
        if existing.len() + new.len() > self.max_members {
            return Err(GroupError::Invalid(format!(
                "a group holds at most {} members",
                self.max_members
            )));
        }
        self.init_cursors(gid, &new, None).await?;
        let (change, by) = match actor {
            Some(owner) => ("added", owner),
            None if new.len() == 1 => ("joined", new[0] as u64),
            None => ("added", 0),
        };
        let added = Change { kind: change, user_ids: &new, by };
        let result = self.store.add_members(gid, added).await;
        let new: Vec<u64> = new.iter().map(|&u| u as u64).collect();
        if let Err(error) = result {
            self.drop_cursors(group_id, new).await.ok();
            return Err(error);
        }
        let group = self.describe(gid).await?;
        self.announce(&group, change, &new, by).await;
        Ok(group)
    }

    /// Removes `user_id`: by themselves (`actor` None) or by the owner.
    async fn remove(
        &self,
        group_id: u64,
        user_id: u64,
        actor: Option<u64>,
    ) -> Result<Group, GroupError> {
        let gid = i64::try_from(group_id).map_err(|_| GroupError::UnknownGroup)?;
        let group = self.store.get(gid).await?.ok_or(GroupError::UnknownGroup)?;
        if actor.is_some_and(|a| a != group.owner_id as u64) {
            return Err(GroupError::NotOwner);
        }
        if group.owner_id as u64 == user_id {
            return Err(GroupError::OwnerCannotLeave);
        }
        let uid = to_i64([user_id])?;
        // The cursor goes first: without it the user can read nothing more
        // of the group, even if removing the membership then fails (a retry
        // of this idempotent call finishes the job).
        self.drop_cursors(group_id, vec![user_id]).await?;
        let (change, by) = match actor {
            Some(owner) => ("removed", owner),
            None => ("left", user_id),
        };
        let removal = Change { kind: change, user_ids: &uid, by };
        let removed = self.store.remove_members(gid, removal).await? > 0;
        let group = self.describe(gid).await?;
        if removed {
            self.announce(&group, change, &[user_id], by).await;
        }
        Ok(group)
    }

    /// Posts a membership change into the group's conversation: a system
    /// entry with its own seq, which every member (the new ones too, the
    /// departed no longer) receives in order, so member lists stay current
    /// without polling. The change itself is done by now; the entry is
    /// retried for a few seconds, then only logged. Its `client_msg_id`
    /// names the group and the member list version the change produced, so
    /// a retry is stored once.
    async fn announce(&self, group: &Group, change: &str, user_ids: &[u64], by: u64) {
        let content = serde_json::json!({ "change": change, "user_ids": user_ids, "by": by });
        let request = SendRequest {
            sender_id: 0,
            client_msg_id: format!("members:{}:{}", group.group_id, group.members_version),
            target: Some(Target::GroupId(group.group_id)),
            content_json: content.to_string(),
            system: true,
            kind: MessageKind::Membership as i32,
            device: String::new(),
        };
        let post = || {
            let mut message = self.peers.message.clone();
            let request = request.clone();
            async move { message.send(request).await }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_times(5);
        if let Err(error) = post.retry(backoff).when(|s| s.code() == tonic::Code::Unavailable).await
        {
            metrics::counter!("tern_group_membership_events_lost_total").increment(1);
            tracing::warn!(group_id = group.group_id, change, %error, "membership change not posted");
        }
    }

    async fn drop_cursors(&self, group_id: u64, user_ids: Vec<u64>) -> Result<(), GroupError> {
        self.peers
            .offline
            .clone()
            .drop_cursors(DropCursorsRequest {
                conversation_id: conversation::group(group_id),
                user_ids,
            })
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl GroupService for Groups {
    async fn create_group(
        &self,
        request: Request<CreateGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let CreateGroupRequest { owner_id, name, member_ids } = request.into_inner();
        let name = name.trim().to_string();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(GroupError::Invalid("group name must be 1 to 64 characters".into()).into());
        }
        let mut members: BTreeSet<u64> = member_ids.into_iter().collect();
        members.insert(owner_id);
        if members.len() > self.max_members {
            return Err(GroupError::Invalid(format!(
                "a group holds at most {} members",
                self.max_members
            ))
            .into());
        }
        self.require_users(&members).await?;
        let members = to_i64(members)?;
        let group = self.store.create(&name, owner_id as i64, &members).await?;
        // A new conversation has no messages, so every cursor starts at 0.
        if let Err(error) = self.init_cursors(group.id, &members, Some(0)).await {
            self.store.delete(group.id).await?;
            return Err(error.into());
        }
        tracing::info!(group_id = group.id, members = members.len(), "group created");
        Ok(Response::new(self.describe(group.id).await?))
    }

    async fn join_group(
        &self,
        request: Request<JoinGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let JoinGroupRequest { group_id, user_id } = request.into_inner();
        Ok(Response::new(self.add(group_id, BTreeSet::from([user_id]), None).await?))
    }

    async fn add_members(
        &self,
        request: Request<AddMembersRequest>,
    ) -> Result<Response<Group>, Status> {
        let AddMembersRequest { group_id, user_ids, actor_id } = request.into_inner();
        let actor = (actor_id != 0).then_some(actor_id);
        Ok(Response::new(self.add(group_id, user_ids.into_iter().collect(), actor).await?))
    }

    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let LeaveGroupRequest { group_id, user_id } = request.into_inner();
        Ok(Response::new(self.remove(group_id, user_id, None).await?))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<Group>, Status> {
        let RemoveMemberRequest { group_id, user_id, actor_id } = request.into_inner();
        let actor = (actor_id != 0).then_some(actor_id);
        Ok(Response::new(self.remove(group_id, user_id, actor).await?))
    }

    async fn get_group(
        &self,
        request: Request<GetGroupRequest>,
    ) -> Result<Response<Group>, Status> {
        let gid =
            i64::try_from(request.into_inner().group_id).map_err(|_| GroupError::UnknownGroup)?;
        Ok(Response::new(self.describe(gid).await?))
    }

    async fn is_member(
        &self,
        request: Request<IsMemberRequest>,
    ) -> Result<Response<IsMemberResponse>, Status> {
        let IsMemberRequest { group_id, user_id } = request.into_inner();
        let gid = i64::try_from(group_id).map_err(|_| GroupError::UnknownGroup)?;
        let is_member = match i64::try_from(user_id) {
            Ok(uid) => self.store.is_member(gid, uid).await?,
            Err(_) => false,
        };
        // Read after the membership, so a change that committed before this
        // answer is always reflected in the version.
        let group = self.store.get(gid).await?.ok_or(GroupError::UnknownGroup)?;
        Ok(Response::new(IsMemberResponse {
            is_member,
            members_version: group.members_version as u64,
        }))
    }

    async fn list_user_groups(
        &self,
        request: Request<ListUserGroupsRequest>,
    ) -> Result<Response<ListUserGroupsResponse>, Status> {
        let Ok(uid) = i64::try_from(request.into_inner().user_id) else {
            return Ok(Response::new(ListUserGroupsResponse::default()));
        };
        let groups = self
            .store
            .groups_of(uid)
            .await?
            .into_iter()
            .map(|g| Group {
                group_id: g.id as u64,
                name: g.name,
                owner_id: g.owner_id as u64,
                member_ids: vec![],
                members_version: g.members_version as u64,
            })
            .collect();
        Ok(Response::new(ListUserGroupsResponse { groups }))
    }
}
