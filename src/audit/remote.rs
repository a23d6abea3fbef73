//! Audit files in object storage: where they are (`s3://BUCKET/PREFIX`,
//! `file:///DIR`, or a local path), how to reach the store, and listing
//! them with date-partition pruning.
//!
//! A store location holds the same Hive layout as a local audit directory
//! (`PREFIX/date=YYYY-MM-DD/<uuidv7>.<writer>.parquet`), without the
//! `_flightrec/` state: a directory's journal, locks and tips stay local.
//!
//! Credentials, region and endpoint come from the usual AWS environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
//! `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT`), else from the
//! shared credentials and config files of `AWS_PROFILE` (default
//! `default`); `--endpoint` overrides the endpoint.
//!
//! An endpoint is parsed as a URL once ([`check_endpoint`]) and judged by
//! the host a client connects to: `https://` anywhere, plain `http://` only
//! to a loopback IP address or the name `localhost` itself; never with
//! credentials, a query or a fragment in it. The S3 client is given that
//! parsed URL and no other endpoint (the environment's endpoint variables
//! are read here, never by the client on its own).
//!
//! Store I/O runs on one small tokio runtime of its own ([`block_on`]), so
//! the synchronous readers and the shipper thread can use it from anywhere
//! outside an async context.

use crate::audit::error::AuditError;
use crate::audit::layout;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How to reach object stores: what `--endpoint` says.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    /// The S3 endpoint (overrides `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
}

/// Runs store I/O to completion on the store runtime. Must not be called
/// from inside an async task.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// Runs a task on the store runtime in the background.
pub fn spawn<F>(f: F)
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    runtime().spawn(f);
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("flightrec-store")
            .enable_all()
            .build()
            .expect("the object store runtime starts")
    })
}

/// Whether an input names a store location rather than a local path.
pub fn is_url(text: &str) -> bool {
    text.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// A local path for a `file://` URL (`file:///abs/dir`), or `None`.
pub fn file_url_path(text: &str) -> Option<PathBuf> {
    text.strip_prefix("file://").map(PathBuf::from)
}

/// One bucket (or local store root) and how to talk to it.
pub struct Bucket {
    /// `s3://BUCKET` or `file://` (what error messages start with).
    pub url: String,
    pub store: Arc<dyn ObjectStore>,
    /// For S3: what signed requests of our own need (object locks).
    pub s3: Option<S3Access>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

/// What a signed S3 request needs beyond the object store client.
pub struct S3Access {
    pub store: Arc<AmazonS3>,
    /// `ENDPOINT/BUCKET` (path style), no trailing slash.
    pub base: String,
    pub region: String,
    pub http: object_store::client::HttpClient,
}

/// A prefix in a bucket: where an audit log lives in a store.
#[derive(Debug, Clone)]
pub struct StoreDir {
    pub bucket: Arc<Bucket>,
    pub prefix: ObjPath,
}

/// A data file, local or in a store.
#[derive(Debug, Clone)]
pub enum DataFile {
    Local(PathBuf),
    Remote {
        dir: StoreDir,
        key: ObjPath,
        size: u64,
    },
}

impl DataFile {
    /// The file name (the last path segment).
    pub fn name(&self) -> &str {
        match self {
            DataFile::Local(p) => p.file_name().and_then(|n| n.to_str()).unwrap_or_default(),
            DataFile::Remote { key, .. } => key.filename().unwrap_or_default(),
        }
    }

    /// What error messages call this file: its path, or `s3://BUCKET/KEY`.
    pub fn label(&self) -> PathBuf {
        match self {
            DataFile::Local(p) => p.clone(),
            DataFile::Remote { dir, key, .. } => PathBuf::from(dir.url_of(key)),
        }
    }

    /// The writer id in the file's name (`""`: the original chain).
    pub fn writer(&self) -> String {
        layout::file_writer(Path::new(self.name()))
    }
}

/// Orders data files as `audit verify` and replay expect: by file name
/// (write order), ties by full label.
pub fn sort_files(files: &mut [DataFile]) {
    files.sort_by(|a, b| {
        a.name()
            .cmp(b.name())
            .then_with(|| a.label().cmp(&b.label()))
    });
}

fn store_error(url: String, e: impl std::fmt::Display) -> AuditError {
    AuditError::Store {
        url,
        detail: e.to_string(),
    }
}

/// An object store endpoint that passed [`check_endpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    /// The parsed URL as serialized by the parser, without a trailing `/`:
    /// exactly what the S3 client is given, and what our own signed
    /// requests start with.
    url: String,
    /// A plain `http://` endpoint (then its host is loopback).
    plain_http: bool,
}

/// Parses an endpoint URL and judges it by the host an HTTP client would
/// connect to. Accepted: `https://HOST[:PORT][/PATH]`, and
/// `http://HOST[:PORT][/PATH]` when HOST is a loopback IP address
/// (127.0.0.0/8, `::1`; other spellings of such an address, such as
/// `2130706433`, are that address) or the name `localhost` itself — not
/// a name under it, nor `localhost.`, and whatever /etc/hosts says of
/// `localhost` is trusted. Refused: credentials (userinfo), a query or a
/// fragment, whitespace, control characters and backslashes anywhere
/// (no endpoint needs them; parsers differ on them).
fn check_endpoint(text: &str) -> Result<Endpoint, String> {
    let refuse = |why: &str| Err(format!("endpoint {text:?}: {why}"));
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return refuse(
            "whitespace, control characters and backslashes are not allowed in an endpoint URL",
        );
    }
    let scheme = text.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return refuse("expected an http(s):// URL, e.g. https://s3.example.com");
    }
    let url = match url::Url::parse(text) {
        Ok(url) => url,
        Err(e) => return refuse(&format!("not a URL: {e}")),
    };
    // Anything between the `//` and the host ending in `@` is userinfo,
    // even when the parser leaves nothing of it (`http://@host`).
    let authority = text.split_once("://").map_or("", |(_, rest)| {
        rest.split(['/', '?', '#']).next().unwrap_or("")
    });
    if authority.contains('@') || !url.username().is_empty() || url.password().is_some() {
        return refuse(
            "credentials do not belong in the endpoint URL (give them in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)",
        );
    }
    let plain_http = url.scheme() == "http";
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => return refuse("the URL names no host"),
    };
    if plain_http && !loopback {
        return refuse(&format!(
            "plain http:// is accepted only on loopback addresses (127.0.0.0/8, [::1], localhost), and this one connects to {} (use https://)",
            url.host_str().unwrap_or_default()
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return refuse("an endpoint URL has no query (`?`) or fragment (`#`)");
    }
    Ok(Endpoint {
        url: url.as_str().trim_end_matches('/').to_string(),
        plain_http,
    })
}

/// `AmazonS3Builder::from_env` over `vars`, without the endpoint
/// variables: the only endpoint the client gets is the one
/// [`check_endpoint`] passed (the client would otherwise prefer
/// `AWS_ENDPOINT_URL_S3` to the endpoint it is given).
fn s3_builder<I>(vars: I) -> AmazonS3Builder
where
    I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
{
    use object_store::aws::AmazonS3ConfigKey as Key;
    let mut builder = AmazonS3Builder::new();
    for (key, value) in vars {
        let (Some(key), Some(value)) = (key.to_str(), value.to_str()) else {
            continue;
        };
        if !key.starts_with("AWS_") {
            continue;
        }
        match key.to_ascii_lowercase().parse::<Key>() {
            Ok(Key::Endpoint | Key::S3Endpoint) | Err(_) => {}
            Ok(key) => builder = builder.with_config(key, value),
        }
    }
    builder
}

/// Values from the shared AWS credentials/config files for a profile.
fn profile_values(profile: &str) -> Vec<(String, String)> {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let credentials = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/credentials")));
    let config = std::env::var_os("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".aws/config")));
    profile_values_in(credentials, config, profile)
}

/// Values of `profile` in a credentials file (section `[NAME]`) and a
/// config file (section `[profile NAME]`, or `[default]`), credentials
/// first.
fn profile_values_in(
    credentials: Option<PathBuf>,
    config: Option<PathBuf>,
    profile: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let sections = [
        (credentials, profile.to_string()),
        (
            config,
            if profile == "default" {
                "default".to_string()
            } else {
                format!("profile {profile}")
            },
        ),
    ];
    for (file, section) in sections {
        let Some(text) = file.and_then(|f| std::fs::read_to_string(f).ok()) else {
            continue;
        };
        let mut inside = false;
        for line in text.lines() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == section;
            } else if inside && let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

impl StoreDir {
    /// Parses `s3://BUCKET[/PREFIX]` or `file:///DIR` into a store location.
    pub fn parse(url: &str, options: &StoreOptions) -> Result<StoreDir, AuditError> {
        let bad = |detail: &str| store_error(url.to_string(), detail);
        if let Some(dir) = file_url_path(url) {
            if !dir.is_absolute() {
                return Err(bad("a file:// URL needs an absolute path (file:///dir)"));
            }
            std::fs::create_dir_all(&dir).map_err(|e| AuditError::io("create", &dir, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| store_error(url.to_string(), e))?;
            return Ok(StoreDir {
                bucket: Arc::new(Bucket {
                    url: format!("file://{}", dir.display()),
                    store: Arc::new(store),
                    s3: None,
                }),
                prefix: ObjPath::default(),
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(bad(
                "unsupported store URL (expected s3://BUCKET/PREFIX or file:///DIR)",
            ));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the URL names no bucket (expected s3://BUCKET/PREFIX)"));
        }
        let prefix = ObjPath::parse(prefix.trim_end_matches('/'))
            .map_err(|e| bad(&format!("bad prefix: {e}")))?;
        let mut builder = s3_builder(std::env::vars_os()).with_bucket_name(bucket);
        // The shared files of AWS_PROFILE fill what the environment left out.
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_string());
        let values = profile_values(&profile);
        let from_profile = |k: &str| values.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let (Some(id), Some(secret)) = (
                from_profile("aws_access_key_id"),
                from_profile("aws_secret_access_key"),
            )
        {
            builder = builder
                .with_access_key_id(id)
                .with_secret_access_key(secret);
            if let Some(token) = from_profile("aws_session_token") {
                builder = builder.with_token(token);
            }
        }
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .or_else(|| from_profile("region"))
            .unwrap_or_else(|| "us-east-1".to_string());
        builder = builder.with_region(&region);
        let endpoint = options
            .endpoint
            .clone()
            .or_else(|| env("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .or_else(|| env("AWS_ENDPOINT"))
            .or_else(|| from_profile("endpoint_url"))
            .map(|text| check_endpoint(&text))
            .transpose()
            .map_err(|e| bad(&e))?;
        let base = match &endpoint {
            Some(ep) => {
                builder = builder
                    .with_endpoint(&ep.url)
                    .with_allow_http(ep.plain_http);
                format!("{}/{bucket}", ep.url)
            }
            None => format!("https://s3.{region}.amazonaws.com/{bucket}"),
        };
        // Few retries of our own: the shipper backs off and retries itself,
        // and a reader should say soon that the store is not there.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
            ..Default::default()
        };
        let client_options = object_store::ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(120))
            .with_allow_http(endpoint.as_ref().is_some_and(|e| e.plain_http));
        builder = builder
            .with_retry(retry)
            .with_client_options(client_options.clone())
            .with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        let s3 = Arc::new(
            builder
                .build()
                .map_err(|e| store_error(format!("s3://{bucket}"), e))?,
        );
        use object_store::client::HttpConnector;
        let http = object_store::client::ReqwestConnector::default()
            .connect(&client_options)
            .map_err(|e| store_error(format!("s3://{bucket}"), e))?;
        Ok(StoreDir {
            bucket: Arc::new(Bucket {
                url: format!("s3://{bucket}"),
                store: s3.clone(),
                s3: Some(S3Access {
                    store: s3,
                    base,
                    region,
                    http,
                }),
            }),
            prefix,
        })
    }

    /// `s3://BUCKET/KEY` for a key of this bucket.
    pub fn url_of(&self, key: &ObjPath) -> String {
        format!("{}/{}", self.bucket.url, key)
    }

    /// This location's own URL.
    pub fn url(&self) -> String {
        if self.prefix.as_ref().is_empty() {
            self.bucket.url.clone()
        } else {
            self.url_of(&self.prefix)
        }
    }

    /// The key of a path relative to the prefix (`date=…/name.parquet`).
    pub fn key(&self, relative: &str) -> ObjPath {
        let mut key = self.prefix.clone();
        for part in relative.split('/').filter(|p| !p.is_empty()) {
            key = key.clone().join(part);
        }
        key
    }

    /// Every data file under the prefix, in write order; date partitions
    /// that cannot hold rows of `range` are not listed.
    pub fn data_files(&self, range: layout::TimeRange) -> Result<Vec<DataFile>, AuditError> {
        let store = self.bucket.store.clone();
        let top = block_on(store.list_with_delimiter(Some(&self.prefix)))
            .map_err(|e| store_error(self.url(), e))?;
        let mut files = Vec::new();
        let keep = |meta: &object_store::ObjectMeta| {
            meta.location
                .filename()
                .is_some_and(|n| n.ends_with(".parquet") && !n.starts_with(['.', '_']))
        };
        for meta in top.objects.into_iter().filter(keep) {
            files.push(self.file(meta));
        }
        for dir in top.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            if name.starts_with(['.', '_']) {
                continue;
            }
            if !range.may_hold(name) {
                continue;
            }
            let listed: Vec<object_store::ObjectMeta> =
                block_on(store.list(Some(&dir)).try_collect())
                    .map_err(|e| store_error(self.url_of(&dir), e))?;
            for meta in listed.into_iter().filter(keep) {
                let hidden = meta
                    .location
                    .prefix_match(&dir)
                    .is_some_and(|mut parts| parts.any(|p| p.as_ref().starts_with(['.', '_'])));
                if !hidden {
                    files.push(self.file(meta));
                }
            }
        }
        sort_files(&mut files);
        Ok(files)
    }

    fn file(&self, meta: object_store::ObjectMeta) -> DataFile {
        DataFile::Remote {
            dir: self.clone(),
            key: meta.location,
            size: meta.size,
        }
    }

    /// The data files an input names: a store prefix (all its files) or
    /// one object ending in `.parquet`.
    pub fn resolve(&self, range: layout::TimeRange) -> Result<Vec<DataFile>, AuditError> {
        if self
            .prefix
            .filename()
            .is_some_and(|n| n.ends_with(".parquet"))
        {
            let meta = block_on(self.bucket.store.head(&self.prefix))
                .map_err(|e| store_error(self.url(), e))?;
            return Ok(vec![self.file(meta)]);
        }
        let files = self.data_files(range)?;
        if files.is_empty() {
            return Err(store_error(
                self.url(),
                "no audit data files (*.parquet) under this prefix",
            ));
        }
        Ok(files)
    }
}

/// Reads one Parquet object by byte ranges: the footer with one request
/// (its size is known from the listing), then only the column chunks a
/// scan asks for, coalesced by the store client.
pub struct StoreReader {
    store: Arc<dyn ObjectStore>,
    key: ObjPath,
    size: u64,
}

impl StoreReader {
    pub fn new(store: Arc<dyn ObjectStore>, key: ObjPath, size: u64) -> StoreReader {
        StoreReader { store, key, size }
    }
}

fn parquet_err(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

impl parquet::arrow::async_reader::AsyncFileReader for StoreReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<bytes::Bytes>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_range(&self.key, range)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<bytes::Bytes>>> {
        use futures::FutureExt;
        async move {
            self.store
                .get_ranges(&self.key, &ranges)
                .await
                .map_err(parquet_err)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        parquet::errors::Result<Arc<parquet::file::metadata::ParquetMetaData>>,
    > {
        use futures::FutureExt;
        async move {
            let size = self.size;
            let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("s3://b/p"));
        assert!(is_url("file:///tmp/x"));
        assert!(!is_url("/tmp/x"));
        assert!(!is_url("audit/date=2026-01-01/*.parquet"));
        assert_eq!(
            file_url_path("file:///tmp/x"),
            Some(PathBuf::from("/tmp/x"))
        );
    }

    #[test]
    fn the_client_gets_no_endpoint_from_the_environment() {
        use object_store::aws::AmazonS3ConfigKey as Key;
        let var = |k: &str, v: &str| (k.into(), v.into());
        let builder = s3_builder([
            var("AWS_ENDPOINT_URL_S3", "http://evil.example"),
            var("AWS_ENDPOINT_URL", "http://evil.example"),
            var("AWS_ENDPOINT", "http://evil.example"),
            var("AWS_REGION", "eu-west-1"),
            var("HOME", "/root"),
        ]);
        assert_eq!(builder.get_config_value(&Key::S3Endpoint), None);
        assert_eq!(builder.get_config_value(&Key::Endpoint), None);
        assert_eq!(
            builder.get_config_value(&Key::Region).as_deref(),
            Some("eu-west-1")
        );
    }

    #[test]
    fn plain_http_is_only_for_loopback() {
        let opts = |e: &str| StoreOptions {
            endpoint: Some(e.to_string()),
        };
        assert!(StoreDir::parse("s3://bucket/p", &opts("http://127.0.0.1:9000")).is_ok());
        assert!(StoreDir::parse("s3://bucket/p", &opts("http://[::1]:9000")).is_ok());
        assert!(StoreDir::parse("s3://bucket/p", &opts("http://localhost:9000")).is_ok());
        let err = StoreDir::parse("s3://bucket/p", &opts("http://10.0.0.5:9000"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("loopback"), "{err}");
        assert!(StoreDir::parse("s3://bucket/p", &opts("https://s3.example.com")).is_ok());
        let err = StoreDir::parse("gs://bucket/p", &StoreOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unsupported store URL"), "{err}");
    }

    fn with_endpoint(endpoint: &str) -> Result<StoreDir, AuditError> {
        StoreDir::parse(
            "s3://bucket/p",
            &StoreOptions {
                endpoint: Some(endpoint.to_string()),
            },
        )
    }

    /// Endpoints that only look like loopback, or that smuggle another
    /// host, credentials, a query or a fragment past a naive reading.
    #[test]
    fn endpoints_that_only_look_like_loopback_are_refused() {
        for ep in [
            "http://evil.example?@127.0.0.1",
            "http://evil.example?@127.0.0.1:9000",
            "http://evil.example#@127.0.0.1",
            "http://evil.example/?@127.0.0.1",
            "http://127.0.0.1.evil.example",
            "http://localhost.evil.example",
            "http://localhost.",
            "http://user@evil.example",
            "http://127.0.0.1@evil.example",
            "http://[::1]@evil.example",
            "http://user:secret@127.0.0.1:9000",
            "http://:secret@127.0.0.1:9000",
            "http://evil.example\\@127.0.0.1",
            "http://127.0.0.1\\@evil.example",
            "http://127.0.0.1%2eevil.example",
            "http://127%2e0%2e0%2e1.evil.example",
            "http://%6cocalhost.evil.example",
            "HTTP://evil.example",
            "http://evil.example\t@127.0.0.1",
            "http://evil.example\n@127.0.0.1",
            "http://evil.example\r\n@127.0.0.1",
            " http://127.0.0.1:9000",
            "http://127.0.0.1:9000 ",
            "http://127.0.0.1:9000\u{0}",
            "http://0.0.0.0:9000",
            "http://169.254.169.254",
            "http://10.0.0.5:9000",
            "http:127.0.0.1:9000",
            "http:/127.0.0.1:9000",
            "http:\\\\127.0.0.1:9000",
            "ftp://127.0.0.1",
            "https://user:secret@s3.example.com",
            "https://s3.example.com?x=1",
            "https://s3.example.com/#frag",
            "",
        ] {
            let err = match with_endpoint(ep) {
                Ok(dir) => panic!(
                    "{ep:?} was accepted (signed requests would go to {})",
                    dir.bucket.s3.as_ref().unwrap().base
                ),
                Err(e) => e.to_string(),
            };
            assert!(err.contains("endpoint"), "{ep:?}: {err}");
        }
    }

    /// What is checked is what the S3 client is given: the parsed URL,
    /// serialized once.
    #[test]
    fn accepted_endpoints_are_handed_on_as_checked() {
        for (ep, base) in [
            ("http://127.0.0.1:9000", "http://127.0.0.1:9000/bucket"),
            ("http://127.0.0.1:9000/", "http://127.0.0.1:9000/bucket"),
            ("http://127.8.9.10:9000", "http://127.8.9.10:9000/bucket"),
            ("http://localhost:9000", "http://localhost:9000/bucket"),
            ("HTTP://LocalHost:9000", "http://localhost:9000/bucket"),
            ("http://[::1]:9000", "http://[::1]:9000/bucket"),
            // Other spellings of 127.0.0.1 are that address, and are
            // handed on as it.
            ("http://2130706433:9000", "http://127.0.0.1:9000/bucket"),
            ("http://0x7f.1:9000", "http://127.0.0.1:9000/bucket"),
            ("https://s3.example.com", "https://s3.example.com/bucket"),
            (
                "https://s3.example.com:8443/",
                "https://s3.example.com:8443/bucket",
            ),
            (
                "https://gw.example.com/s3/",
                "https://gw.example.com/s3/bucket",
            ),
        ] {
            let dir = with_endpoint(ep).unwrap_or_else(|e| panic!("{ep:?}: {e}"));
            assert_eq!(dir.bucket.s3.as_ref().unwrap().base, base, "{ep:?}");
        }
    }

    #[test]
    fn profiles_are_read_from_the_shared_files() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        let config = dir.path().join("config");
        std::fs::write(
            &creds,
            "[default]\naws_access_key_id = D\n[ci]\naws_access_key_id = AKID\naws_secret_access_key=SECRET\n",
        )
        .unwrap();
        std::fs::write(
            &config,
            "[default]\nregion = us-east-1\n[profile ci]\nregion = eu-west-1\nendpoint_url = http://127.0.0.1:9000\n",
        )
        .unwrap();
        let v = profile_values_in(Some(creds), Some(config), "ci");
        let get = |k: &str| v.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("aws_access_key_id"), Some("AKID"));
        assert_eq!(get("aws_secret_access_key"), Some("SECRET"));
        assert_eq!(get("region"), Some("eu-west-1"));
        assert_eq!(get("endpoint_url"), Some("http://127.0.0.1:9000"));
    }

    #[test]
    fn keys_sit_under_the_prefix() {
        let d = StoreDir::parse(
            "s3://bucket/team/audit/",
            &StoreOptions {
                endpoint: Some("http://127.0.0.1:1".into()),
            },
        )
        .unwrap();
        let key = d.key("date=2026-11-26/x.parquet");
        assert_eq!(key.as_ref(), "team/audit/date=2026-11-26/x.parquet");
        assert_eq!(
            d.url_of(&key),
            "s3://bucket/team/audit/date=2026-11-26/x.parquet"
        );
        assert_eq!(d.url(), "s3://bucket/team/audit");
    }
}
