//! Shipping sealed audit files to object storage.
//!
//! The local directory stays the durability point: the recorder journals
//! and seals files exactly as without shipping, and nothing here runs on
//! the proxy's request path. A shipper uploads each sealed data file (in
//! name order, which is write order) under the same Hive layout below the
//! destination prefix, with an S3 Object Lock retention when asked, and
//! only after the store confirmed the upload writes a receipt:
//!
//! ```text
//! D/_flightrec/shipped/<file name>.json   one receipt per shipped file
//! D/_flightrec/ship.json                  the last attempt (destination, error)
//! ```
//!
//! A file without a receipt for the destination is *waiting*. Uploads are
//! conditional (`If-None-Match: *`): a name that already exists is never
//! overwritten; if its content is ours (a run that stopped between upload
//! and receipt) the receipt is written, otherwise the file keeps waiting
//! and the conflict is reported. File names are unique anyway (UUIDv7 and
//! the writer id), so proxies of different directories can share a prefix.

use crate::audit::error::AuditError;
use crate::audit::layout;
use crate::audit::remote::{self, StoreDir};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const SHIPPED_DIR: &str = "shipped";
pub const SHIP_STATE: &str = "ship.json";

/// The S3 Object Lock retention mode (`--lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Users with the s3:BypassGovernanceRetention permission can still
    /// delete or shorten it
    Governance,
    /// Nobody, the root account included, can delete the version or
    /// shorten its retention until it expires
    Compliance,
}

impl LockMode {
    fn header(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

/// Where and how to ship.
#[derive(Debug, Clone)]
pub struct ShipTarget {
    pub dest: StoreDir,
    /// Object Lock mode and retention period for every shipped file.
    pub lock: Option<(LockMode, Duration)>,
}

/// What the store confirmed for one shipped file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Receipt {
    /// The file, relative to the audit directory (`date=…/name.parquet`).
    pub file: String,
    /// Where it is: `s3://BUCKET/KEY`.
    pub url: String,
    pub size: u64,
    /// SHA-256 of the content, hex.
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e_tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until: Option<String>,
    pub shipped_at: String,
}

fn shipped_dir(dir: &Path) -> PathBuf {
    layout::state_dir(dir).join(SHIPPED_DIR)
}

/// Every receipt in `dir`, by file name.
pub fn receipts(dir: &Path) -> Result<Vec<Receipt>, AuditError> {
    let sdir = shipped_dir(dir);
    let entries = match std::fs::read_dir(&sdir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(AuditError::io("list", &sdir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| AuditError::io("list", &sdir, e))?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).map_err(|e| AuditError::io("read", &path, e))?;
        let receipt: Receipt = serde_json::from_str(&text).map_err(|e| AuditError::Corrupt {
            path: path.clone(),
            detail: format!("unreadable ship receipt: {e}"),
        })?;
        out.push(receipt);
    }
    out.sort_by(|a, b| file_name(&a.file).cmp(file_name(&b.file)));
    Ok(out)
}

fn file_name(relative: &str) -> &str {
    relative.rsplit('/').next().unwrap_or(relative)
}

/// A data file's path relative to the audit directory, with `/`.
fn relative(dir: &Path, file: &Path) -> String {
    file.strip_prefix(dir)
        .unwrap_or(file)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The files (relative paths) with a receipt for `dest` (any destination
/// when `None`).
fn shipped_set(dir: &Path, dest: Option<&StoreDir>) -> Result<HashSet<String>, AuditError> {
    Ok(receipts(dir)?
        .into_iter()
        .filter(|r| dest.is_none_or(|d| r.url == d.url_of(&d.key(&r.file))))
        .map(|r| r.file)
        .collect())
}

/// The sealed data files of `dir` without a receipt for `dest` (any
/// destination when `None`), in write order.
pub fn waiting(dir: &Path, dest: Option<&StoreDir>) -> Result<Vec<PathBuf>, AuditError> {
    let shipped = shipped_set(dir, dest)?;
    waiting_given(dir, &shipped)
}

fn waiting_given(dir: &Path, shipped: &HashSet<String>) -> Result<Vec<PathBuf>, AuditError> {
    Ok(layout::data_files(dir)?
        .into_iter()
        .filter(|f| !shipped.contains(&relative(dir, f)))
        .collect())
}

/// The outcome of one shipping pass.
#[derive(Debug, Default)]
pub struct ShipRun {
    pub shipped: Vec<Receipt>,
    /// Files still waiting after the pass.
    pub waiting: usize,
    /// Why the pass stopped early (the first failure; later files wait
    /// behind it to keep the order).
    pub error: Option<AuditError>,
}

/// Ships every waiting file of `dir`, in order, stopping at the first
/// failure or at `deadline`.
pub fn ship_waiting(dir: &Path, target: &ShipTarget, deadline: Option<Instant>) -> ShipRun {
    let mut known = None;
    ship_waiting_with(dir, target, deadline, &mut known)
}

/// As [`ship_waiting`], with the set of shipped files kept between passes
/// (read from the receipts on the first pass only: a long-running shipper
/// does not re-read every receipt every second).
fn ship_waiting_with(
    dir: &Path,
    target: &ShipTarget,
    deadline: Option<Instant>,
    known: &mut Option<HashSet<String>>,
) -> ShipRun {
    let mut run = ShipRun::default();
    if known.is_none() {
        match shipped_set(dir, Some(&target.dest)) {
            Ok(s) => *known = Some(s),
            Err(e) => {
                run.error = Some(e);
                return run;
            }
        }
    }
    let shipped = known.as_mut().expect("loaded above");
    let files = match waiting_given(dir, shipped) {
        Ok(f) => f,
        Err(e) => {
            run.error = Some(e);
            return run;
        }
    };
    run.waiting = files.len();
    for file in files {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        match ship_file(dir, &file, target) {
            Ok(receipt) => {
                shipped.insert(receipt.file.clone());
                run.shipped.push(receipt);
                run.waiting -= 1;
            }
            Err(e) => {
                run.error = Some(e);
                break;
            }
        }
    }
    if run.shipped.is_empty() && run.error.is_none() {
        // Nothing happened: the last attempt's record stays as it was.
        return run;
    }
    let state = serde_json::json!({
        "destination": target.dest.url(),
        "last_attempt": crate::time::format_us(crate::time::now_us()),
        "shipped": run.shipped.len(),
        "waiting": run.waiting,
        "last_error": run.error.as_ref().map(|e| e.to_string()),
    });
    let path = layout::state_dir(dir).join(SHIP_STATE);
    let _ = write_atomic(&path, state.to_string().as_bytes());
    run
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AuditError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes).map_err(|e| AuditError::io("write", &tmp, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| AuditError::io("sync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| AuditError::io("rename", &tmp, e))
}

/// Uploads one sealed file and writes its receipt.
pub fn ship_file(dir: &Path, file: &Path, target: &ShipTarget) -> Result<Receipt, AuditError> {
    let rel = relative(dir, file);
    let bytes = std::fs::read(file).map_err(|e| AuditError::io("read", file, e))?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let sha256 = hex::encode(digest);
    let key = target.dest.key(&rel);
    let url = target.dest.url_of(&key);
    let retain_until = target.lock.map(|(_, d)| {
        let until = chrono::Utc::now() + chrono::Duration::from_std(d).unwrap_or_default();
        until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let size = bytes.len() as u64;
    let bytes = bytes::Bytes::from(bytes);
    let put = match (&target.lock, &target.dest.bucket.s3) {
        (Some((mode, _)), Some(s3)) => remote::block_on(put_locked(
            s3,
            &key,
            bytes,
            &digest,
            *mode,
            retain_until.as_deref().unwrap_or_default(),
        ))
        .map_err(|detail| AuditError::Store {
            url: url.clone(),
            detail,
        })?,
        (Some(_), None) => {
            return Err(AuditError::Store {
                url,
                detail: "retention locks (--lock) need an s3:// destination".to_string(),
            });
        }
        (None, _) => {
            let opts = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            let store = target.dest.bucket.store.clone();
            match remote::block_on(store.put_opts(&key, PutPayload::from(bytes), opts)) {
                Ok(r) => Put::Created {
                    e_tag: r.e_tag,
                    version: r.version,
                },
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => Put::Exists,
                Err(e) => {
                    return Err(AuditError::Store {
                        url,
                        detail: e.to_string(),
                    });
                }
            }
        }
    };
    let (e_tag, version) = match put {
        Put::Created { e_tag, version } => (e_tag, version),
        Put::Exists => {
            // Ours (uploaded by a run that stopped before its receipt), or
            // somebody else's: never overwritten either way.
            let store = target.dest.bucket.store.clone();
            let existing = remote::block_on(async {
                let got = store.get(&key).await?;
                let meta = got.meta.clone();
                Ok::<_, object_store::Error>((meta, got.bytes().await?))
            })
            .map_err(|e| AuditError::Store {
                url: url.clone(),
                detail: e.to_string(),
            })?;
            if hex::encode(Sha256::digest(&existing.1)) != sha256 {
                return Err(AuditError::Store {
                    url,
                    detail: format!(
                        "a different object already exists under this key; {} is not overwritten and keeps waiting",
                        file.display()
                    ),
                });
            }
            (existing.0.e_tag, existing.0.version)
        }
    };
    let receipt = Receipt {
        file: rel,
        url,
        size,
        sha256,
        e_tag,
        version,
        lock: target.lock.map(|(m, _)| m.header().to_ascii_lowercase()),
        retain_until,
        shipped_at: crate::time::format_us(crate::time::now_us()),
    };
    let sdir = shipped_dir(dir);
    std::fs::create_dir_all(&sdir).map_err(|e| AuditError::io("create", &sdir, e))?;
    let name = file.file_name().unwrap_or_default().to_string_lossy();
    write_atomic(
        &sdir.join(format!("{name}.json")),
        serde_json::to_string(&receipt)
            .expect("receipts serialize")
            .as_bytes(),
    )?;
    crate::audit::journal::sync_dir(&sdir).map_err(|e| AuditError::io("sync", &sdir, e))?;
    Ok(receipt)
}

enum Put {
    Created {
        e_tag: Option<String>,
        version: Option<String>,
    },
    Exists,
}

/// Percent-encodes a key for an S3 request path (each segment; `/` kept).
fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A conditional PutObject carrying the Object Lock headers, signed with
/// SigV4 (the object store client cannot add per-request headers). The
/// lock is set in the same request that creates the object: there is no
/// moment at which the shipped file exists unlocked.
async fn put_locked(
    s3: &remote::S3Access,
    key: &object_store::path::Path,
    body: bytes::Bytes,
    digest: &[u8; 32],
    mode: LockMode,
    retain_until: &str,
) -> Result<Put, String> {
    use base64::Engine;
    let credential = s3
        .store
        .credentials()
        .get_credential()
        .await
        .map_err(|e| format!("no credentials: {e}"))?;
    let uri = format!("{}/{}", s3.base, encode_key(key.as_ref()));
    let mut request = http::Request::builder()
        .method(http::Method::PUT)
        .uri(&uri)
        .header("content-length", body.len())
        .header("if-none-match", "*")
        .header("x-amz-object-lock-mode", mode.header())
        .header("x-amz-object-lock-retain-until-date", retain_until)
        .header("x-amz-sdk-checksum-algorithm", "SHA256")
        .header(
            "x-amz-checksum-sha256",
            base64::engine::general_purpose::STANDARD.encode(digest),
        )
        .body(object_store::client::HttpRequestBody::from(body))
        .map_err(|e| format!("bad request: {e}"))?;
    object_store::aws::AwsAuthorizer::new(&credential, "s3", &s3.region)
        .try_authorize(&mut request, Some(digest))
        .map_err(|e| format!("cannot sign the request: {e}"))?;
    let response = s3
        .http
        .execute(request)
        .await
        .map_err(|e| format!("PUT failed: {e}"))?;
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if status.is_success() {
        return Ok(Put::Created {
            e_tag: header("etag"),
            version: header("x-amz-version-id"),
        });
    }
    if status == http::StatusCode::PRECONDITION_FAILED || status == http::StatusCode::CONFLICT {
        return Ok(Put::Exists);
    }
    let body = response.into_body().bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let field = |tag: &str| {
        text.split_once(&format!("<{tag}>"))
            .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
            .map(|(v, _)| v.to_string())
    };
    Err(match (field("Code"), field("Message")) {
        (Some(code), Some(message)) => format!("the store said {status} {code}: {message}"),
        _ => format!("the store said {status}: {}", text.trim()),
    })
}

/// A background shipper: ships what waits, then whatever the recorder
/// seals, polling the directory; backs off (1 s doubling to 60 s) while
/// the store fails, and says so once per outage on stderr.
pub struct Shipper {
    shared: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
    target: ShipTarget,
}

impl Shipper {
    pub fn start(dir: &Path, target: ShipTarget, poll: Duration) -> Shipper {
        let shared = Arc::new((Mutex::new(false), Condvar::new()));
        let (s, d, t) = (shared.clone(), dir.to_path_buf(), target.clone());
        let thread = std::thread::Builder::new()
            .name("flightrec-ship".into())
            .spawn(move || ship_loop(&d, &t, poll, &s))
            .expect("the shipper thread starts");
        Shipper {
            shared,
            thread: Some(thread),
            dir: dir.to_path_buf(),
            target,
        }
    }

    /// Stops the loop, then ships what waits (the proxy's last file is
    /// sealed by now) for at most `timeout` in all, even when the store
    /// hangs in the middle of an upload (the work is then left to the next
    /// run). Returns how many files still wait.
    pub fn finish(mut self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        {
            let (lock, cvar) = &*self.shared;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
            cvar.notify_all();
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (thread, dir, target) = (self.thread.take(), self.dir.clone(), self.target.clone());
        std::thread::spawn(move || {
            if let Some(t) = thread {
                let _ = t.join();
            }
            let _ = tx.send(ship_waiting(&dir, &target, Some(deadline)));
        });
        let (waiting, why) =
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(run) => (
                    run.waiting,
                    run.error
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_else(|| " (--ship-timeout reached)".to_string()),
                ),
                Err(_) => (
                    waiting(&self.dir, Some(&self.target.dest)).map_or(0, |w| w.len()),
                    " (--ship-timeout reached while the store did not answer)".to_string(),
                ),
            };
        if waiting > 0 {
            eprintln!(
                "flightrec: {waiting} audit file(s) not shipped to {}{why}; the next run on {} ships them, or `flightrec audit ship {} {}`",
                self.target.dest.url(),
                self.dir.display(),
                self.dir.display(),
                self.target.dest.url()
            );
        }
        waiting
    }
}

fn ship_loop(dir: &Path, target: &ShipTarget, poll: Duration, shared: &(Mutex<bool>, Condvar)) {
    let mut backoff = Duration::ZERO;
    let mut failing = false;
    let mut known = None;
    loop {
        let run = ship_waiting_with(dir, target, None, &mut known);
        match &run.error {
            Some(e) => {
                backoff = (backoff * 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
                if !failing {
                    eprintln!(
                        "flightrec: shipping audit files failed: {e}; {} file(s) wait locally, retrying with backoff",
                        run.waiting
                    );
                    failing = true;
                }
            }
            None => {
                if failing {
                    eprintln!(
                        "flightrec: shipping resumed: {} file(s) shipped to {}",
                        run.shipped.len(),
                        target.dest.url()
                    );
                    failing = false;
                }
                backoff = Duration::ZERO;
            }
        }
        let wait = if failing { backoff } else { poll };
        let (lock, cvar) = shared;
        let stop = lock.lock().unwrap_or_else(|e| e.into_inner());
        let (stop, _) = cvar
            .wait_timeout_while(stop, wait, |stop| !*stop)
            .unwrap_or_else(|e| e.into_inner());
        if *stop {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_for_signing() {
        assert_eq!(
            encode_key("audit/date=2026-11-26/0193.ab12cd34.parquet"),
            "audit/date%3D2026-11-26/0193.ab12cd34.parquet"
        );
        assert_eq!(encode_key("a b/c+d"), "a%20b/c%2Bd");
    }

    #[test]
    fn a_file_store_gets_each_file_once_and_never_overwritten() {
        let audit = tempfile::tempdir().unwrap();
        let store = tempfile::tempdir().unwrap();
        let part = audit.path().join("date=2026-11-26");
        std::fs::create_dir_all(&part).unwrap();
        for name in ["0001.aaaaaaaa.parquet", "0002.aaaaaaaa.parquet"] {
            std::fs::write(part.join(name), name).unwrap();
        }
        let dest = StoreDir::parse(
            &format!("file://{}", store.path().display()),
            &remote::StoreOptions::default(),
        )
        .unwrap();
        let target = ShipTarget { dest, lock: None };
        assert_eq!(waiting(audit.path(), Some(&target.dest)).unwrap().len(), 2);
        let run = ship_waiting(audit.path(), &target, None);
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(run.shipped.len(), 2);
        assert_eq!(
            std::fs::read(store.path().join("date=2026-11-26/0001.aaaaaaaa.parquet")).unwrap(),
            b"0001.aaaaaaaa.parquet"
        );
        assert!(
            waiting(audit.path(), Some(&target.dest))
                .unwrap()
                .is_empty()
        );
        // A receipt lost after the upload: the same content is recognized.
        let receipt = shipped_dir(audit.path()).join("0002.aaaaaaaa.parquet.json");
        std::fs::remove_file(&receipt).unwrap();
        let run = ship_waiting(audit.path(), &target, None);
        assert!(run.error.is_none(), "{:?}", run.error);
        assert_eq!(run.shipped.len(), 1);
        // Different content under an existing name is refused, not written.
        std::fs::write(part.join("0003.aaaaaaaa.parquet"), "mine").unwrap();
        std::fs::create_dir_all(store.path().join("date=2026-11-26")).unwrap();
        std::fs::write(
            store.path().join("date=2026-11-26/0003.aaaaaaaa.parquet"),
            "theirs",
        )
        .unwrap();
        let run = ship_waiting(audit.path(), &target, None);
        let err = run.error.expect("a conflict").to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(run.waiting, 1);
        assert_eq!(
            std::fs::read(store.path().join("date=2026-11-26/0003.aaaaaaaa.parquet")).unwrap(),
            b"theirs"
        );
    }
}
