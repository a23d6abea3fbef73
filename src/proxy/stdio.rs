//! The stdio transport: the client launches `flightrec proxy … -- CMD`,
//! which spawns CMD and sits between the two, newline-delimited JSON-RPC
//! both ways.
//!
//! This file owns only what is stdio's: framing (one JSON-RPC message per
//! line, with a size limit), the child process, one thread per direction,
//! signals and the policy file watcher. What happens to each frame is the
//! [`Session`]'s business: the client thread forwards, answers or holds as
//! it says, and the server thread sends the client what it says, then
//! completes the request's row.

use crate::policy::Outcome;
use crate::proxy::ProxyError;
use crate::proxy::gateway::{Gateway, GatewayConfig};
use crate::proxy::session::{ClientAction, Session, Transport};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::process::{Child, ChildStdin, Command};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How the stdio proxy was started.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub gateway: GatewayConfig,
    pub audit_dir: Option<PathBuf>,
    pub max_message_bytes: usize,
    /// Server frames longer than this are not delivered; the request they
    /// answer gets an error.
    pub max_response_bytes: usize,
    pub grace: Duration,
    /// When the audit journal is forced to disk.
    pub sync: crate::audit::journal::SyncMode,
    pub command: Vec<String>,
}

/// The server's stdin: the client thread's frames and the timer's
/// cancellations, one at a time.
/// `None` once closed (the client left: the server sees end of input).
struct ServerIn(Mutex<Option<ChildStdin>>);

impl ServerIn {
    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        let mut guard = crate::proxy::gateway::lock(&self.0);
        let Some(input) = guard.as_mut() else {
            return Err(std::io::ErrorKind::BrokenPipe.into());
        };
        input.write_all(frame)?;
        if frame.last() != Some(&b'\n') {
            input.write_all(b"\n")?;
        }
        input.flush()
    }

    fn close(&self) {
        crate::proxy::gateway::lock(&self.0).take();
    }
}

/// The client's stdout: forwarded and synthesized frames, one at a time.
struct ClientOut(Mutex<std::io::Stdout>);

impl ClientOut {
    fn send(&self, frame: &[u8]) {
        let mut out = crate::proxy::gateway::lock(&self.0);
        let _ = out.write_all(frame).and_then(|_| out.flush());
    }
}

/// What the supervising thread waits for.
enum Event {
    ChildExited(std::io::Result<std::process::ExitStatus>),
    ClientGone,
    Signal(i32),
}

/// Runs the proxy until the client or the server goes away; returns the
/// exit code (the server's).
///
/// One thread per direction does all the work for a frame (read, decide,
/// record, write), so a call crosses no thread or runtime handoff: the added
/// latency is the proxy's own work plus the journal write.
pub fn run(config: ProxyConfig) -> Result<i32, ProxyError> {
    // Signals go to a dedicated thread (sigwait); block them first, before
    // any thread exists (the audit journal starts one), so that every
    // thread inherits the mask. The child gets its mask reset in pre_exec.
    let signals = block_signals();
    let recorder = crate::proxy::gateway::open_recorder(
        config.audit_dir.as_deref(),
        config.sync,
        config.gateway.rotate_age,
    )?;
    let gateway = Arc::new(Gateway::new(config.gateway.clone(), recorder)?);
    gateway.open_approval_queue()?;
    let Some((program, args)) = config.command.split_first() else {
        return Err(ProxyError::Spawn {
            command: String::new(),
            source: std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "no command given after --",
            ),
        });
    };
    let mut command = server_command(program, args);
    let mut child: Child = command.spawn().map_err(|source| ProxyError::Spawn {
        command: config.command.join(" "),
        source,
    })?;
    let child_stdin = Arc::new(ServerIn(Mutex::new(Some(
        child.stdin.take().expect("piped"),
    ))));
    let child_stdout = child.stdout.take().expect("piped");
    let pid = child.id();
    let server_guess = std::path::Path::new(program)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let session = Arc::new(gateway.session(Transport::Stdio, None, server_guess));
    let out = Arc::new(ClientOut(Mutex::new(std::io::stdout())));

    let (events, inbox) = mpsc::channel::<Event>();
    let max = config.max_message_bytes;
    let max_response = config.max_response_bytes;
    let from_server = {
        let (session, out) = (session.clone(), out.clone());
        std::thread::spawn(move || {
            server_loop(
                &session,
                &out,
                SpinReader::new(child_stdout, SPIN),
                max_response,
            )
        })
    };
    // Requests the server keeps waiting past --upstream-timeout.
    if let Some(timeout) = config.gateway.upstream_timeout {
        let tick = (timeout / 20).clamp(Duration::from_millis(10), Duration::from_millis(500));
        let (session, out, to_server) = (session.clone(), out.clone(), child_stdin.clone());
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(tick);
                let o = session.expire(Instant::now());
                for f in &o.to_client {
                    out.send(f);
                }
                for f in &o.to_server {
                    if to_server.send(f).is_err() {
                        return;
                    }
                }
            }
        });
    }
    {
        let (session, out) = (session.clone(), out.clone());
        let events = events.clone();
        std::thread::spawn(move || {
            // The client's next request comes whenever it likes: no spinning.
            client_loop(
                &session,
                &out,
                SpinReader::new(std::io::stdin(), Duration::ZERO),
                child_stdin,
                max,
            );
            let _ = events.send(Event::ClientGone);
        });
    }
    {
        let events = events.clone();
        std::thread::spawn(move || {
            let _ = events.send(Event::ChildExited(child.wait()));
        });
    }
    if let Some(set) = signals {
        let events = events.clone();
        std::thread::spawn(move || {
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait on a signal set we initialised.
                if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                    return;
                }
                if events.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        });
    }
    gateway.watch_policy_file();

    let mut client_gone = false;
    let status = loop {
        match inbox.recv() {
            Ok(Event::ChildExited(s)) => break s?,
            Ok(Event::ClientGone) => {
                // The server sees EOF on its stdin; it gets the grace period.
                client_gone = true;
                eprintln!(
                    "flightrec: the client closed its input; the server has {:?} to exit",
                    config.grace
                );
                break wait_or_kill(&inbox, pid, None, config.grace)?;
            }
            Ok(Event::Signal(libc::SIGHUP)) => gateway.reload_and_report(),
            Ok(Event::Signal(sig)) => break wait_or_kill(&inbox, pid, Some(sig), config.grace)?,
            Err(_) => {
                return Err(ProxyError::Io(std::io::Error::other(
                    "supervisor channel closed",
                )));
            }
        }
    };
    // The server is gone: its remaining output is drained, then every request
    // still waiting gets an error and a row.
    let _ = from_server.join();
    let outcome = if client_gone {
        Outcome::Interrupted
    } else {
        Outcome::UpstreamGone
    };
    for frame in session.abandon_all(outcome, "flightrec: the MCP server exited before answering") {
        out.send(&frame);
    }
    // Calls still held for a human end as cancelled, their rows recorded.
    gateway.approvals().cancel_all(Duration::from_secs(2));
    gateway.close()?;
    Ok(exit_code(status))
}

/// Waits for the child to exit after the client left or a signal arrived
/// (forwarded to it, as is any stop signal that arrives meanwhile), killing
/// it after the grace period.
fn wait_or_kill(
    inbox: &mpsc::Receiver<Event>,
    pid: u32,
    sig: Option<i32>,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    if let Some(sig) = sig {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match inbox.recv_timeout(left) {
            Ok(Event::ChildExited(s)) => return s,
            // A stop signal during the grace period (the client left and
            // the operator stops the proxy) goes to the server too.
            Ok(Event::Signal(s)) if s != libc::SIGHUP => {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, s);
                }
            }
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // SAFETY: as above.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                loop {
                    if let Ok(Event::ChildExited(s)) = inbox.recv() {
                        return s;
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(std::io::Error::other("the child waiter stopped"));
            }
        }
    }
}

/// Blocks SIGTERM, SIGINT and SIGHUP in this thread (and the threads it
/// spawns) so that one thread can `sigwait` for them.
pub(crate) fn block_signals() -> Option<libc::sigset_t> {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        (libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) == 0).then_some(set)
    }
}

/// An MCP server's command, as every transport starts one: its stdin and
/// stdout piped to flightrec, its stderr flightrec's, and the signal mask
/// reset (the proxy's threads block the stop signals).
pub(crate) fn server_command(program: &str, args: &[String]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    reset_signal_mask(&mut command);
    command
}

/// The child must not inherit the blocked mask.
fn reset_signal_mask(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: pre_exec runs in the forked child before exec; it only calls
    // async-signal-safe functions on a local set.
    unsafe {
        command.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            Ok(())
        });
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

pub(crate) enum Frame {
    Line(Vec<u8>),
    /// A frame over the limit: its length and its first [`HEAD`] bytes
    /// (enough to find its id); the rest was skipped, never buffered.
    TooLong(usize, Vec<u8>),
    Eof,
}

/// Reads one newline-terminated frame, refusing (and skipping) frames over
/// `max` bytes without buffering them.
/// How long a reader thread polls for the next frame before it sleeps in
/// the kernel: the answer to a forwarded request usually arrives within
/// microseconds, and a sleeping thread's wake-up costs more than that.
const SPIN: Duration = Duration::from_micros(60);

/// Waits until `fd` is readable: polls without sleeping for up to `spin`,
/// then blocks.
fn wait_readable(fd: std::os::fd::RawFd, spin: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let start = Instant::now();
    loop {
        // SAFETY: poll(2) on one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n != 0 || start.elapsed() >= spin {
            break;
        }
        std::hint::spin_loop();
    }
    if pfd.revents == 0 {
        // SAFETY: as above; -1 waits until the fd is readable or closed.
        unsafe {
            libc::poll(&mut pfd, 1, -1);
        }
    }
}

/// A buffered reader that spins briefly before blocking (see [`SPIN`]).
struct SpinReader<R: std::io::Read + std::os::fd::AsRawFd> {
    inner: BufReader<R>,
    fd: std::os::fd::RawFd,
    spin: Duration,
}

impl<R: std::io::Read + std::os::fd::AsRawFd> SpinReader<R> {
    fn new(r: R, spin: Duration) -> Self {
        let fd = r.as_raw_fd();
        SpinReader {
            inner: BufReader::with_capacity(64 * 1024, r),
            fd,
            spin,
        }
    }
}

impl<R: std::io::Read + std::os::fd::AsRawFd> std::io::Read for SpinReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.inner.buffer().is_empty() {
            wait_readable(self.fd, self.spin);
        }
        self.inner.read(buf)
    }
}

impl<R: std::io::Read + std::os::fd::AsRawFd> BufRead for SpinReader<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.inner.buffer().is_empty() {
            wait_readable(self.fd, self.spin);
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.inner.consume(amt)
    }
}

/// How much of an oversized frame is kept.
const HEAD: usize = 4096;

pub(crate) fn read_frame<R: BufRead>(r: &mut R, max: usize) -> std::io::Result<Frame> {
    let mut line = Vec::new();
    let mut too_long = 0usize;
    let mut head = Vec::new();
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if too_long > 0 {
                Frame::TooLong(too_long, head)
            } else if line.is_empty() {
                Frame::Eof
            } else {
                Frame::Line(line)
            });
        }
        let (chunk, done) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if too_long > 0 || line.len() + n > max + 1 {
            if head.len() < HEAD {
                head.extend_from_slice(&line);
                head.extend_from_slice(chunk);
                head.truncate(HEAD);
            }
            too_long += line.len() + n;
            line.clear();
        } else {
            line.extend_from_slice(chunk);
        }
        r.consume(n);
        if done {
            return Ok(if too_long > 0 {
                Frame::TooLong(too_long, head)
            } else {
                Frame::Line(line)
            });
        }
    }
}

fn client_loop<R: BufRead>(
    session: &Arc<Session>,
    out: &Arc<ClientOut>,
    mut input: R,
    to_server: Arc<ServerIn>,
    max: usize,
) {
    client_frames(session, out, &mut input, &to_server, max);
    // The client is gone (or the server stopped reading): the server sees
    // the end of its input.
    to_server.close();
}

fn client_frames<R: BufRead>(
    session: &Arc<Session>,
    out: &Arc<ClientOut>,
    input: &mut R,
    to_server: &Arc<ServerIn>,
    max: usize,
) {
    loop {
        let frame = match read_frame(input, max) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("flightrec: reading from the client failed: {e}");
                return;
            }
        };
        let action = match frame {
            Frame::Eof => return,
            Frame::TooLong(n, _) => {
                ClientAction::Respond(session.on_oversized_client_frame(n, max))
            }
            Frame::Line(line) => session.on_client_frame(line),
        };
        match action {
            ClientAction::Forward(line) => {
                if to_server.send(&line).is_err() {
                    return;
                }
            }
            ClientAction::Respond(frame) => out.send(&frame),
            ClientAction::Hold(mut held) => {
                // Asked in the client (its answer comes back on this very
                // input), or in the local queue; the wait runs on a thread
                // of its own so other requests keep flowing.
                if let Some(ask) = held.ask.take() {
                    out.send(&ask);
                }
                let (session, out, to_server) = (session.clone(), out.clone(), to_server.clone());
                std::thread::spawn(move || match session.wait_held(*held) {
                    ClientAction::Forward(bytes) => {
                        let _ = to_server.send(&bytes);
                    }
                    ClientAction::Respond(bytes) => out.send(&bytes),
                    _ => {}
                });
            }
            ClientAction::Ignore => {}
        }
    }
}

fn server_loop<R: BufRead>(session: &Session, out: &ClientOut, mut input: R, max: usize) {
    loop {
        let action = match read_frame(&mut input, max) {
            Ok(Frame::Line(l)) => session.on_server_frame(l),
            Ok(Frame::TooLong(n, head)) => session.on_oversized_server_frame(&head, n, max),
            Ok(Frame::Eof) | Err(_) => return,
        };
        // The client gets its answer first; the row is completed (chained
        // and journaled) right after. A call was journaled before it was
        // forwarded, so a crash in between still leaves its row.
        if let Some(bytes) = &action.send {
            out.send(bytes);
        }
        if let Some(c) = action.completion {
            session.complete(c);
        }
    }
}
