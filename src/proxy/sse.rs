//! Just enough Server-Sent Events for MCP's Streamable HTTP: reading a body
//! event by event, finding where an event ends in a growing buffer, and its
//! `data` (the JSON-RPC message).

use http_body_util::BodyExt;
use hyper::body::Incoming;

/// An SSE body read one event at a time, as the bytes arrive.
pub(crate) struct Events {
    body: Incoming,
    buf: Vec<u8>,
}

impl Events {
    pub(crate) fn new(body: Incoming) -> Events {
        Events {
            body,
            buf: Vec::new(),
        }
    }

    /// The next whole event's text (without its closing blank line), or
    /// `None` when the body ended or broke off.
    pub(crate) async fn next(&mut self) -> Option<String> {
        loop {
            if let Some((end, sep)) = event_end(&self.buf) {
                let event: Vec<u8> = self.buf.drain(..end + sep).collect();
                return Some(String::from_utf8_lossy(&event[..end]).into_owned());
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }

    /// Bytes after the last whole event (a body that ended mid-event).
    pub(crate) fn rest(self) -> Vec<u8> {
        self.buf
    }
}

/// Where the first event in `buf` ends, and the length of the blank line
/// that ends it (`\n\n` or `\r\n\r\n`: servers use either).
pub(crate) fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// An event's `data` lines joined (`None` when it has none) and its other
/// lines, in order.
pub(crate) fn split_event(event: &str) -> (Option<String>, Vec<&str>) {
    let mut data = Vec::new();
    let mut other = Vec::new();
    for line in event.lines() {
        match line.strip_prefix("data:") {
            Some(d) => data.push(d.strip_prefix(' ').unwrap_or(d)),
            None if !line.is_empty() => other.push(line),
            None => {}
        }
    }
    ((!data.is_empty()).then(|| data.join("\n")), other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_on_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(event_end(b"data: a\n"), None);
        let (data, other) = split_event("event: message\r\ndata: {\"a\":1}\r\nid: 7");
        assert_eq!(data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(other, ["event: message", "id: 7"]);
    }
}
