//! `/api/groups` and its members.

use super::{Caller, ServiceErrors, body, parse_id};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
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
use utoipa::ToSchema;

/// A group with its members.
#[derive(Serialize, ToSchema)]
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
#[derive(Serialize, ToSchema)]
pub struct GroupSummary {
    group_id: u64,
    name: String,
    owner_id: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Groups {
    groups: Vec<GroupSummary>,
}

#[derive(Serialize, ToSchema)]
pub struct Members {
    group_id: u64,
    member_ids: Vec<u64>,
}

#[derive(Deserialize, ToSchema)]
struct NewGroup {
    /// 1–64 characters.
    name: String,
    /// Members besides the caller, who owns the group.
    #[serde(default)]
    member_ids: Vec<u64>,
}

/// Creates a group owned by the caller.
#[utoipa::path(
    post,
    path = "/api/groups",
    tag = "groups",
    security(("access_token" = [])),
    request_body = NewGroup,
    responses(
        (status = 201, body = GroupView, description = "Created"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, a bad name, or too many members"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 404, body = ErrorBody, description = "`unknown_user`: a member id names no user"),
        ServiceErrors,
    ),
)]
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

/// The caller's groups.
#[utoipa::path(
    get,
    path = "/api/groups",
    tag = "groups",
    security(("access_token" = [])),
    responses(
        (status = 200, body = Groups, description = "The groups the caller is a member of"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        ServiceErrors,
    ),
)]
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

/// Joins a group.
#[utoipa::path(
    post,
    path = "/api/groups/{group_id}/join",
    tag = "groups",
    security(("access_token" = [])),
    params(("group_id" = u64, Path, description = "The group")),
    responses(
        (status = 200, body = GroupView, description = "The group, the caller among its members"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the group id is not a number, or the group is full"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 404, body = ErrorBody, description = "`unknown_group`: no such group"),
        ServiceErrors,
    ),
)]
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

/// Leaves a group.
#[utoipa::path(
    post,
    path = "/api/groups/{group_id}/leave",
    tag = "groups",
    security(("access_token" = [])),
    params(("group_id" = u64, Path, description = "The group")),
    responses(
        (status = 200, body = GroupView, description = "The group without the caller"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the group id is not a number"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the owner cannot leave"),
        (status = 404, body = ErrorBody, description = "`unknown_group`: no such group"),
        ServiceErrors,
    ),
)]
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

#[derive(Deserialize, ToSchema)]
struct NewMembers {
    member_ids: Vec<u64>,
}

/// The owner adds members.
#[utoipa::path(
    post,
    path = "/api/groups/{group_id}/members",
    tag = "groups",
    security(("access_token" = [])),
    params(("group_id" = u64, Path, description = "The group")),
    request_body = NewMembers,
    responses(
        (status = 200, body = GroupView, description = "The group with its new members"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, no ids, or the group would be too big"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: the caller is not the owner"),
        (status = 404, body = ErrorBody, description = "`unknown_group` or `unknown_user`"),
        ServiceErrors,
    ),
)]
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

/// The owner removes a member.
#[utoipa::path(
    delete,
    path = "/api/groups/{group_id}/members/{user_id}",
    tag = "groups",
    security(("access_token" = [])),
    params(
        ("group_id" = u64, Path, description = "The group"),
        ("user_id" = u64, Path, description = "The member to remove"),
    ),
    responses(
        (status = 200, body = GroupView, description = "The group without the member"),
        (status = 400, body = ErrorBody, description = "`bad_request`: an id is not a number"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody,
            description = "`forbidden`: the caller is not the owner, or the member is the owner"),
        (status = 404, body = ErrorBody, description = "`unknown_group`: no such group"),
        ServiceErrors,
    ),
)]
pub async fn remove_member(
    State(state): State<AppState>,
    Caller(actor_id): Caller,
    Path((group_id, user_id)): Path<(String, String)>,
) -> Result<Json<GroupView>, ApiError> {
    let (group_id, user_id) = (parse_id(&group_id)?, parse_id(&user_id)?);
    let request = RemoveMemberRequest { group_id, user_id, actor_id };
    Ok(Json(state.services.group.clone().remove_member(request).await?.into_inner().into()))
}

/// A group's members, for its members only.
#[utoipa::path(
    get,
    path = "/api/groups/{group_id}/members",
    tag = "groups",
    security(("access_token" = [])),
    params(("group_id" = u64, Path, description = "The group")),
    responses(
        (status = 200, body = Members, description = "The members"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: the group id is not a number"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`not_member`: the caller is not a member"),
        (status = 404, body = ErrorBody, description = "`unknown_group`: no such group"),
        ServiceErrors,
    ),
)]
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
