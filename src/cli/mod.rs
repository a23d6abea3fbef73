//! The command line: argument parsing, dispatch, and turning library
//! errors into reports on stderr with one exit-code mapping:
//! 0 success, 1 a finding, 2 a usage or input error.

mod audit_cmd;
mod pins_cmd;
mod policy_cmd;
mod replay_cmd;
mod scenario_cmd;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for "the command ran and found something" (a violation, a
/// failed verification, a non-empty diff with --fail-on-change).
pub const EXIT_FINDING: u8 = 1;
/// Exit status for bad usage or bad input.
pub const EXIT_INPUT: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "flightrec",
    version,
    about = "Policy proxy, flight recorder and simulator for MCP tool calls",
    long_about = "flightrec sits between an AI agent (MCP client) and an MCP server, enforces a \
policy on every tool call, records each call with its decision to Parquet audit logs, and \
replays recorded or generated sessions against candidate policies.\n\nExit codes: 0 success, \
1 a finding (violation, failed verification, diff with --fail-on-change), 2 usage or input error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the policy proxy: stdio (spawn CMD), Streamable HTTP (--listen), or stdio-to-HTTP bridge
    Proxy(Box<ProxyArgs>),
    /// List a server's tools and write a starter policy
    Scan(ScanArgs),
    /// Pin tool definitions: record, diff, approve, and check for poisoned descriptions
    #[command(subcommand)]
    Pins(pins_cmd::PinsCommand),
    /// Validate policy files or decide calls against a policy
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// What-if: replay recorded logs and scenarios against candidate policies
    Replay(ReplayArgs),
    /// Generate agent sessions from a scenario, in the audit schema
    Generate(GenerateArgs),
    /// Search for sessions that break an invariant, and shrink them
    Fuzz(FuzzArgs),
    /// Audit log maintenance
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Compliance export of an audit log (parquet, csv, jsonl, ocsf, ecs, cef, ocsf-parquet)
    Export(ExportArgs),
    /// Import other tools' logs into the audit schema
    #[command(subcommand)]
    Import(ImportCommand),
    /// Replay the bundled recordings and scenarios against the bundled policies
    Demo(DemoArgs),
    /// Answer calls a running proxy holds for approval (its local queue)
    #[command(subcommand)]
    Approvals(ApprovalsCommand),
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// The calls waiting for an answer
    List {
        /// One JSON object per line per held call
        #[arg(long)]
        json: bool,
        /// The proxy's approval socket (default: the per-user one)
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Let a held call through (the rest of the policy still applies)
    Approve {
        id: u64,
        /// Who approves, recorded in `approved_by` (default: $USER)
        #[arg(long = "as")]
        by: Option<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
    /// Refuse a held call
    Deny {
        id: u64,
        /// Why, told to the agent and recorded
        #[arg(long)]
        reason: Option<String>,
        /// Who denies, recorded in `approved_by` (default: $USER)
        #[arg(long = "as")]
        by: Option<String>,
        #[arg(long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate policy files (exit 0 valid, 2 invalid; errors on stderr with file:line:column)
    Check {
        /// Policy files to check
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Print nothing for valid files
        #[arg(short, long)]
        quiet: bool,
    },
    /// Decide a JSONL stream of calls, writing one JSON decision per line
    Eval {
        /// The policy to decide with
        #[arg(long)]
        policy: PathBuf,
        /// JSONL calls to decide (default: standard input)
        #[arg(long)]
        calls: Option<PathBuf>,
        /// Write an {"error": …} line for a bad input line and continue, instead of stopping
        #[arg(long)]
        keep_going: bool,
    },
}

#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// The policy to enforce (reloaded on SIGHUP)
    #[arg(long)]
    pub policy: PathBuf,
    /// Directory of the Parquet audit log
    #[arg(long)]
    pub audit_dir: Option<PathBuf>,
    /// Seal the open audit file after this long even when it is small
    /// (sealed files are what --ship uploads)
    #[arg(long, default_value = "5m", value_name = "DURATION")]
    pub rotate_every: String,
    /// Ship each sealed audit file to s3://BUCKET/PREFIX (or file:///DIR)
    /// in the background; files wait locally while the store is down
    #[arg(long, value_name = "URL", requires = "audit_dir")]
    pub ship: Option<String>,
    #[command(flatten)]
    pub lock: LockArgs,
    /// At exit, how long shipping what still waits may take
    #[arg(long, default_value = "30s", requires = "ship")]
    pub ship_timeout: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Agent id recorded for every call (default: the client's name)
    #[arg(long)]
    pub agent: Option<String>,
    /// Server name recorded for every call (default: the server's serverInfo.name)
    #[arg(long)]
    pub server_name: Option<String>,
    /// Candidate policies evaluated without enforcing; verdicts go to the
    /// audit log's `shadow` column (repeatable)
    #[arg(long = "shadow-policy")]
    pub shadow_policies: Vec<PathBuf>,
    /// Redact argument values in the audit log: a JSON Pointer, `*` for any
    /// key (e.g. /password, /credentials/*); repeatable
    #[arg(long)]
    pub redact: Vec<String>,
    /// Refuse client messages longer than this
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Server answers longer than this are not delivered: the request gets
    /// a JSON-RPC error and its row outcome `response_too_large`
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub max_response_bytes: usize,
    /// Answer a request the server has not answered after this long with
    /// an error (row outcome `timeout`) and send the server a cancellation;
    /// `off` waits forever
    #[arg(long, default_value = "5m")]
    pub upstream_timeout: String,
    /// How long the server gets to exit after the client leaves or a signal
    #[arg(long, default_value = "5s")]
    pub grace: String,
    /// When the audit journal is forced to disk
    #[arg(long, value_enum, default_value_t)]
    pub fsync: crate::audit::journal::Fsync,
    /// Listen address for the Streamable HTTP proxy (e.g. 127.0.0.1:8080;
    /// port 0 picks a free one, printed on stderr)
    #[arg(long)]
    pub listen: Option<String>,
    /// HTTP proxy: a file of `AGENT TOKEN` lines (or `AGENT sha256:HEX`);
    /// requests need `Authorization: Bearer TOKEN`, which decides the agent
    #[arg(long)]
    pub tokens: Option<PathBuf>,
    /// HTTP proxy: a browser origin allowed to call (SCHEME://HOST[:PORT],
    /// repeatable); requests naming any other `Origin` than the listener's
    /// own loopback ones get 403
    #[arg(long = "allow-origin", value_name = "ORIGIN")]
    pub allow_origins: Vec<crate::proxy::http::WebOrigin>,
    /// Start with fresh counters instead of rebuilding them from the audit
    /// log's last window (a restart then gives every agent a new budget)
    #[arg(long)]
    pub no_warm_start: bool,
    /// Keep the counters in Redis or Valkey, shared by every proxy pointing
    /// at it: redis://[USER:PASSWORD@]HOST[:PORT][/DB] (no warm start then:
    /// the store holds the state)
    // The brackets are the URL's syntax in `--help`, not doc links.
    #[allow(rustdoc::broken_intra_doc_links)]
    #[arg(long, value_name = "URL")]
    pub state: Option<String>,
    /// Prefix of every key in the state store
    #[arg(long, default_value = "flightrec:", requires = "state")]
    pub state_prefix: String,
    /// When the state store cannot answer: refuse calls (closed) or allow
    /// them without counting (open); both are recorded with rule
    /// `(state store unavailable)`
    #[arg(long, value_enum, default_value_t, requires = "state")]
    pub state_fail_mode: StateFailMode,
    /// Longest wait for the state store (connect, or one round trip)
    #[arg(long, default_value = "200ms", requires = "state")]
    pub state_timeout: String,
    /// The local approval queue's Unix socket, for `flightrec approvals`
    /// (default: $XDG_RUNTIME_DIR/flightrec/approvals.sock, else
    /// /tmp/flightrec-UID/approvals.sock)
    #[arg(long)]
    pub approval_socket: Option<PathBuf>,
    /// How long a call held for approval waits for an answer before it is
    /// refused (recorded as timeout)
    #[arg(long, default_value = "120s")]
    pub approval_timeout: String,
    /// Who may answer a call held for approval: the local queue, the MCP
    /// client's dialog, or both (default: queue with --tokens, where the
    /// client is a remote agent that could approve its own calls; else both)
    #[arg(long, value_enum)]
    pub approve_via: Option<crate::proxy::gateway::ApproveVia>,
    /// HTTP proxy: most requests to the upstream at once
    #[arg(long, default_value_t = 64)]
    pub max_concurrent: usize,
    /// HTTP proxy: a connection gets this long to send a request's headers,
    /// counted from when it starts waiting for one (so it also closes idle
    /// keep-alive connections); then it is closed
    #[arg(long, default_value = "10s")]
    pub header_timeout: DurationArg,
    /// HTTP proxy: a POST gets this long to send its whole body; a client
    /// that trickles it gets 408 and the connection is closed
    #[arg(long, default_value = "30s")]
    pub body_timeout: DurationArg,
    /// HTTP proxy: most client connections open at once; a connection over
    /// it is accepted and closed at once
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// HTTP proxy: most sessions kept; when full, idle sessions are forgotten
    /// (least recently used first), and a request that would start a new
    /// session while every kept one is busy gets 503
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions: u32,
    /// HTTP proxy with a server command after `--`: most server processes
    /// at once (one per session); when full, the least recently used idle
    /// one is stopped, and when none is idle a new session gets 503
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_children: u32,
    /// HTTP proxy with a server command after `--`: a server process with
    /// no request in flight for this long is stopped (its session ends)
    #[arg(long, default_value = "10m")]
    pub child_idle_timeout: DurationArg,
    /// Tool definitions accepted for use (`flightrec pins record`); without
    /// it, the first definition of each tool seen is pinned in
    /// AUDIT_DIR/_flightrec/pins.yaml (in memory without --audit-dir)
    #[arg(long, value_name = "FILE")]
    pub pins: Option<PathBuf>,
    /// A tool whose definition differs from its pin: listed but refused
    /// (block), removed from tools/list and refused (hide), or allowed with
    /// a warning (warn)
    #[arg(long, value_enum, default_value_t)]
    pub on_drift: crate::proxy::pins::OnDrift,
    /// A listed tool the pin file has no pin for (default: as --on-drift;
    /// needs --pins: on first use a new tool is pinned)
    #[arg(long, value_enum, requires = "pins")]
    pub on_new: Option<crate::proxy::pins::OnDrift>,
    /// Hide and refuse tools whose definitions look aimed at the model
    /// (hidden Unicode, instructions, references to secrets, very long
    /// descriptions): a heuristic, see docs/pinning.md
    #[arg(long)]
    pub scan_descriptions: bool,
    /// Upstream MCP server URL (HTTP proxy or stdio-to-HTTP bridge)
    #[arg(long)]
    pub upstream: Option<String>,
    /// The MCP server command to spawn (stdio proxy; with --listen, one
    /// process per session behind the URL)
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// A duration flag (`500ms`, `10s`, `5m`, `1h` or a number of seconds),
/// checked when the command line is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub std::time::Duration);

impl std::str::FromStr for DurationArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let us = crate::time::parse_duration_us(text)?;
        if us <= 0 {
            return Err(format!("{text}: expected a duration above zero"));
        }
        Ok(DurationArg(std::time::Duration::from_micros(us as u64)))
    }
}

/// `--state-fail-mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum StateFailMode {
    /// Refuse calls while the store cannot answer
    #[default]
    Closed,
    /// Allow calls without counting while the store cannot answer
    Open,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Where to write the starter policy (default: standard output)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The MCP server command to scan
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Audit Parquet files, directories (Hive partitions) or globs
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Candidate policies (repeatable); each gets its own fresh state
    #[arg(long = "policy", required = true)]
    pub policies: Vec<PathBuf>,
    /// Report format
    #[arg(long, value_enum, default_value_t)]
    pub format: crate::replay::report::ReportFormat,
    /// Write the report here instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write one row per event per policy to this Parquet file
    #[arg(long)]
    pub decisions_out: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// What approval verdicts do to counters
    #[arg(long, value_enum, default_value_t)]
    pub approvals: crate::policy::ApprovalMode,
    /// Exit 1 when any candidate decides any recorded call differently
    #[arg(long)]
    pub fail_on_change: bool,
    /// How far out of time order recorded rows may be and still be sorted
    /// (e.g. 60s, 5m)
    #[arg(long, default_value = "60s")]
    pub reorder_window: String,
    /// For a scenario input: check these invariants on each candidate's
    /// decisions (exit 1 on a violation)
    #[arg(long)]
    pub invariants: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    /// No progress line on stderr (shown only on a terminal, after a second)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Scenario file
    pub scenario: PathBuf,
    /// Output Parquet file (audit schema v1)
    #[arg(short, long)]
    pub output: PathBuf,
    /// Simulate the agents' reactions against this policy (closed loop) and
    /// record its decisions; without it, decisions are `unrecorded`
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// No progress line on stderr (shown only on a terminal, after a second)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct FuzzArgs {
    /// Policy under test
    #[arg(long)]
    pub policy: PathBuf,
    /// Invariants file
    #[arg(long)]
    pub invariants: PathBuf,
    /// Number of generated cases
    #[arg(long, default_value_t = 256)]
    pub cases: u32,
    /// Seed of the search (the same seed finds the same counterexample)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most calls in one generated case
    #[arg(long, default_value_t = 64)]
    pub max_events: usize,
    /// Write the counterexample scenario here
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// No progress line on stderr (shown only on a terminal, after a second)
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check hash chains, file integrity and gaps of an audit directory
    /// or of the files shipped to a store (exit 0 intact, 1 altered or
    /// incomplete, 2 unreadable)
    Verify {
        /// Audit directory, or s3://BUCKET/PREFIX
        dir: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Ship the sealed files of an audit directory that are not in the
    /// store yet (in write order; never overwrites)
    Ship {
        /// Audit directory
        dir: PathBuf,
        /// Destination: s3://BUCKET/PREFIX (or file:///DIR)
        dest: String,
        #[command(flatten)]
        lock: LockArgs,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// What an audit directory holds: sealed files, shipped and waiting
    Status {
        /// Audit directory
        dir: PathBuf,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Append rows to an audit directory through the crash-safe recorder.
    /// Reads JSON lines from stdin: {"op":"record","row":{…}},
    /// {"op":"begin","row":{…}} or {"op":"complete","event_id":…,"outcome":…};
    /// prints "ack <event_id>" once each is durable.
    #[command(hide = true)]
    Append {
        /// Audit directory
        dir: PathBuf,
        /// Rotate data files at about this many bytes
        #[arg(long)]
        rotate_bytes: Option<u64>,
        /// When the journal is forced to disk
        #[arg(long, value_enum, default_value_t)]
        sync: crate::audit::journal::Fsync,
    },
}

/// How to reach object stores.
#[derive(Debug, Args, Clone, Default)]
pub struct StoreArgs {
    /// S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or
    /// AWS_ENDPOINT, else AWS); plain http:// only to a loopback address or
    /// localhost, never with credentials, a query or a fragment
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
}

impl StoreArgs {
    pub fn options(&self) -> crate::audit::remote::StoreOptions {
        crate::audit::remote::StoreOptions {
            endpoint: self.endpoint.clone(),
        }
    }
}

/// Retention locks on shipped files.
#[derive(Debug, Args, Clone, Default)]
pub struct LockArgs {
    /// Keep every shipped file locked this long (e.g. 2555d), with --lock
    #[arg(long, requires = "lock", value_name = "DURATION")]
    pub retain: Option<String>,
    /// S3 Object Lock mode of shipped files (the bucket must have Object
    /// Lock enabled), with --retain
    #[arg(long, value_enum, requires = "retain")]
    pub lock: Option<crate::audit::ship::LockMode>,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Audit directory, files or globs
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output format
    #[arg(long, value_enum)]
    pub format: crate::audit::export::ExportFormat,
    /// Output file, or s3://BUCKET/KEY (ocsf-parquet: a directory, or s3://BUCKET/PREFIX)
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Keep rows with this decision
    #[arg(long, value_enum)]
    pub decision: Option<crate::audit::schema::RecordedDecision>,
    /// For ocsf-parquet: the AWS region of the Security Lake partitions
    #[arg(long)]
    pub region: Option<String>,
    /// For ocsf-parquet: the 12-digit AWS account id of the partitions
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// No progress line on stderr (shown only on a terminal, after a second)
    #[arg(long, short)]
    pub quiet: bool,
}

/// The row filters `export` and `replay` share.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only rows with ts at or after this time (RFC 3339 or µs since the epoch)
    #[arg(long)]
    pub from: Option<String>,
    /// Only rows with ts before this time (RFC 3339 or µs since the epoch)
    #[arg(long)]
    pub to: Option<String>,
    /// Only this agent's rows (glob)
    #[arg(long)]
    pub agent: Option<String>,
    /// Only rows of this tool (glob)
    #[arg(long)]
    pub tool: Option<String>,
    /// Only this session's rows
    #[arg(long)]
    pub session: Option<String>,
}

impl FilterArgs {
    /// Parses the filters; a bad value is reported and becomes exit 2.
    pub(crate) fn parse(&self) -> Result<crate::audit::filter::RowFilter, ExitCode> {
        Ok(crate::audit::filter::RowFilter {
            from_us: time_arg(&self.from, "from")?,
            to_us: time_arg(&self.to, "to")?,
            agent: glob_arg(&self.agent, "agent")?,
            tool: glob_arg(&self.tool, "tool")?,
            session: self.session.clone(),
            decision: None,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Turn PolicyLayer Intercept event logs into the audit schema
    Intercept {
        /// Intercept events JSONL files
        #[arg(required = true)]
        events: Vec<PathBuf>,
        /// Output Parquet file
        #[arg(short, long)]
        output: PathBuf,
        /// No progress line on stderr (shown only on a terminal, after a second)
        #[arg(long, short)]
        quiet: bool,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    run(cli)
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    if !matches!(cli.command, Command::Proxy(_)) {
        // Like other command-line tools, end quietly when the reader of our
        // output goes away (`flightrec demo | head`). The proxy instead
        // handles a closed client as an error on write.
        // SAFETY: setting a signal disposition before any threads start.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match cli.command {
        Command::Policy(PolicyCommand::Check { files, quiet }) => policy_cmd::check(&files, quiet),
        Command::Policy(PolicyCommand::Eval {
            policy,
            calls,
            keep_going,
        }) => policy_cmd::eval(&policy, calls.as_deref(), keep_going),
        Command::Proxy(args) => proxy_cmd(&args),
        Command::Scan(args) => scan_cmd(&args),
        Command::Pins(cmd) => pins_cmd::run(cmd),
        Command::Replay(args) => replay_cmd::replay(&args),
        Command::Generate(args) => scenario_cmd::generate(&args),
        Command::Fuzz(args) => scenario_cmd::fuzz(&args),
        Command::Audit(AuditCommand::Verify { dir, store }) => {
            audit_cmd::verify(&dir, &store.options())
        }
        Command::Audit(AuditCommand::Ship {
            dir,
            dest,
            lock,
            store,
        }) => audit_cmd::ship(&dir, &dest, &lock, &store.options()),
        Command::Audit(AuditCommand::Status { dir, json }) => audit_cmd::status(&dir, json),
        Command::Audit(AuditCommand::Append {
            dir,
            rotate_bytes,
            sync,
        }) => audit_cmd::append(&dir, rotate_bytes, sync.into()),
        Command::Export(args) => audit_cmd::export(&args),
        Command::Import(ImportCommand::Intercept {
            events,
            output,
            quiet,
        }) => audit_cmd::import_intercept(&events, &output, quiet),
        Command::Demo(_) => replay_cmd::demo(),
        Command::Approvals(cmd) => approvals_cmd(cmd),
    }
}

fn approvals_cmd(cmd: ApprovalsCommand) -> ExitCode {
    use crate::proxy::approval::{Request, client_request, default_socket};
    let user = || std::env::var("USER").ok().filter(|u| !u.is_empty());
    let (socket, req, json) = match cmd {
        ApprovalsCommand::List { json, socket } => (socket, Request::List, json),
        ApprovalsCommand::Approve { id, by, socket } => (
            socket,
            Request::Approve {
                id,
                by: by.or_else(user),
            },
            false,
        ),
        ApprovalsCommand::Deny {
            id,
            reason,
            by,
            socket,
        } => (
            socket,
            Request::Deny {
                id,
                by: by.or_else(user),
                reason,
            },
            false,
        ),
    };
    let socket = socket.unwrap_or_else(default_socket);
    let replies = match client_request(&socket, &req) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    match req {
        Request::List if json => {
            for r in &replies {
                println!("{r}");
            }
        }
        Request::List => {
            if replies.is_empty() {
                println!("no calls are waiting for approval");
            }
            for r in &replies {
                println!(
                    "{:>4}  {}  waiting {:.1} s  session {}  agent {}\n      rule \"{}\": {}\n      args {}",
                    r["id"],
                    r["tool"].as_str().unwrap_or(""),
                    r["waiting_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
                    r["session"].as_str().unwrap_or(""),
                    r["agent"].as_str().unwrap_or(""),
                    r["rule"].as_str().unwrap_or(""),
                    r["reason"].as_str().unwrap_or(""),
                    r["args"]
                );
            }
        }
        _ => match replies.first() {
            Some(r) if r["ok"] == true => {}
            Some(r) => {
                eprintln!("error: {}", r["error"].as_str().unwrap_or("refused"));
                return ExitCode::from(1);
            }
            None => {
                eprintln!("error: the proxy did not answer");
                return ExitCode::from(1);
            }
        },
    }
    ExitCode::SUCCESS
}

fn scan_cmd(args: &ScanArgs) -> ExitCode {
    let (server, tools) =
        match crate::proxy::scan::scan(&args.command, std::time::Duration::from_secs(30)) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: scan: {e}");
                return ExitCode::from(EXIT_INPUT);
            }
        };
    let text = crate::proxy::scan::starter_policy(&server, &args.command, &tools);
    match &args.output {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &text) {
                eprintln!("error: cannot write {}: {e}", path.display());
                return ExitCode::from(EXIT_INPUT);
            }
            eprintln!(
                "scan: {} tools of {server} written to {}",
                tools.len(),
                path.display()
            );
        }
        None => print!("{text}"),
    }
    ExitCode::SUCCESS
}

/// `flightrec proxy`: the transport's proxy, with the audit shipper
/// beside it when `--ship` is given (started before, finished after).
fn proxy_cmd(args: &ProxyArgs) -> ExitCode {
    let rotate_age = match crate::time::parse_duration_us(&args.rotate_every) {
        Ok(us) => std::time::Duration::from_micros(us as u64),
        Err(e) => {
            eprintln!("error: --rotate-every {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    // A proxy that cannot load its policy stops at once, without a
    // shipper waiting on the store at exit.
    let policy_loads = crate::policy::Policy::load(&args.policy).is_ok();
    if let (Some(url), Some(dir), true) = (&args.ship, &args.audit_dir, policy_loads) {
        {
            let lock = match audit_cmd::lock_arg(&args.lock) {
                Ok(l) => l,
                Err(code) => return code,
            };
            let timeout = match crate::time::parse_duration_us(&args.ship_timeout) {
                Ok(us) => std::time::Duration::from_micros(us as u64),
                Err(e) => {
                    eprintln!("error: --ship-timeout {e}");
                    return ExitCode::from(EXIT_INPUT);
                }
            };
            let dest = match crate::audit::remote::StoreDir::parse(url, &args.store.options()) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: --ship {e}");
                    return ExitCode::from(EXIT_INPUT);
                }
            };
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                return ExitCode::from(EXIT_INPUT);
            }
            eprintln!("flightrec: shipping sealed audit files to {}", dest.url());
            let target = crate::audit::ship::ShipTarget { dest, lock };
            let shipper =
                crate::audit::ship::Shipper::start(dir, target, std::time::Duration::from_secs(1));
            // After the proxy sealed its last file: ship what waits.
            crate::proxy::at_exit(move || {
                shipper.finish(timeout);
            });
        }
    }
    let code = run_proxy(args, rotate_age);
    crate::proxy::run_exit_hooks();
    code
}

fn run_proxy(args: &ProxyArgs, rotate_age: std::time::Duration) -> ExitCode {
    if args.listen.is_some() && args.upstream.is_none() && args.command.is_empty() {
        eprintln!(
            "error: --listen needs --upstream URL or a server command after `--` (the MCP server to proxy)"
        );
        return ExitCode::from(EXIT_INPUT);
    }
    if args.upstream.is_some() && !args.command.is_empty() {
        eprintln!("error: give either --upstream URL or a server command after `--`, not both");
        return ExitCode::from(EXIT_INPUT);
    }
    if args.upstream.is_none() && args.command.is_empty() {
        eprintln!(
            "error: give the MCP server command after `--`, e.g. flightrec proxy --policy p.yaml -- npx server"
        );
        return ExitCode::from(EXIT_INPUT);
    }
    let mut redact = Vec::new();
    for r in &args.redact {
        match r.parse() {
            Ok(p) => redact.push(p),
            Err(e) => {
                eprintln!("error: --redact: {e}");
                return ExitCode::from(EXIT_INPUT);
            }
        }
    }
    let grace = match crate::time::parse_duration_us(&args.grace) {
        Ok(us) => std::time::Duration::from_micros(us as u64),
        Err(e) => {
            eprintln!("error: --grace {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let upstream_timeout = match args.upstream_timeout.as_str() {
        "off" => None,
        t => match crate::time::parse_duration_us(t) {
            Ok(us) => Some(std::time::Duration::from_micros(us as u64)),
            Err(e) => {
                eprintln!("error: --upstream-timeout {e} (or `off`)");
                return ExitCode::from(EXIT_INPUT);
            }
        },
    };
    let state = match &args.state {
        None => None,
        Some(url) => {
            let target = match crate::store::redis::RedisTarget::parse(url) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: --state: {e}");
                    return ExitCode::from(EXIT_INPUT);
                }
            };
            let timeout = match crate::time::parse_duration_us(&args.state_timeout) {
                Ok(us) => std::time::Duration::from_micros(us as u64),
                Err(e) => {
                    eprintln!("error: --state-timeout {e}");
                    return ExitCode::from(EXIT_INPUT);
                }
            };
            Some(crate::store::redis::RedisConfig {
                target,
                prefix: args.state_prefix.clone(),
                fail_open: args.state_fail_mode == StateFailMode::Open,
                timeout,
            })
        }
    };
    let approval_timeout = match crate::time::parse_duration_us(&args.approval_timeout) {
        Ok(us) => std::time::Duration::from_micros(us as u64),
        Err(e) => {
            eprintln!("error: --approval-timeout {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let pins = match &args.pins {
        Some(file) => crate::proxy::pins::PinGuard::from_file(
            file.clone(),
            args.on_drift,
            args.on_new.unwrap_or(args.on_drift),
            args.scan_descriptions,
        ),
        None => crate::proxy::pins::PinGuard::first_use(
            args.audit_dir
                .as_ref()
                .map(|d| d.join(crate::audit::layout::STATE_DIR).join("pins.yaml")),
            args.on_drift,
            args.scan_descriptions,
        ),
    };
    let pins = match pins {
        Ok(p) => Some(std::sync::Arc::new(p)),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let gateway = crate::proxy::GatewayConfig {
        pins,
        approval_socket: args.approval_socket.clone(),
        approval_timeout: Some(approval_timeout),
        state,
        policy_path: args.policy.clone(),
        agent: args.agent.clone(),
        server_name: args.server_name.clone(),
        shadow_paths: args.shadow_policies.clone(),
        redact,
        upstream_timeout,
        warm_start: !args.no_warm_start,
        rotate_age: Some(rotate_age),
        approve_via: args.approve_via.unwrap_or(if args.tokens.is_some() {
            crate::proxy::gateway::ApproveVia::Queue
        } else {
            crate::proxy::gateway::ApproveVia::Both
        }),
    };
    match (&args.listen, &args.upstream) {
        (Some(listen), Some(upstream)) => {
            return http_proxy(args, gateway, Some(listen), Some(upstream), grace);
        }
        (None, Some(upstream)) => return http_proxy(args, gateway, None, Some(upstream), grace),
        (Some(listen), None) => return http_proxy(args, gateway, Some(listen), None, grace),
        (None, None) => {}
    }
    let config = crate::proxy::ProxyConfig {
        sync: args.fsync.into(),
        gateway,
        audit_dir: args.audit_dir.clone(),
        max_response_bytes: args.max_response_bytes,
        max_message_bytes: args.max_message_bytes,
        grace,
        command: args.command.clone(),
    };
    match crate::proxy::run(config) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INPUT)
        }
    }
}

/// `--agent` / `--tool` style glob arguments; errors are reported.
pub(crate) fn glob_arg(
    text: &Option<String>,
    what: &str,
) -> Result<Option<globset::GlobMatcher>, ExitCode> {
    match text {
        None => Ok(None),
        Some(t) => globset::Glob::new(t)
            .map(|g| Some(g.compile_matcher()))
            .map_err(|e| {
                eprintln!("error: --{what} {t}: {e}");
                ExitCode::from(EXIT_INPUT)
            }),
    }
}

/// `--from` / `--to` arguments (RFC 3339 or µs); errors are reported.
pub(crate) fn time_arg(text: &Option<String>, what: &str) -> Result<Option<i64>, ExitCode> {
    match text {
        None => Ok(None),
        Some(t) => crate::time::parse_time_arg(t).map(Some).map_err(|e| {
            eprintln!("error: --{what}: {e}");
            ExitCode::from(EXIT_INPUT)
        }),
    }
}

/// The HTTP proxy (`--listen`) in front of `--upstream URL` or of the
/// server command after `--` (`upstream` None), or, without `--listen`,
/// the stdio-to-HTTP bridge.
fn http_proxy(
    args: &ProxyArgs,
    gateway: crate::proxy::GatewayConfig,
    listen: Option<&String>,
    upstream: Option<&String>,
    grace: std::time::Duration,
) -> ExitCode {
    let listen: Option<std::net::SocketAddr> = match listen.map(|l| (l, l.parse())) {
        None => None,
        Some((_, Ok(a))) => Some(a),
        Some((l, Err(e))) => {
            eprintln!("error: --listen {l}: {e} (expected e.g. 127.0.0.1:8080)");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let upstream: Option<hyper::Uri> = match upstream.map(|u| (u, u.parse::<hyper::Uri>())) {
        None => None,
        Some((_, Ok(u))) if u.scheme_str() == Some("http") && u.authority().is_some() => Some(u),
        Some((upstream, Ok(_))) => {
            eprintln!(
                "error: --upstream {upstream}: expected an http:// URL (e.g. http://127.0.0.1:8000/mcp)"
            );
            return ExitCode::from(EXIT_INPUT);
        }
        Some((upstream, Err(e))) => {
            eprintln!("error: --upstream {upstream}: {e}");
            return ExitCode::from(EXIT_INPUT);
        }
    };
    let upstream_timeout = gateway
        .upstream_timeout
        .unwrap_or(std::time::Duration::from_secs(365 * 24 * 3600));
    let result = match (listen, upstream) {
        (Some(listen), upstream) => crate::proxy::http::run(crate::proxy::HttpConfig {
            upstream_timeout,
            gateway,
            audit_dir: args.audit_dir.clone(),
            sync: args.fsync.into(),
            listen,
            upstream: match upstream {
                Some(uri) => crate::proxy::http::Upstream::Http(uri),
                None => crate::proxy::http::Upstream::Command(crate::proxy::child::ChildConfig {
                    command: args.command.clone(),
                    max_children: args.max_children as usize,
                    idle_timeout: args.child_idle_timeout.0,
                    max_response_bytes: args.max_response_bytes,
                    grace,
                }),
            },
            tokens: args.tokens.clone(),
            max_body_bytes: args.max_message_bytes,
            max_response_bytes: args.max_response_bytes,
            max_concurrent: args.max_concurrent,
            header_timeout: args.header_timeout.0,
            body_timeout: args.body_timeout.0,
            max_connections: args.max_connections as usize,
            max_sessions: args.max_sessions as usize,
            allow_origins: args.allow_origins.clone(),
        }),
        (None, Some(upstream)) => crate::proxy::bridge::run(crate::proxy::bridge::BridgeConfig {
            gateway,
            audit_dir: args.audit_dir.clone(),
            sync: args.fsync.into(),
            upstream,
            max_message_bytes: args.max_message_bytes,
            max_response_bytes: args.max_response_bytes,
            upstream_timeout,
        }),
        (None, None) => {
            unreachable!("run_proxy runs the stdio proxy without --listen or --upstream")
        }
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_INPUT)
        }
    }
}
