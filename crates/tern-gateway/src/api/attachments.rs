//! `/api/attachments`: start an upload, check it, and hand out download
//! URLs; the message service decides who may do what.
//!
//! A store that signs URLs (S3) gets the bytes from clients directly. A
//! store that does not (a folder, the embedded default) gets them through
//! `/api/attachments/{id}/content`, under URLs this gateway signs itself:
//! a short-lived token naming the attachment, the user and the method, so
//! an `<img src>` works without an `Authorization` header. Every use of
//! such a URL asks the message service again, so a member removed since
//! it was issued is refused.

use super::{Caller, ServiceErrors, body};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
};
use axum::{
    Json,
    body::{Body, Bytes},
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use futures::StreamExt;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use object_store::{ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};
use tern_proto::{
    ErrorCode,
    pb::message::{
        Attachment, AttachmentAccess, AttachmentState, CompleteUploadRequest, CreateUploadRequest,
        GetAttachmentRequest,
    },
};
use tern_runtime::clock::now_ms;
use utoipa::ToSchema;

/// The audience of URL tokens: never accepted as an access token, and an
/// access token is never accepted here.
const URL_AUDIENCE: &str = "tern-attachment-url";

/// Signs and checks the URLs of bytes this gateway carries.
pub struct UrlSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
    ttl_ms: i64,
}

impl UrlSigner {
    /// With `secret` (the token key every gateway shares, so any of them
    /// serves a URL another issued); a random key when there is none.
    pub fn new(secret: &str, ttl_secs: u64) -> Self {
        let secret = match secret.is_empty() {
            false => format!("attachment urls\n{secret}").into_bytes(),
            true => {
                tracing::warn!(
                    "no gateway jwt.secret: attachment URLs work only on the gateway that issued them"
                );
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
                key.to_vec()
            }
        };
        Self {
            encoding: EncodingKey::from_secret(&secret).expect("an HMAC key of any length"),
            decoding: DecodingKey::from_secret(&secret).expect("an HMAC key of any length"),
            ttl_ms: (ttl_secs.max(1) * 1000) as i64,
        }
    }

    /// A path allowing `user` to `op` (`get` or `put`) the bytes of `id`.
    fn sign(&self, user: u64, id: &str, op: &str) -> (String, i64) {
        let exp = now_ms() + self.ttl_ms;
        let claims = UrlClaims {
            sub: user,
            att: id.to_string(),
            op: op.to_string(),
            aud: URL_AUDIENCE.into(),
            exp: exp / 1000,
        };
        let token = jsonwebtoken::encode(&Header::default(), &claims, &self.encoding)
            .expect("HS256 signing does not fail");
        (format!("/api/attachments/{id}/content?token={token}"), exp)
    }

    /// The user a URL token lets `op` the bytes of `id`.
    fn check(&self, token: &str, id: &str, op: &str) -> Result<u64, ApiError> {
        let mut validation = Validation::default();
        validation.set_audience(&[URL_AUDIENCE]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<UrlClaims>(token, &self.decoding, &validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::new(ErrorCode::Forbidden, "this link has expired; ask for a new one")
                }
                _ => ApiError::new(ErrorCode::Forbidden, "this link is not valid"),
            })?
            .claims;
        match claims.att == id && claims.op == op {
            true => Ok(claims.sub),
            false => Err(ApiError::new(ErrorCode::Forbidden, "this link is not valid")),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct UrlClaims {
    sub: u64,
    att: String,
    op: String,
    aud: String,
    exp: i64,
}

/// A file about to be uploaded.
#[derive(Deserialize, ToSchema)]
struct NewUpload {
    /// The conversation it will be sent in; the caller must be a member.
    conversation_id: String,
    /// The file's name.
    name: String,
    /// Its exact size in bytes, at most the server's `max_bytes`.
    size: u64,
    /// Its MIME type, one the server allows; the bytes are checked against it.
    content_type: String,
}

/// Where and how to upload.
#[derive(Serialize, ToSchema)]
pub struct UploadView {
    attachment_id: String,
    /// Absolute (the store's) or relative to this server.
    upload_url: String,
    #[schema(examples("PUT"))]
    upload_method: &'static str,
    /// Unix ms.
    expires_at: i64,
    max_bytes: u64,
}

/// An attachment as clients see it.
#[derive(Serialize, ToSchema)]
pub struct AttachmentView {
    attachment_id: String,
    conversation_id: String,
    uploader_id: u64,
    name: String,
    size: u64,
    content_type: String,
    /// In pixels, for an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    width: Option<u32>,
    /// In pixels, for an image.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    height: Option<u32>,
    state: AttachmentStatus,
}

/// Where an attachment is: uploading (`pending`), uploaded and checked
/// (`ready`), or sent in a message (`sent`).
#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AttachmentStatus {
    Pending,
    Ready,
    Sent,
}

impl From<Attachment> for AttachmentView {
    fn from(a: Attachment) -> Self {
        let image = a.width > 0 && a.height > 0;
        Self {
            state: match AttachmentState::try_from(a.state) {
                Ok(AttachmentState::Pending) => AttachmentStatus::Pending,
                Ok(AttachmentState::Ready) => AttachmentStatus::Ready,
                _ => AttachmentStatus::Sent,
            },
            attachment_id: a.attachment_id,
            conversation_id: a.conversation_id,
            uploader_id: a.uploader_id,
            name: a.name,
            size: a.size,
            content_type: a.content_type,
            width: image.then_some(a.width),
            height: image.then_some(a.height),
        }
    }
}

/// An attachment with a URL to download it.
#[derive(Serialize, ToSchema)]
pub struct DownloadView {
    #[serde(flatten)]
    attachment: AttachmentView,
    /// Absolute (the store's) or relative to this server.
    download_url: String,
    /// When the URL expires (Unix ms).
    expires_at: i64,
}

#[derive(Deserialize)]
pub struct UrlToken {
    token: Option<String>,
}

/// Starts an upload.
///
/// Upload the bytes to `upload_url` with `upload_method`, then call
/// `POST /api/attachments/{attachment_id}/complete`.
#[utoipa::path(
    post,
    path = "/api/attachments",
    tag = "attachments",
    security(("access_token" = [])),
    request_body = NewUpload,
    responses(
        (status = 201, body = UploadView, description = "Where to upload the bytes"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not JSON, or a field breaks its rules"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody,
            description = "`not_member` or `forbidden`: the caller is not in the conversation"),
        (status = 413, body = ErrorBody, description = "`too_large`: over the server's size limit"),
        (status = 415, body = ErrorBody,
            description = "`unsupported_type`: a content type the server does not allow"),
        ServiceErrors,
    ),
)]
pub async fn create_upload(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    bytes: Bytes,
) -> Result<(StatusCode, Json<UploadView>), ApiError> {
    let NewUpload { conversation_id, name, size, content_type } = body(&bytes)?;
    let request = CreateUploadRequest { user_id, conversation_id, name, size, content_type };
    let created = state.services.message.clone().create_upload(request).await?.into_inner();
    let attachment = created.attachment.unwrap_or_default();
    let (upload_url, expires_at) = match created.upload_url.is_empty() {
        false => (created.upload_url, created.expires_at_ms),
        true => state.urls.sign(user_id, &attachment.attachment_id, "put"),
    };
    Ok((
        StatusCode::CREATED,
        Json(UploadView {
            attachment_id: attachment.attachment_id,
            upload_url,
            upload_method: "PUT",
            expires_at,
            max_bytes: created.max_bytes,
        }),
    ))
}

/// Checks the uploaded bytes: their size and their type.
///
/// A refused upload is deleted.
#[utoipa::path(
    post,
    path = "/api/attachments/{attachment_id}/complete",
    tag = "attachments",
    security(("access_token" = [])),
    params(("attachment_id" = String, Path, description = "The attachment")),
    responses(
        (status = 200, body = AttachmentView,
            description = "The checked attachment, ready to send"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: not as many bytes as declared"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: someone else's upload"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: no such attachment, or nothing uploaded yet"),
        (status = 415, body = ErrorBody,
            description = "`unsupported_type`: the bytes are not the declared, allowed type"),
        ServiceErrors,
    ),
)]
pub async fn complete_upload(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(attachment_id): Path<String>,
) -> Result<Json<AttachmentView>, ApiError> {
    complete(&state, user_id, attachment_id).await.map(Json)
}

async fn complete(
    state: &AppState,
    user_id: u64,
    attachment_id: String,
) -> Result<AttachmentView, ApiError> {
    let request = CompleteUploadRequest { user_id, attachment_id };
    Ok(state.services.message.clone().complete_upload(request).await?.into_inner().into())
}

/// The attachment and a URL to download it.
///
/// For members of the conversation it was sent in, and for its uploader
/// before then.
#[utoipa::path(
    get,
    path = "/api/attachments/{attachment_id}",
    tag = "attachments",
    security(("access_token" = [])),
    params(("attachment_id" = String, Path, description = "The attachment")),
    responses(
        (status = 200, body = DownloadView,
            description = "The attachment and where to download it"),
        (status = 401, body = ErrorBody, description = "`unauthenticated`: no valid access token"),
        (status = 403, body = ErrorBody, description = "`forbidden`: not the caller's to see"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: no such attachment, or not uploaded yet"),
        ServiceErrors,
    ),
)]
pub async fn get_attachment(
    State(state): State<AppState>,
    Caller(user_id): Caller,
    Path(attachment_id): Path<String>,
) -> Result<Json<DownloadView>, ApiError> {
    let (attachment, url, expires) =
        access(&state, user_id, attachment_id, AttachmentAccess::Download).await?;
    let (download_url, expires_at) = match url.is_empty() {
        false => (url, expires),
        true => state.urls.sign(user_id, &attachment.attachment_id, "get"),
    };
    Ok(Json(DownloadView { attachment: attachment.into(), download_url, expires_at }))
}

async fn access(
    state: &AppState,
    user_id: u64,
    attachment_id: String,
    access: AttachmentAccess,
) -> Result<(Attachment, String, i64), ApiError> {
    let request = GetAttachmentRequest { user_id, attachment_id, access: access as i32 };
    let answer = state.services.message.clone().get_attachment(request).await?.into_inner();
    Ok((answer.attachment.unwrap_or_default(), answer.url, answer.expires_at_ms))
}

fn store_down(error: object_store::Error) -> ApiError {
    tracing::warn!(%error, "attachment store failed");
    ApiError::new(ErrorCode::Unavailable, "the attachment store is unavailable; retry")
}

/// Uploads the bytes, on a store that signs no URLs.
///
/// They are written as they arrive (never more than declared), then
/// checked as by `POST /api/attachments/{attachment_id}/complete`.
#[utoipa::path(
    put,
    path = "/api/attachments/{attachment_id}/content",
    tag = "attachments",
    params(
        ("attachment_id" = String, Path, description = "The attachment"),
        ("token" = String, Query,
            description = "The token of the signed URL that `POST /api/attachments` or \
                `GET /api/attachments/{attachment_id}` handed out"),
    ),
    request_body(
        description = "The file's bytes, exactly as many as declared; their Content-Type is \
            not read",
        content(("application/octet-stream")),
    ),
    responses(
        (status = 200, body = AttachmentView,
            description = "The checked attachment, ready to send"),
        (status = 400, body = ErrorBody,
            description = "`bad_request`: fewer bytes than declared, or an interrupted upload"),
        (status = 403, body = ErrorBody,
            description = "`forbidden`: the link is not valid or has expired, or the upload is \
                someone else's"),
        (status = 404, body = ErrorBody, description = "`not_found`: no such attachment"),
        (status = 409, body = ErrorBody,
            description = "`conflict`: the upload is already complete"),
        (status = 413, body = ErrorBody, description = "`too_large`: more bytes than declared"),
        (status = 415, body = ErrorBody,
            description = "`unsupported_type`: the bytes are not the declared, allowed type"),
        ServiceErrors,
    ),
)]
pub async fn put_content(
    State(state): State<AppState>,
    Path(attachment_id): Path<String>,
    Query(UrlToken { token }): Query<UrlToken>,
    upload: Body,
) -> Result<Json<AttachmentView>, ApiError> {
    let user_id = state.urls.check(&token.unwrap_or_default(), &attachment_id, "put")?;
    let (attachment, _, _) =
        access(&state, user_id, attachment_id.clone(), AttachmentAccess::Upload).await?;
    let files = &state.services.files;
    let path = files.path(&attachment.object_key);
    let mut writer =
        WriteMultipart::new(files.store().put_multipart(&path).await.map_err(store_down)?);
    let mut chunks = upload.into_data_stream();
    let mut written = 0u64;
    while let Some(chunk) = chunks.next().await {
        let refused = match chunk {
            Ok(chunk) if written + chunk.len() as u64 <= attachment.size => {
                written += chunk.len() as u64;
                writer.write(&chunk);
                match writer.wait_for_capacity(4).await {
                    Ok(()) => continue,
                    Err(error) => store_down(error),
                }
            }
            Ok(_) => ApiError::new(
                ErrorCode::TooLarge,
                format!("more bytes than the {} declared", attachment.size),
            ),
            Err(_) => ApiError::bad_request("the upload was interrupted"),
        };
        let _ = writer.abort().await;
        return Err(refused);
    }
    writer.finish().await.map_err(store_down)?;
    complete(&state, user_id, attachment_id).await.map(Json)
}

/// Downloads the bytes, on a store that signs no URLs.
#[utoipa::path(
    get,
    path = "/api/attachments/{attachment_id}/content",
    tag = "attachments",
    params(
        ("attachment_id" = String, Path, description = "The attachment"),
        ("token" = String, Query,
            description = "The token of the signed URL that `POST /api/attachments` or \
                `GET /api/attachments/{attachment_id}` handed out"),
    ),
    responses(
        (
            status = 200,
            description = "The bytes, with the attachment's content type",
            content(("*/*")),
            headers(
                ("Content-Disposition" = String,
                    description = "`inline` for an image, else `attachment`, with the file's name"),
            ),
        ),
        (status = 403, body = ErrorBody,
            description = "`forbidden`: the link is not valid or has expired, or not the caller's \
                to see"),
        (status = 404, body = ErrorBody,
            description = "`not_found`: no such attachment, or the file is gone"),
        ServiceErrors,
    ),
)]
pub async fn get_content(
    State(state): State<AppState>,
    Path(attachment_id): Path<String>,
    Query(UrlToken { token }): Query<UrlToken>,
) -> Result<Response, ApiError> {
    let user_id = state.urls.check(&token.unwrap_or_default(), &attachment_id, "get")?;
    let (attachment, _, _) =
        access(&state, user_id, attachment_id, AttachmentAccess::Download).await?;
    let files = &state.services.files;
    let found = match files.store().get(&files.path(&attachment.object_key)).await {
        Ok(found) => found,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(ApiError::new(ErrorCode::NotFound, "the file is gone"));
        }
        Err(error) => return Err(store_down(error)),
    };
    let size = found.meta.size;
    let mut response = Body::from_stream(found.into_stream()).into_response();
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&attachment.content_type)
        .unwrap_or(HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_TYPE, content_type);
    headers.insert(header::CONTENT_LENGTH, size.into());
    let inline = attachment.content_type.starts_with("image/");
    if let Ok(value) = HeaderValue::from_str(&disposition(&attachment.name, inline)) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    // Whatever the file holds, it runs no script in this origin.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=300"));
    Ok(response)
}

/// `Content-Disposition` naming `name` safely: an ASCII fallback and the
/// UTF-8 name percent-encoded (RFC 6266).
fn disposition(name: &str, inline: bool) -> String {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '%') || c == ' ' { c } else { '_' }
        })
        .collect();
    let mut encoded = String::new();
    for byte in name.bytes() {
        match byte {
            b'A'..=b'Z'
            | b'a'..=b'z'
            | b'0'..=b'9'
            | b'!'
            | b'#'
            | b'$'
            | b'&'
            | b'+'
            | b'-'
            | b'.'
            | b'^'
            | b'_'
            | b'`'
            | b'|'
            | b'~' => encoded.push(byte as char),
            _ => encoded.push_str(&format!("%{byte:02X}")),
        }
    }
    let kind = if inline { "inline" } else { "attachment" };
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispositions_are_safe() {
        assert_eq!(
            disposition("a \"b\".txt", false),
            "attachment; filename=\"a _b_.txt\"; filename*=UTF-8''a%20%22b%22.txt"
        );
        assert_eq!(
            disposition("é.png", true),
            "inline; filename=\"_.png\"; filename*=UTF-8''%C3%A9.png"
        );
    }

    #[test]
    fn url_tokens_name_one_use() {
        let signer = UrlSigner::new("0123456789abcdef0123456789abcdef", 60);
        let (url, _) = signer.sign(7, "att-1", "get");
        let token = url.split("token=").nth(1).unwrap();
        assert_eq!(signer.check(token, "att-1", "get").unwrap(), 7);
        assert!(signer.check(token, "att-2", "get").is_err());
        assert!(signer.check(token, "att-1", "put").is_err());
        let other = UrlSigner::new("another key, also 32 bytes long!!", 60);
        assert!(other.check(token, "att-1", "get").is_err());
    }
}
