//! Where attachments' bytes live: a folder on local disk (the embedded
//! default) or any S3-compatible object store, behind `object_store`'s one
//! interface. Only an S3 store signs URLs a client can upload to and
//! download from directly; a folder has no such URLs, so the gateway
//! carries those bytes itself.

use crate::Secret;
use object_store::{
    ClientOptions, ObjectStore, RetryConfig, aws::AmazonS3, aws::AmazonS3Builder,
    local::LocalFileSystem, path::Path, signer::Signer,
};
use serde::{Deserialize, Serialize};
use std::{sync::Arc, time::Duration};

pub use object_store::Error as StoreError;
pub use object_store::path::Path as ObjectPath;

/// Settings of attachments (`TERN__ATTACHMENTS__*`), read by the message
/// service (which owns uploads and their rules) and by gateways (which
/// carry the bytes of a store that signs no URLs). Both must agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AttachmentSettings {
    /// Where the bytes go: a folder (`data/attachments`, or
    /// `file:///var/lib/tern/attachments`), or `s3://bucket` (optionally
    /// `s3://bucket/prefix`) for an S3-compatible store.
    pub store: String,
    /// The S3 endpoint, e.g. `http://minio:9000`; empty for AWS itself.
    pub s3_endpoint: String,
    /// The endpoint clients reach the store at, for the URLs they are
    /// handed (e.g. `https://files.example.com`); empty: `s3_endpoint`.
    pub s3_public_endpoint: String,
    /// The S3 region (MinIO and most others accept any).
    pub s3_region: String,
    /// S3 credentials.
    pub s3_access_key_id: String,
    pub s3_secret_access_key: Secret,
    /// Largest attachment, in bytes.
    pub max_bytes: u64,
    /// Content types that may be uploaded, comma separated. Each upload's
    /// bytes are checked against the type they are declared as.
    pub allowed_types: String,
    /// How long an upload or download URL works.
    pub url_ttl_secs: u64,
    /// An upload no message references is removed after this long.
    pub unreferenced_ttl_secs: u64,
    /// How often unreferenced and recalled uploads are swept.
    pub sweep_interval_secs: u64,
}

impl Default for AttachmentSettings {
    fn default() -> Self {
        Self {
            store: "data/attachments".into(),
            s3_endpoint: String::new(),
            s3_public_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: Secret::default(),
            max_bytes: 25 * 1024 * 1024,
            allowed_types: [
                "image/png",
                "image/jpeg",
                "image/gif",
                "image/webp",
                "application/pdf",
                "application/zip",
                "text/plain",
                "audio/mpeg",
                "audio/ogg",
                "video/mp4",
                "video/webm",
            ]
            .join(","),
            url_ttl_secs: 300,
            unreferenced_ttl_secs: 24 * 3600,
            sweep_interval_secs: 600,
        }
    }
}

impl AttachmentSettings {
    /// The allowed content types, trimmed and lower-cased.
    pub fn allowed(&self) -> Vec<String> {
        self.allowed_types
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect()
    }

    /// How long a URL to an attachment's bytes works.
    pub fn url_ttl(&self) -> Duration {
        Duration::from_secs(self.url_ttl_secs.max(1))
    }
}

/// An opened store.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// Set for S3: signs URLs clients use directly (for the public
    /// endpoint, which may differ from the one Tern reaches).
    signer: Option<Arc<AmazonS3>>,
    /// Prepended to every key (an S3 URL's path).
    prefix: Path,
    /// How long a URL to the bytes works.
    url_ttl: Duration,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("signs", &self.signer.is_some()).finish()
    }
}

impl Objects {
    /// Opens the store `settings` name; a folder is created if missing.
    pub fn open(settings: &AttachmentSettings) -> Result<Self, StoreError> {
        if let Some(rest) = settings.store.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let builder = |endpoint: &str| {
                let mut builder = AmazonS3Builder::new()
                    .with_bucket_name(bucket)
                    .with_region(&settings.s3_region)
                    .with_access_key_id(&settings.s3_access_key_id)
                    .with_secret_access_key(settings.s3_secret_access_key.expose())
                    // A store that is down must fail a request in seconds, not
                    // after the default three minutes of retries.
                    .with_retry(RetryConfig {
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(5),
                        ..Default::default()
                    })
                    .with_client_options(
                        ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(2))
                            .with_timeout(Duration::from_secs(60))
                            .with_allow_http(endpoint.starts_with("http://")),
                    );
                if !endpoint.is_empty() {
                    // Path-style requests: what MinIO and most S3-compatible
                    // stores expect.
                    builder = builder
                        .with_endpoint(endpoint.trim_end_matches('/'))
                        .with_virtual_hosted_style_request(false);
                }
                builder.build()
            };
            let public = match settings.s3_public_endpoint.as_str() {
                "" => &settings.s3_endpoint,
                other => other,
            };
            Ok(Self {
                store: Arc::new(builder(&settings.s3_endpoint)?),
                signer: Some(Arc::new(builder(public)?)),
                prefix: Path::from(prefix),
                url_ttl: settings.url_ttl(),
            })
        } else {
            let folder = settings.store.strip_prefix("file://").unwrap_or(&settings.store);
            std::fs::create_dir_all(folder).map_err(|source| StoreError::Generic {
                store: "LocalFileSystem",
                source: Box::new(source),
            })?;
            let local = LocalFileSystem::new_with_prefix(folder)?;
            Ok(Self {
                store: Arc::new(local),
                signer: None,
                prefix: Path::default(),
                url_ttl: settings.url_ttl(),
            })
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Where `key` is kept in the store.
    pub fn path(&self, key: &str) -> Path {
        self.prefix.parts().chain(Path::from(key).parts()).collect()
    }

    /// How long a URL to the bytes works.
    pub fn url_ttl(&self) -> Duration {
        self.url_ttl
    }

    /// A URL of the store that allows `method` (`GET` or `PUT`) on `key`
    /// for [`url_ttl`](Self::url_ttl); `None` for a store that signs no URLs.
    pub async fn signed_url(
        &self,
        method: http::Method,
        key: &str,
    ) -> Result<Option<String>, StoreError> {
        let Some(signer) = &self.signer else { return Ok(None) };
        let url = signer.signed_url(method, &self.path(key), self.url_ttl).await?;
        Ok(Some(url.to_string()))
    }
}
