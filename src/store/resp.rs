//! A minimal RESP2 client: commands as arrays of bulk strings, the five
//! reply types back, over one TCP connection with read and write timeouts.
//! Enough for the counter scripts (`EVALSHA`, `SCRIPT LOAD`), `AUTH`,
//! `SELECT` and `PING`; nothing here knows about counters.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    /// An error reply (`-ERR …`, `-NOSCRIPT …`): the server answered.
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(i) => Some(*i),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Why a command got no reply (the connection is unusable afterwards).
#[derive(Debug)]
pub enum RespError {
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for RespError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RespError::Io(e) if is_timeout(e) => write!(f, "no answer in time ({e})"),
            RespError::Io(e) => write!(f, "{e}"),
            RespError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

impl From<std::io::Error> for RespError {
    fn from(e: std::io::Error) -> Self {
        RespError::Io(e)
    }
}

/// One connection.
pub struct Connection {
    reader: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Connection {
    /// Connects to `host:port` within `timeout`; every later read and write
    /// has the same timeout.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Connection, RespError> {
        let mut last = None;
        for addr in (host, port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => {
                    stream.set_nodelay(true)?;
                    stream.set_read_timeout(Some(timeout))?;
                    stream.set_write_timeout(Some(timeout))?;
                    return Ok(Connection {
                        reader: BufReader::new(stream),
                        out: Vec::with_capacity(512),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(RespError::Io(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
        })))
    }

    /// Sends one command and reads its reply.
    pub fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Reply, RespError> {
        self.out.clear();
        self.out
            .extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in args {
            let a = a.as_ref();
            self.out
                .extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            self.out.extend_from_slice(a);
            self.out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&self.out)?;
        read_reply(&mut self.reader)
    }
}

fn read_line(r: &mut BufReader<TcpStream>) -> Result<String, RespError> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(RespError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed the connection",
        )));
    }
    if !line.ends_with(b"\r\n") {
        return Err(RespError::Protocol("a line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| RespError::Protocol("a line that is not UTF-8".into()))
}

fn read_reply(r: &mut BufReader<TcpStream>) -> Result<Reply, RespError> {
    let line = read_line(r)?;
    let (kind, rest) = line.split_at(1.min(line.len()));
    let number = |t: &str| {
        t.parse::<i64>()
            .map_err(|_| RespError::Protocol(format!("bad number {t:?}")))
    };
    match kind {
        "+" => Ok(Reply::Status(rest.to_string())),
        "-" => Ok(Reply::Error(rest.to_string())),
        ":" => Ok(Reply::Int(number(rest)?)),
        "$" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Reply::Bulk(None));
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(Reply::Bulk(Some(buf)))
        }
        "*" => {
            let n = number(rest)?;
            if n < 0 {
                return Ok(Reply::Array(None));
            }
            let mut items = Vec::with_capacity(n as usize);
            for _ in 0..n {
                items.push(read_reply(r)?);
            }
            Ok(Reply::Array(Some(items)))
        }
        other => Err(RespError::Protocol(format!("unknown reply type {other:?}"))),
    }
}
