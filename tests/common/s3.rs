//! A real S3-compatible server (moto's `moto_server`, installed by `.ci/run`
//! into `.venv-s3/`) on a free loopback port; buckets and object questions
//! asked through boto3 (`tests/e2e/s3_tool.py`); and a loopback TCP gate in
//! front of it that can go dark and come back, for store outages that keep
//! the store's data.

use super::{need, root};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A moto S3 server of our own.
pub struct Moto {
    child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    pub fn start() -> Moto {
        let bin = need(root().join(".venv-s3/bin/moto_server"));
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `tests/e2e/s3_tool.py ENDPOINT ARGS…`; returns its stdout
    /// (panics with its stderr when it fails).
    pub fn tool(&self, args: &[&str]) -> String {
        s3_tool(&self.endpoint(), args)
    }

    /// Creates a bucket (with Object Lock enabled when `locked`).
    pub fn bucket(&self, name: &str, locked: bool) {
        let mut args = vec!["mkbucket", name];
        if locked {
            args.push("--lock");
        }
        self.tool(&args);
    }
}

/// The environment a flightrec process needs to reach `endpoint`.
pub fn aws_env(cmd: &mut Command, endpoint: &str) {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env_remove("AWS_PROFILE");
}

pub fn s3_tool(endpoint: &str, args: &[&str]) -> String {
    let python = need(root().join(".venv-s3/bin/python"));
    let out = super::output_within(
        Command::new(python)
            .arg(root().join("tests/e2e/s3_tool.py"))
            .arg(endpoint)
            .args(args),
        Duration::from_secs(120),
    );
    assert!(
        out.status.success(),
        "s3_tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback TCP forwarder to a backend port that can refuse every
/// connection (and cut the open ones) and later accept again: the
/// store's address goes dark while the store keeps its data.
pub struct Gate {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Gate {
    pub fn new(backend: u16) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (o, s, c) = (open.clone(), stop.clone(), conns.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((client, _)) => client,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                if !o.load(Ordering::SeqCst) {
                    // Dark: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                    continue;
                };
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Gate {
            port,
            open,
            conns,
            stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Goes dark: open connections are cut, new ones reset.
    pub fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    pub fn reopen(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.close();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

/// A loopback address that accepts connections and never answers: a store
/// that hangs. Returns its endpoint; connections are held until the test
/// process ends.
pub fn black_hole() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in listener.incoming().flatten() {
            held.push(c);
        }
    });
    format!("http://127.0.0.1:{port}")
}
