//! `/api/groups` and its members.

use super::{Caller, body, parse_id};
use crate::{AppState, error::ApiError};
use axum::{
    Json,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::IntoResponse,
};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::group::{
        AddMembersRequest, CreateGroupRequest, GetGroupRequest, Group, JoinGroupRequest,
        LeaveGroupRequest, ListUserGroupsRequest, RemoveMemberRequest,
    },
};

/// A group with its members.
#[derive(Serialize)]
pub struct GroupView {
    group_id: u64,
    name: String,
    owner_id: u64,
    member_ids: Vec<u64>,
}

impl From<Group> for GroupView {
    fn from(group: Group) -> Self {
        Self {
            group_id: group.group_id,
            name: group.name,
            owner_id: group.owner_id,
            member_ids: group.member_ids,
        }
    }
}

/// A group in the caller's list.
#[derive(Serialize)]
pub struct GroupSummary {
    group_id: u64,
    name: String,
    owner_id: u64,
}

#[derive(Serialize)]
pub struct Groups {
    groups: Vec<GroupSummary>,
}

#[derive(Serialize)]
pub struct Members {
    group_id: u64,
    member_ids: Vec<u64>,
}

#[derive(Deserialize)]
struct NewGroup {
    name: String,
    #[serde(default)]
    member_ids: Vec<u64>,
}

pub async fn create_group(
    State(state): State<AppState>,
    Caller(owner_id): Caller,
    bytes: Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let NewGroup { name, member_ids } = body(&bytes)?;
    let group = state
        .services
        .group
        .clone()
        .create_group(CreateGroupRequest { owner_id, name, member_ids })
        .await?
        .into_inner();
    Ok((StatusCode::CREATED, Json(GroupView::from(group))))
}

pub async fn list_groups(
    State(state): State<AppState>,
    Caller(user_id): Caller,
) -> Result<Json<Groups>, ApiError> {
    let groups = state
        .services
        .group
        .clone()
        .list_user_groups(ListUserGroupsRequest { user_id })
        .await?
        .into_inner()
        .groups;
    let groups = groups
        .into_iter()
        .map(|g| GroupSummary { group_id: g.group_id, name: g.name, owner_id: g.owner_id })
        .collect();
    Ok(Json(Groups { groups }))
}

pub async fn join_group(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group = state
        .services
        .group
        .clone()
        .join_group(JoinGroupRequest { group_id, user_id })
        .await?
        .into_inner();
    Ok(Json(group.into()))
}

pub async fn leave_group(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<GroupView>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group = state
        .services
        .group
        .clone()
        .leave_group(LeaveGroupRequest { group_id, user_id })
        .await?
        .into_inner();
    Ok(Json(group.into()))
}

#[derive(Deserialize)]
struct NewMembers {
    member_ids: Vec<u64>,
}

/// `POST /api/groups/{id}/members` `{member_ids}`: the owner adds members.
pub async fn add_members(
    State(state): State<AppState>,
    Caller(actor_id): Caller,
    Path(group_id): Path<String>,
    bytes: Bytes,
) -> Result<Json<GroupView>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let NewMembers { member_ids } = body(&bytes)?;
    let request = AddMembersRequest { group_id, user_ids: member_ids, actor_id };
    Ok(Json(state.services.group.clone().add_members(request).await?.into_inner().into()))
}

/// `DELETE /api/groups/{id}/members/{user_id}`: the owner removes a member.
pub async fn remove_member(
    State(state): State<AppState>,
    Caller(actor_id): Caller,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Result<Json<GroupView>, ApiError> {
    let (group_id, user_id) = (parse_id(&group_id)?, parse_id(&user_id)?);
    let request = RemoveMemberRequest { group_id, user_id, actor_id };
    Ok(Json(state.services.group.clone().remove_member(request).await?.into_inner().into()))
}

/// Members are visible to members only.
pub async fn group_members(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(group_id): Path<String>,
) -> Result<Json<Members>, ApiError> {
    let group_id = parse_id(&group_id)?;
    let group =
        state.services.group.clone().get_group(GetGroupRequest { group_id }).await?.into_inner();
    if !group.member_ids.contains(&user_id) {
        return Err(ApiError::new(ErrorCode::NotMember, "only members can list a group's members"));
    }
    Ok(Json(Members { group_id: group.group_id, member_ids: group.member_ids }))
}
