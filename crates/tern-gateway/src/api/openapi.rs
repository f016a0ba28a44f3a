//! The HTTP API's OpenAPI 3.1 document, generated from the handlers'
//! `#[utoipa::path]` annotations and the `ToSchema` types of their bodies,
//! built once and served at `GET /api/openapi.json`. A test beside
//! `routes()` checks that it lists exactly the routes the gateway serves.

use super::{
    RateLimited, accounts, admin, attachments, conversations, groups, node, users, webhooks,
};
use crate::error::ErrorBody;
use axum::http::{HeaderName, header};
use std::sync::LazyLock;
use utoipa::{
    Modify, OpenApi,
    openapi::{
        self,
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tern HTTP API",
        description = "Accounts, groups, conversations, attachments and the admin API of a Tern \
            gateway. Messages are sent and received on the WebSocket (`GET /ws`), which this \
            document does not describe. Every error answers \
            `{\"error\": {\"code\", \"message\"}}` with the status of its code.",
    ),
    paths(
        accounts::register,
        accounts::login,
        accounts::refresh,
        accounts::logout,
        users::users,
        users::find_user,
        users::presence,
        groups::create_group,
        groups::list_groups,
        groups::join_group,
        groups::leave_group,
        groups::group_members,
        groups::add_members,
        groups::remove_member,
        conversations::conversations,
        conversations::history,
        conversations::reads,
        attachments::create_upload,
        attachments::get_attachment,
        attachments::complete_upload,
        attachments::get_content,
        attachments::put_content,
        admin::ban,
        admin::unban,
        admin::revoke,
        admin::online,
        admin::system_message,
        admin::recall,
        webhooks::parked,
        webhooks::retry,
        node::health,
        node::ready,
        node::stats,
        node::metrics,
        document,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerTokens),
    tags(
        (name = "accounts", description = "Register, log in, refresh tokens, log out"),
        (name = "users", description = "Finding users and their presence"),
        (name = "groups", description = "Groups and their members"),
        (name = "conversations",
            description = "The caller's conversations, their history and read markers"),
        (name = "attachments", description = "Uploading and downloading files sent in messages"),
        (name = "admin",
            description = "What operators do to users, messages and webhook events, with the \
                admin token"),
        (name = "node",
            description = "Probes, figures and metrics of one gateway node, and this document"),
    ),
)]
struct ApiDoc;

/// The two credentials the routes take, both as `Authorization: Bearer`.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, doc: &mut openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "access_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A user's access token, from `POST /api/login` or `POST /api/refresh`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The operators' token (the gateway's `TERN__GATEWAY__ADMIN_TOKEN`); a \
                         user's access token never opens the admin API.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, built on first use.
static JSON: LazyLock<String> =
    LazyLock::new(|| ApiDoc::openapi().to_pretty_json().expect("the document serialises"));

/// The OpenAPI document of the HTTP API, as JSON.
pub fn json() -> &'static str {
    &JSON
}

/// This document.
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    tag = "node",
    responses(
        (status = 200, body = Object, content_type = "application/json",
            description = "The OpenAPI 3.1 document of this API"),
        RateLimited,
    ),
)]
pub async fn document() -> ([(HeaderName, &'static str); 1], &'static str) {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
