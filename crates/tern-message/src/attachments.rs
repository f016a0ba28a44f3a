//! Attachments: uploads, the checks of their bytes, the references
//! messages make to them, and the sweep of those never sent.
//!
//! An attachment row is created by `CreateUpload` (PENDING), checked by
//! `CompleteUpload` (READY: size, type read from the bytes, image
//! dimensions) and claimed by the message that references it (SENT). The
//! claim is one conditional `UPDATE`, so a sweep that removes an old
//! unreferenced upload and a send that references it cannot both win.
//! Only a message's `content.attachment` is ever read here; any other
//! content stays opaque text.

use crate::MessageError;
use object_store::ObjectStoreExt;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, IntoActiveModel,
    QueryFilter, QuerySelect, sea_query::Expr,
};
use std::time::Duration;
use tern_proto::pb::message::{Attachment, AttachmentState};
use tern_runtime::{
    clock::now_ms,
    objects::{AttachmentSettings, ObjectPath, Objects, StoreError},
};

/// Bytes read from the start of an upload to tell its type and, for an
/// image, its dimensions (a JPEG's size can follow a large EXIF block).
const SNIFF_BYTES: u64 = 256 * 1024;
/// Longest file name kept.
const MAX_NAME: usize = 200;
/// Attachments one sweep removes at most.
const SWEEP_BATCH: u64 = 500;

pub mod rows {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "attachments")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: String,
        pub conversation_id: String,
        pub uploader_id: i64,
        pub name: String,
        pub size: i64,
        pub content_type: String,
        pub width: i32,
        pub height: i32,
        /// `AttachmentState`, or [`super::RECALLED`].
        pub state: i32,
        pub object_key: String,
        pub created_at_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// The state of an attachment whose message was recalled: never served
/// again, its bytes removed by the next sweep.
const RECALLED: i32 = -1;

/// Uploads and their store.
#[derive(Clone)]
pub struct Attachments {
    db: DatabaseConnection,
    objects: Objects,
    max_bytes: u64,
    allowed: Vec<String>,
    unreferenced_ttl_ms: i64,
}

impl Attachments {
    pub fn new(db: DatabaseConnection, objects: Objects, settings: &AttachmentSettings) -> Self {
        Self {
            db,
            objects,
            max_bytes: settings.max_bytes,
            allowed: settings.allowed(),
            unreferenced_ttl_ms: settings.unreferenced_ttl_secs.saturating_mul(1000) as i64,
        }
    }

    /// Starts an upload by `user` (already known to be in the conversation).
    pub async fn create(
        &self,
        user: i64,
        conversation_id: &str,
        name: &str,
        size: u64,
        content_type: &str,
    ) -> Result<(Attachment, Option<String>, i64), MessageError> {
        if size == 0 {
            return Err(MessageError::Invalid("an attachment needs at least one byte"));
        }
        if size > self.max_bytes {
            return Err(MessageError::TooLarge);
        }
        let content_type = content_type.trim().to_ascii_lowercase();
        if !self.allowed.contains(&content_type) {
            return Err(MessageError::Unsupported(format!(
                "content type {content_type:?} is not allowed"
            )));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let name = display_name(name);
        let object_key = format!("{id}/{}", key_name(&name));
        let row = rows::Model {
            id,
            conversation_id: conversation_id.to_string(),
            uploader_id: user,
            name,
            size: size as i64,
            content_type,
            width: 0,
            height: 0,
            state: AttachmentState::Pending as i32,
            object_key,
            created_at_ms: now_ms(),
        };
        row.clone().into_active_model().insert(&self.db).await?;
        let (url, expires) = self.url(http::Method::PUT, &row.object_key).await?;
        Ok((view(row), url, expires))
    }

    /// The largest upload.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    async fn url(
        &self,
        method: http::Method,
        key: &str,
    ) -> Result<(Option<String>, i64), MessageError> {
        let url = self.objects.signed_url(method, key).await.map_err(unavailable)?;
        Ok((url, now_ms() + self.objects.url_ttl().as_millis() as i64))
    }

    /// The row of `id`, unless it is gone or recalled.
    pub async fn find(&self, id: &str) -> Result<rows::Model, MessageError> {
        match rows::Entity::find_by_id(id).one(&self.db).await? {
            Some(row) if row.state != RECALLED => Ok(row),
            _ => Err(MessageError::NoSuchAttachment),
        }
    }

    /// A URL for `row` (see `GetAttachment`), once the caller is allowed.
    pub async fn access(
        &self,
        row: rows::Model,
        upload: bool,
    ) -> Result<(Attachment, Option<String>, i64), MessageError> {
        let method = if upload { http::Method::PUT } else { http::Method::GET };
        let (url, expires) = self.url(method, &row.object_key).await?;
        Ok((view(row), url, expires))
    }

    /// Checks what `user` uploaded as `id`; a refused upload is deleted.
    pub async fn complete(&self, user: i64, id: &str) -> Result<Attachment, MessageError> {
        let row = self.find(id).await?;
        if row.uploader_id != user {
            return Err(MessageError::Forbidden("that upload is someone else's"));
        }
        if row.state != AttachmentState::Pending as i32 {
            return Ok(view(row));
        }
        let path = self.objects.path(&row.object_key);
        let store = self.objects.store();
        let head = match store.head(&path).await {
            Ok(head) => head,
            Err(StoreError::NotFound { .. }) => {
                return Err(MessageError::Unfinished("nothing was uploaded yet"));
            }
            Err(error) => return Err(unavailable(error)),
        };
        let refused = |error: MessageError| async {
            self.discard(&row.id, &path).await;
            Err(error)
        };
        if head.size != row.size as u64 {
            let error = format!("{} bytes were uploaded, {} declared", head.size, row.size);
            return refused(MessageError::Mismatch(error)).await;
        }
        let start = store
            .get_opts(
                &path,
                object_store::GetOptions {
                    range: Some((0..head.size.min(SNIFF_BYTES)).into()),
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        let stored_type = start
            .attributes
            .get(&object_store::Attribute::ContentType)
            .map(|v| v.as_ref().to_ascii_lowercase());
        let prefix = start.bytes().await.map_err(unavailable)?;
        let Some(actual) = sniff(&prefix, &row.content_type) else {
            let error = format!("the bytes are not a {} file", row.content_type);
            return refused(MessageError::Unsupported(error)).await;
        };
        if actual != row.content_type || !self.allowed.contains(&actual.to_string()) {
            let error = format!("declared {} but the bytes are {actual}", row.content_type);
            return refused(MessageError::Unsupported(error)).await;
        }
        // A store that keeps the uploader's Content-Type serves it back on
        // download: it must be what the bytes are.
        if let Some(stored) = stored_type.filter(|t| !t.is_empty() && t.as_str() != actual) {
            let error = format!("uploaded with Content-Type {stored}, but the bytes are {actual}");
            return refused(MessageError::Unsupported(error)).await;
        }
        let (width, height) = match actual.starts_with("image/") {
            true => imagesize::blob_size(&prefix)
                .map(|s| (s.width as i32, s.height as i32))
                .unwrap_or((0, 0)),
            false => (0, 0),
        };
        rows::Entity::update_many()
            .col_expr(rows::Column::State, Expr::value(AttachmentState::Ready as i32))
            .col_expr(rows::Column::Width, Expr::value(width))
            .col_expr(rows::Column::Height, Expr::value(height))
            .filter(rows::Column::Id.eq(&row.id))
            .filter(rows::Column::State.eq(AttachmentState::Pending as i32))
            .exec(&self.db)
            .await?;
        self.find(id).await.map(view)
    }

    /// Deletes a refused upload, row and bytes; a failure leaves it to the sweep.
    async fn discard(&self, id: &str, path: &ObjectPath) {
        if let Err(error) = self.objects.store().delete(path).await {
            tracing::warn!(%error, "could not delete a refused upload; the sweep will");
            return;
        }
        let _ = rows::Entity::delete_by_id(id).exec(&self.db).await;
    }

    /// Claims the attachment `content` references for a message of
    /// `sender` in `conversation_id`, and returns `content` with
    /// `attachment` replaced by its metadata; `None` when `content` names
    /// no attachment (it is then stored as it is).
    pub async fn claim(
        &self,
        content: &str,
        sender: i64,
        conversation_id: &str,
    ) -> Result<Option<String>, MessageError> {
        let Some((mut object, id)) = referenced(content)? else { return Ok(None) };
        let claimed = rows::Entity::update_many()
            .col_expr(rows::Column::State, Expr::value(AttachmentState::Sent as i32))
            .filter(rows::Column::Id.eq(&id))
            .filter(rows::Column::UploaderId.eq(sender))
            .filter(rows::Column::ConversationId.eq(conversation_id))
            .filter(
                rows::Column::State
                    .is_in([AttachmentState::Ready as i32, AttachmentState::Sent as i32]),
            )
            .exec(&self.db)
            .await?;
        let row = self.find(&id).await?;
        if claimed.rows_affected == 0 {
            return Err(if row.uploader_id != sender {
                MessageError::Forbidden("that attachment is someone else's upload")
            } else if row.conversation_id != conversation_id {
                MessageError::Forbidden("that attachment was uploaded for another conversation")
            } else {
                MessageError::Unfinished("that upload is not complete")
            });
        }
        object.insert("attachment".into(), metadata(&row));
        Ok(Some(serde_json::Value::Object(object).to_string()))
    }

    /// Marks the attachment a recalled message referenced: it is never
    /// served again and its bytes go with the next sweep.
    pub async fn recall(&self, content: &str) -> Result<(), MessageError> {
        let Ok(Some((_, id))) = referenced(content) else { return Ok(()) };
        rows::Entity::update_many()
            .col_expr(rows::Column::State, Expr::value(RECALLED))
            .filter(rows::Column::Id.eq(id))
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Removes recalled uploads and those never sent within the
    /// unreferenced time, bytes first; how many it removed.
    pub async fn sweep(&self) -> Result<usize, MessageError> {
        let cutoff = now_ms() - self.unreferenced_ttl_ms;
        let stale = rows::Entity::find()
            .filter(
                Condition::any().add(rows::Column::State.eq(RECALLED)).add(
                    Condition::all()
                        .add(rows::Column::State.is_in([
                            AttachmentState::Pending as i32,
                            AttachmentState::Ready as i32,
                        ]))
                        .add(rows::Column::CreatedAtMs.lt(cutoff)),
                ),
            )
            .limit(SWEEP_BATCH)
            .all(&self.db)
            .await?;
        let mut removed = 0;
        for row in stale {
            match self.objects.store().delete(&self.objects.path(&row.object_key)).await {
                Ok(()) | Err(StoreError::NotFound { .. }) => {}
                Err(error) => return Err(unavailable(error)),
            }
            // Only if it is still unreferenced (or recalled): a send may
            // have claimed it meanwhile; its bytes are then gone, which a
            // download reports as `not_found`.
            let deleted = rows::Entity::delete_many()
                .filter(rows::Column::Id.eq(&row.id))
                .filter(rows::Column::State.ne(AttachmentState::Sent as i32))
                .exec(&self.db)
                .await?;
            removed += deleted.rows_affected as usize;
        }
        Ok(removed)
    }

    /// Sweeps every `interval` until the process ends.
    pub async fn sweep_every(self, interval: Duration) {
        let mut ticks = tokio::time::interval(interval.max(Duration::from_secs(1)));
        loop {
            ticks.tick().await;
            match self.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "swept unreferenced attachments"),
                Err(error) => tracing::warn!(%error, "attachment sweep failed; retrying later"),
            }
        }
    }
}

/// The object `content` is and the attachment id it references, if it
/// references one. Only content that could name `attachment` is parsed:
/// the key written out, or written with an escape.
fn referenced(content: &str) -> Result<Option<(JsonObject, String)>, MessageError> {
    if !content.contains("attachment") && !content.contains("\\u") {
        return Ok(None);
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_str(content) else {
        return Ok(None);
    };
    let Some(reference) = object.get("attachment") else { return Ok(None) };
    let id = reference
        .get("id")
        .and_then(|id| id.as_str())
        .ok_or(MessageError::Invalid("content.attachment must be {\"id\": \"<attachment_id>\"}"))?
        .to_string();
    Ok(Some((object, id)))
}

/// What a message carries of its attachment.
fn metadata(row: &rows::Model) -> serde_json::Value {
    let mut value = serde_json::json!({
        "id": row.id,
        "name": row.name,
        "size": row.size,
        "content_type": row.content_type,
    });
    if row.width > 0 && row.height > 0 {
        value["width"] = row.width.into();
        value["height"] = row.height.into();
    }
    value
}

fn view(row: rows::Model) -> Attachment {
    Attachment {
        attachment_id: row.id,
        conversation_id: row.conversation_id,
        uploader_id: row.uploader_id as u64,
        name: row.name,
        size: row.size as u64,
        content_type: row.content_type,
        width: row.width.max(0) as u32,
        height: row.height.max(0) as u32,
        state: row.state,
        object_key: row.object_key,
        created_at_ms: row.created_at_ms,
    }
}

/// The type the bytes show, given the declared one: a known signature
/// (`infer`), or plain text for declared text whose start is UTF-8.
fn sniff(prefix: &[u8], declared: &str) -> Option<&'static str> {
    if let Some(kind) = infer::get(prefix) {
        return Some(kind.mime_type());
    }
    if declared == "text/plain" {
        // A cut may fall inside a character: allow up to 3 bytes of one.
        let valid = match std::str::from_utf8(prefix) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none() && prefix.len() - e.valid_up_to() < 4,
        };
        if valid && !prefix.contains(&0) {
            return Some("text/plain");
        }
    }
    None
}

/// A file name safe to show and to save under: no path, no control
/// characters, no quotes, at most 200 characters; `file` when nothing is left.
pub fn display_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '"' | '\u{202e}' | '\u{202d}'))
        .take(MAX_NAME)
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() { "file".into() } else { cleaned }
}

/// The last part of an object's key: the name in ASCII letters, digits,
/// `.`, `-` and `_` (what a store's URL carries without escaping).
fn key_name(name: &str) -> String {
    let ascii: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(100)
        .collect();
    if ascii.trim_matches(['_', '.']).is_empty() { "file".into() } else { ascii }
}

/// A store failure as what callers see: `unavailable`.
fn unavailable(error: StoreError) -> MessageError {
    tracing::warn!(%error, "attachment store failed");
    MessageError::Peer(tonic::Status::unavailable("the attachment store is unavailable"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lose_paths_and_controls() {
        assert_eq!(display_name("../../etc/passwd"), "passwd");
        assert_eq!(display_name("C:\\x\\report.pdf"), "report.pdf");
        assert_eq!(display_name("a\"b\u{0}\n.png"), "ab.png");
        assert_eq!(display_name("..."), "file");
        assert_eq!(display_name("évian.txt"), "évian.txt");
        assert_eq!(key_name("évian photo.png"), "_vian_photo.png");
        assert_eq!(key_name("__"), "file");
    }

    #[test]
    fn sniffing_reads_the_bytes() {
        let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x02\0\0\0\x03\x08\x06\0\0\0";
        assert_eq!(sniff(png, "image/png"), Some("image/png"));
        assert_eq!(sniff(png, "text/plain"), Some("image/png"));
        assert_eq!(sniff(b"just words", "image/png"), None);
        assert_eq!(sniff(b"just words", "text/plain"), Some("text/plain"));
        assert_eq!(sniff(b"bin\0ary", "text/plain"), None);
        assert_eq!(
            sniff("caf\u{e9}".as_bytes().split_last().unwrap().1, "text/plain"),
            Some("text/plain")
        );
    }

    #[test]
    fn only_content_naming_an_attachment_is_read() {
        assert!(referenced(r#"{"text":"hi"}"#).unwrap().is_none());
        assert!(referenced(r#""attachment""#).unwrap().is_none());
        let (_, id) = referenced(r#"{"attachment":{"id":"a1"},"text":"x"}"#).unwrap().unwrap();
        assert_eq!(id, "a1");
        let (_, id) = referenced(r#"{"\u0061ttachment":{"id":"a2"}}"#).unwrap().unwrap();
        assert_eq!(id, "a2");
        assert!(referenced(r#"{"attachment":"a3"}"#).is_err());
    }
}
