//! One client type per service that reaches it either over gRPC or, when
//! the service runs in the same process, by calling its code.
//!
//! In distributed mode every client is [`Remote`](AuthClient::Remote): a
//! generated tonic client on a channel. The embedded server builds the four
//! services in one process and hands each caller a
//! [`Local`](AuthClient::Local) client instead, which calls the service's
//! trait method with the request as it is: nothing is encoded, no task is
//! spawned, no HTTP/2 machinery runs. Either way the same service code
//! answers, and the methods have the generated clients' signatures, so a
//! caller cannot tell which one it holds.

use crate::pb::{auth, group, message, offline, webhook};
use std::sync::{Arc, OnceLock};
use tonic::{
    IntoRequest, Response, Status,
    client::GrpcService,
    codegen::{Body, Bytes, StdError},
};

/// A service in this process, supplied once it is built. Services call
/// each other in a cycle (message → group → offline → message), so every
/// caller gets its handle first and [`Local::bind`] points all clones of
/// it at the service afterwards.
pub struct Local<S: ?Sized>(Arc<OnceLock<Arc<S>>>);

impl<S: ?Sized> Local<S> {
    /// A handle not yet bound to a service.
    pub fn unbound() -> Self {
        Self(Arc::new(OnceLock::new()))
    }

    /// Points this handle and every clone of it at `service`. A second
    /// call is ignored.
    pub fn bind(&self, service: Arc<S>) {
        let _ = self.0.set(service);
    }

    fn get(&self) -> Result<&Arc<S>, Status> {
        self.0.get().ok_or_else(|| Status::unavailable("service not started yet"))
    }
}

impl<S: ?Sized> Clone for Local<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// Defines a client enum over a generated client and a server trait, with
/// one method per RPC in the generated client's shape.
macro_rules! client {
    (
        $(#[$doc:meta])*
        $name:ident: $remote:path, $service:path;
        $($method:ident($request:ty) -> $response:ty;)*
    ) => {
        $(#[$doc])*
        #[derive(Clone)]
        pub enum $name<T> {
            /// Over gRPC.
            Remote($remote),
            /// In this process.
            Local(Local<dyn $service>),
        }

        impl<T> $name<T>
        where
            T: GrpcService<tonic::body::Body>,
            T::Error: Into<StdError>,
            T::ResponseBody: Body<Data = Bytes> + Send + 'static,
            <T::ResponseBody as Body>::Error: Into<StdError> + Send,
        {
            /// Over gRPC on `channel`. Answers come from Tern's own
            /// services, so their size is not limited here (requests are,
            /// by the server).
            pub fn remote(channel: T) -> Self {
                Self::Remote(<$remote>::new(channel).max_decoding_message_size(usize::MAX))
            }

            $(
                #[allow(missing_docs)]
                pub async fn $method(
                    &mut self,
                    request: impl IntoRequest<$request>,
                ) -> Result<Response<$response>, Status> {
                    match self {
                        // Boxed: a tonic call's future is several KiB, and
                        // a caller that awaits it would otherwise carry
                        // that much in its own state for its whole life
                        // (a session does, per connection).
                        Self::Remote(client) => Box::pin(client.$method(request)).await,
                        Self::Local(local) => local.get()?.$method(request.into_request()).await,
                    }
                }
            )*
        }
    };
}

client! {
    /// The auth service.
    AuthClient: auth::auth_service_client::AuthServiceClient<T>, auth::auth_service_server::AuthService;
    register(auth::RegisterRequest) -> auth::RegisterResponse;
    login(auth::LoginRequest) -> auth::TokenPair;
    refresh(auth::RefreshRequest) -> auth::TokenPair;
    logout(auth::LogoutRequest) -> auth::LogoutResponse;
    verify_token(auth::VerifyTokenRequest) -> auth::VerifyTokenResponse;
    get_users(auth::GetUsersRequest) -> auth::GetUsersResponse;
    find_user(auth::FindUserRequest) -> auth::User;
    revoke_user(auth::RevokeUserRequest) -> auth::RevokeUserResponse;
    set_banned(auth::SetBannedRequest) -> auth::SetBannedResponse;
    record_presence(auth::RecordPresenceRequest) -> auth::RecordPresenceResponse;
    list_revocations(auth::ListRevocationsRequest) -> auth::ListRevocationsResponse;
}

client! {
    /// The group service.
    GroupClient: group::group_service_client::GroupServiceClient<T>, group::group_service_server::GroupService;
    create_group(group::CreateGroupRequest) -> group::Group;
    join_group(group::JoinGroupRequest) -> group::Group;
    add_members(group::AddMembersRequest) -> group::Group;
    remove_member(group::RemoveMemberRequest) -> group::Group;
    leave_group(group::LeaveGroupRequest) -> group::Group;
    get_group(group::GetGroupRequest) -> group::Group;
    is_member(group::IsMemberRequest) -> group::IsMemberResponse;
    list_user_groups(group::ListUserGroupsRequest) -> group::ListUserGroupsResponse;
}

client! {
    /// The message service.
    MessageClient: message::message_service_client::MessageServiceClient<T>, message::message_service_server::MessageService;
    send(message::SendRequest) -> message::SendResponse;
    send_batch(message::SendBatchRequest) -> message::SendBatchResponse;
    list_messages(message::ListMessagesRequest) -> message::ListMessagesResponse;
    get_conversation_states(message::GetConversationStatesRequest) -> message::GetConversationStatesResponse;
    typing(message::TypingRequest) -> message::TypingResponse;
    mark_read(message::MarkReadRequest) -> message::MarkReadResponse;
    recall(message::RecallRequest) -> message::SendAck;
    edit(message::EditRequest) -> message::SendAck;
    create_upload(message::CreateUploadRequest) -> message::CreateUploadResponse;
    complete_upload(message::CompleteUploadRequest) -> message::Attachment;
    get_attachment(message::GetAttachmentRequest) -> message::GetAttachmentResponse;
}

client! {
    /// The offline service.
    OfflineClient: offline::offline_service_client::OfflineServiceClient<T>, offline::offline_service_server::OfflineService;
    init_cursors(offline::InitCursorsRequest) -> offline::InitCursorsResponse;
    drop_cursors(offline::DropCursorsRequest) -> offline::DropCursorsResponse;
    list_backlog(offline::ListBacklogRequest) -> offline::ListBacklogResponse;
    list_backlogs(offline::ListBacklogsRequest) -> offline::ListBacklogsResponse;
    pull(offline::PullRequest) -> offline::PullResponse;
    ack(offline::AckRequest) -> offline::AckResponse;
    ack_batch(offline::AckBatchRequest) -> offline::AckBatchResponse;
    mark_read(offline::MarkReadRequest) -> offline::MarkReadResponse;
    read_positions(offline::ReadPositionsRequest) -> offline::ReadPositionsResponse;
    shared_with(offline::SharedWithRequest) -> offline::SharedWithResponse;
}

client! {
    /// The webhook outbox of the auth, group or message service.
    WebhookClient: webhook::webhook_admin_client::WebhookAdminClient<T>, webhook::webhook_admin_server::WebhookAdmin;
    list_parked(webhook::ListParkedRequest) -> webhook::ListParkedResponse;
    retry_parked(webhook::RetryParkedRequest) -> webhook::RetryParkedResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_handle_answers_unavailable_until_bound_then_reaches_its_service() {
        let handle = Local::<str>::unbound();
        let clone = handle.clone();
        let status = clone.get().expect_err("nothing is bound yet");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        handle.bind(Arc::from("auth"));
        handle.bind(Arc::from("ignored"));
        assert_eq!(clone.get().map(|s| s.to_string()).ok().as_deref(), Some("auth"));
    }
}
