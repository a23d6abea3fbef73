//! The process-wide half of the proxy: what every session shares.
//!
//! A [`Gateway`] owns the enforced policy together with its counter state
//! (one [`Generation`], swapped as a unit on reload), the shadow policies,
//! the audit recorder and the redaction rules. It knows no transport: stdio,
//! HTTP and the bridge each open [`Session`]s on it and feed them frames.
//!
//! Reload is atomic with respect to decisions: a decision locks the current
//! generation's counters and checks that the generation is still current
//! before deciding, and a reload retires the old generation while holding
//! the same lock. Every reservation is settled against the generation it
//! was taken from; after a reload that is the retired one, whose counts
//! have moved on, so a rollback of a call decided before the reload is
//! dropped (its call keeps counting: conservative) and can never touch a
//! counter of the new policy.

use crate::audit::args::RedactPattern;
use crate::audit::schema::AuditRow;
use crate::audit::{AuditError, Recorder};
use crate::policy::{CounterStore, Outcome, Policy, PolicyError, PolicyState, Reservation};
use crate::proxy::ProxyError;
use crate::proxy::session::{Session, Transport};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// Locks a mutex, ignoring poisoning: a panic on one session's thread must
/// not stop the proxy from serving or recording the others.
pub(crate) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A policy and the counter state that belongs to it. Decisions and
/// settlements always use the two together.
pub struct Generation {
    policy: Arc<Policy>,
    state: Mutex<Box<dyn CounterStore + Send>>,
    /// Set (under the state lock) when a reload replaced this generation.
    retired: AtomicBool,
    /// The argument paths the policy reads, and whether as numbers
    /// ([`Policy::arg_reads`]).
    arg_reads: Vec<(Vec<String>, bool)>,
}

impl Generation {
    fn new(policy: Policy, state: Box<dyn CounterStore + Send>) -> Arc<Generation> {
        let arg_reads = policy
            .arg_reads()
            .into_iter()
            .map(|r| (r.segments.to_vec(), r.numeric))
            .collect();
        Arc::new(Generation {
            arg_reads,
            policy: Arc::new(policy),
            state: Mutex::new(state),
            retired: AtomicBool::new(false),
        })
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The argument paths the policy reads, and whether as numbers.
    pub fn arg_reads(&self) -> &[(Vec<String>, bool)] {
        &self.arg_reads
    }

    /// Locks the counters; decide and settle through the guard.
    pub(crate) fn state(&self) -> MutexGuard<'_, Box<dyn CounterStore + Send>> {
        lock(&self.state)
    }

    /// Settles a reservation taken from this generation.
    pub(crate) fn settle(&self, reservation: Reservation, outcome: Outcome) {
        if !reservation.is_empty() {
            self.state().settle(reservation, outcome);
        }
    }
}

/// How a gateway is set up (the transport-independent part of the proxy's
/// command line).
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    pub policy_path: PathBuf,
    pub shadow_paths: Vec<PathBuf>,
    pub redact: Vec<RedactPattern>,
    /// Agent id recorded for every call (default: the client's name).
    pub agent: Option<String>,
    /// Server name recorded for every call (default: learned from the
    /// server's handshake, else the transport's guess).
    pub server_name: Option<String>,
    /// A request the server has not answered after this long is answered
    /// by the proxy with an error and recorded as `timeout`.
    pub upstream_timeout: Option<std::time::Duration>,
    /// Rebuild the counters from the audit log at start (when there is one).
    pub warm_start: bool,
    /// Keep the counters in Redis (shared by replicas) instead of memory.
    pub state: Option<crate::store::redis::RedisConfig>,
    /// The approval queue's socket (`None`: the default path).
    pub approval_socket: Option<PathBuf>,
    /// How long a held call waits for a human (default 120 s).
    pub approval_timeout: Option<std::time::Duration>,
    /// Seal the open audit file after this long (default 5 minutes).
    pub rotate_age: Option<std::time::Duration>,
    /// Through which channels a human's approval may come.
    pub approve_via: ApproveVia,
    /// Tool definitions pinned (`--pins`, or trust on first use); `None`:
    /// definitions are not checked.
    pub pins: Option<std::sync::Arc<crate::proxy::pins::PinGuard>>,
}

/// `--approve-via`: who may answer a call held for approval. The MCP
/// client's own dialog is answered by whoever runs the client, which for a
/// remote agent may be the agent itself; the local queue is answered by a
/// person on the proxy's machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ApproveVia {
    /// Only the local approval queue (`flightrec approvals`)
    Queue,
    /// Only the MCP client's approval dialog (elicitation)
    Client,
    /// The client's dialog when it can show one, else the queue
    #[default]
    Both,
}

impl ApproveVia {
    pub fn client(self) -> bool {
        matches!(self, ApproveVia::Client | ApproveVia::Both)
    }

    pub fn queue(self) -> bool {
        matches!(self, ApproveVia::Queue | ApproveVia::Both)
    }
}

impl GatewayConfig {
    pub fn approval_timeout(&self) -> std::time::Duration {
        self.approval_timeout
            .unwrap_or(std::time::Duration::from_secs(120))
    }
}

/// What a policy file looked like (modification time and size): how the
/// watcher sees that it changed, editors that save by rename included.
pub type FileStamp = Option<(Option<std::time::SystemTime>, u64)>;

/// The stamp of `path` now.
pub fn file_stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.modified().ok(), m.len()))
}

/// The used-nonce map is swept of expired nonces no sooner than at this
/// size.
const MIN_NONCE_SWEEP: usize = 10_000;

/// What every session of one proxy process shares.
pub struct Gateway {
    config: GatewayConfig,
    /// The policy file's stamp when it was last read (before reading it, so
    /// a change made while loading is seen as a change).
    loaded: Mutex<FileStamp>,
    current: RwLock<Arc<Generation>>,
    shadows: Vec<Arc<Generation>>,
    recorder: Option<Arc<Mutex<Recorder>>>,
    approvals: Arc<crate::proxy::approval::Approvals>,
    state_key: crate::proxy::approval::StateKey,
    /// Nonces of `requestState`s already used (each is good for one retry),
    /// with their expiry (ms), and the size at which expired ones are swept
    /// next.
    used_states: Mutex<(HashMap<String, u64>, usize)>,
}

impl Gateway {
    /// Loads the policy and the shadow policies; `recorder` is the audit
    /// log, if any.
    pub fn new(config: GatewayConfig, recorder: Option<Recorder>) -> Result<Gateway, ProxyError> {
        let stamp = file_stamp(&config.policy_path);
        let policy = Policy::load(&config.policy_path)?;
        let warm_dir = recorder
            .as_ref()
            .filter(|_| config.warm_start)
            .map(|r| r.dir().to_path_buf());
        // Shadow policies get keys of their own in a shared store: their
        // counters must never add to the enforced policy's.
        let generation = |policy: Policy, shadow: Option<usize>| match (&config.state, &warm_dir) {
            (Some(redis), _) => {
                let mut redis = redis.clone();
                if let Some(i) = shadow {
                    redis.prefix = format!("{}shadow{i}:", redis.prefix);
                }
                Ok(redis_generation(policy, redis, shadow.is_none()))
            }
            (None, Some(dir)) => warm_generation(policy, dir),
            (None, None) => Ok(memory_generation(policy)),
        };
        let mut shadows = Vec::new();
        for (i, p) in config.shadow_paths.iter().enumerate() {
            shadows.push(generation(Policy::load(p)?, Some(i + 1))?);
        }
        let recorder = recorder.map(|r| Arc::new(Mutex::new(r)));
        if let Some(r) = &recorder {
            start_rotation_timer(Arc::downgrade(r));
        }
        Ok(Gateway {
            loaded: Mutex::new(stamp),
            current: RwLock::new(generation(policy, None)?),
            shadows,
            recorder,
            approvals: Arc::default(),
            state_key: crate::proxy::approval::StateKey::random(),
            used_states: Mutex::new((HashMap::new(), MIN_NONCE_SWEEP)),
            config,
        })
    }

    pub(crate) fn approvals(&self) -> &Arc<crate::proxy::approval::Approvals> {
        &self.approvals
    }

    pub(crate) fn state_key(&self) -> &crate::proxy::approval::StateKey {
        &self.state_key
    }

    /// Marks a `requestState` nonce used; `false` if it already was (a
    /// replayed state). Expired nonces are forgotten.
    pub(crate) fn use_state_nonce(&self, nonce: &str, expiry_ms: u64) -> bool {
        let now = (crate::time::now_us() / 1000) as u64;
        let mut guard = lock(&self.used_states);
        let (used, sweep_at) = &mut *guard;
        // Expired nonces are swept when the map has doubled since the last
        // sweep (amortized: constant work per use, however many are live).
        if used.len() >= *sweep_at {
            used.retain(|_, e| *e >= now);
            *sweep_at = (used.len() * 2).max(MIN_NONCE_SWEEP);
        }
        used.insert(nonce.to_string(), expiry_ms).is_none()
    }

    /// Opens the approval queue (when the policy has `require_approval`
    /// rules, or a socket is given): `--approval-socket`, else the per-user
    /// default. An explicit socket that cannot be opened is an error, and
    /// so is an unsafe place for any socket (a directory others can write
    /// or do own; something not ours at the socket's path); the default
    /// one in use by another proxy only leaves this proxy without a queue
    /// (held calls that cannot be asked in the client are refused), which
    /// it says.
    pub fn open_approval_queue(&self) -> Result<(), ProxyError> {
        let explicit = self.config.approval_socket.clone();
        if explicit.is_none() && !self.current().policy().has_approval_rules() {
            return Ok(()); // nothing to ask about
        }
        let path = explicit
            .clone()
            .unwrap_or_else(crate::proxy::approval::default_socket);
        match self.approvals.serve(&path) {
            Ok(()) => {
                eprintln!("flightrec: approval queue on {}", path.display());
                Ok(())
            }
            Err(e @ crate::proxy::approval::ServeError::Unsafe(_)) => {
                Err(ProxyError::Io(std::io::Error::other(e.to_string())))
            }
            Err(e) if explicit.is_some() => {
                Err(ProxyError::Io(std::io::Error::other(e.to_string())))
            }
            Err(e) => {
                eprintln!("flightrec: no local approval queue: {e}");
                Ok(())
            }
        }
    }

    /// Whether the policy file changed since it was last read (or tried).
    pub fn policy_file_changed(&self) -> bool {
        let now = file_stamp(&self.config.policy_path);
        now.is_some() && now != *lock(&self.loaded)
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Runs pipeline work (a decision, a settlement) that may wait on a
    /// remote counter store. On a tokio worker with `--state`, it runs
    /// under `block_in_place`, so a store round trip (or its timeout) never
    /// stalls the other connections the worker serves; otherwise inline.
    pub(crate) fn pipeline<R>(&self, f: impl FnOnce() -> R) -> R {
        let on_worker = self.config.state.is_some()
            && tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if on_worker {
            tokio::task::block_in_place(f)
        } else {
            f()
        }
    }

    pub fn policy_path(&self) -> &Path {
        &self.config.policy_path
    }

    /// The generation decisions use now.
    pub fn current(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn shadows(&self) -> &[Arc<Generation>] {
        &self.shadows
    }

    /// Runs `f` with the current generation's counters locked, retrying if
    /// a reload retired the generation in between.
    pub(crate) fn with_current<R>(
        &self,
        f: impl FnOnce(&Arc<Generation>, &mut (dyn CounterStore + Send)) -> R,
    ) -> R {
        loop {
            let generation = self.current();
            let mut state = generation.state();
            if generation.retired.load(Ordering::Acquire) {
                continue;
            }
            return f(&generation, &mut **state);
        }
    }

    /// Reloads the policy file. Counters whose definition is unchanged keep
    /// their counts; an invalid file leaves the current policy in force.
    pub fn reload(&self) -> Result<(), PolicyError> {
        *lock(&self.loaded) = file_stamp(&self.config.policy_path);
        let new = Policy::load(&self.config.policy_path)?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        let next = {
            let mut old_state = current.state();
            let state = old_state.successor(&current.policy, &new);
            current.retired.store(true, Ordering::Release);
            Generation::new(new, state)
        };
        *current = next;
        Ok(())
    }

    /// Reloads the policy file and says so on stderr; an invalid file is
    /// reported and the old policy stays (SIGHUP and file changes, in every
    /// transport).
    pub fn reload_and_report(&self) {
        match self.reload() {
            Ok(()) => eprintln!(
                "flightrec: policy {} reloaded",
                self.policy_path().display()
            ),
            Err(e) => {
                eprintln!("flightrec: policy reload failed, keeping the previous policy:\n{e}")
            }
        }
    }

    /// Reloads whenever the policy file changes (checked every 0.5 s; editors
    /// that save by rename are seen), on a thread of its own.
    pub fn watch_policy_file(self: &Arc<Self>) {
        let gateway = self.clone();
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(500));
                if gateway.policy_file_changed() {
                    gateway.reload_and_report();
                }
            }
        });
    }

    /// Opens a session on this gateway (with a new id unless the transport
    /// has one, such as an upstream's `Mcp-Session-Id`).
    pub fn session(
        self: &Arc<Self>,
        transport: Transport,
        id: Option<String>,
        server_guess: String,
    ) -> Session {
        Session::new(self.clone(), transport, id, server_guess)
    }

    pub(crate) fn recording(&self) -> bool {
        self.recorder.is_some()
    }

    /// Records a finished row. A failing audit log is reported on stderr,
    /// never silent.
    pub(crate) fn record(&self, row: AuditRow) {
        if let Some(r) = &self.recorder
            && let Err(e) = lock(r).record(row)
        {
            eprintln!("flightrec: AUDIT LOG ERROR: {e}");
        }
    }

    /// Journals a row before its call is forwarded.
    pub(crate) fn begin(&self, row: AuditRow) -> Result<(), AuditError> {
        match &self.recorder {
            Some(r) => lock(r).begin(row),
            None => Ok(()),
        }
    }

    /// Completes a row journaled with [`Gateway::begin`].
    pub(crate) fn complete(&self, row: AuditRow) {
        if let Some(r) = &self.recorder
            && let Err(e) = lock(r).complete(&row.event_id.clone(), move |x| *x = row)
        {
            eprintln!("flightrec: AUDIT LOG ERROR: {e}");
        }
    }

    /// Seals the current audit file and forces the journal to disk.
    pub fn close(&self) -> Result<(), AuditError> {
        if let Some(r) = &self.recorder {
            let mut r = lock(r);
            r.rotate()?;
            r.sync()?;
        }
        Ok(())
    }
}

/// Seals the audit file once it is old enough even when no call arrives
/// (quiet proxies still produce files, and `--ship` uploads them): checks
/// every second until the gateway is gone.
fn start_rotation_timer(recorder: std::sync::Weak<Mutex<Recorder>>) {
    let spawned = std::thread::Builder::new()
        .name("flightrec-rotate".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let Some(r) = recorder.upgrade() else { return };
                if let Err(e) = lock(&r).maybe_rotate() {
                    eprintln!("flightrec: AUDIT LOG ERROR: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("flightrec: cannot start the audit rotation timer: {e}");
    }
}

/// Opens the audit directory for a proxy (if it has one) and reports on
/// stderr what was recovered from a previous process. `rotate_age`: seal
/// the open file after this long (default 5 minutes).
pub fn open_recorder(
    dir: Option<&Path>,
    sync: crate::audit::journal::SyncMode,
    rotate_age: Option<std::time::Duration>,
) -> Result<Option<Recorder>, AuditError> {
    let Some(dir) = dir else {
        return Ok(None);
    };
    let defaults = crate::audit::RecorderConfig::default();
    let r = Recorder::open(
        dir,
        crate::audit::RecorderConfig {
            sync,
            rotate_age: rotate_age.unwrap_or(defaults.rotate_age),
            ..defaults
        },
    )?;
    for line in r.recovery().report(r.dir()) {
        eprintln!("flightrec: {line}");
    }
    Ok(Some(r))
}

/// A generation whose counters are what the audit log in `dir` says they
/// are now (warm start), reported on stderr.
fn warm_generation(policy: Policy, dir: &Path) -> Result<Arc<Generation>, ProxyError> {
    let started = std::time::Instant::now();
    let now = crate::time::now_us();
    let warm = crate::replay::warm::warm_state(&policy, dir, now)?;
    if warm.calls > 0 {
        eprintln!(
            "flightrec: warm start: {} call(s) since {} replayed into the counters of {} ({} ms)",
            warm.calls,
            crate::time::format_us(warm.since_us),
            policy.source,
            started.elapsed().as_millis()
        );
    }
    Ok(Generation::new(policy, Box::new(warm.state)))
}

/// A generation whose counters live in Redis; the enforced one checks the
/// store answers and says where the state is.
fn redis_generation(
    policy: Policy,
    config: crate::store::redis::RedisConfig,
    announce: bool,
) -> Arc<Generation> {
    let (target, fail_open) = (config.target.display(), config.fail_open);
    let store = crate::store::redis::RedisStore::new(config, &policy);
    if announce && store.ping().is_ok() {
        eprintln!(
            "flightrec: counters in {target} (fail {})",
            if fail_open { "open" } else { "closed" }
        );
    }
    Generation::new(policy, Box::new(store))
}

fn memory_generation(policy: Policy) -> Arc<Generation> {
    let state = PolicyState::new(&policy);
    Generation::new(policy, Box::new(state))
}
