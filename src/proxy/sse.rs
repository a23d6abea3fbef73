//! Just enough Server-Sent Events for MCP's Streamable HTTP: reading a body
//! event by event, finding where an event ends in a growing buffer, and its
//! `data` (the JSON-RPC message).

use http_body_util::BodyExt;
use hyper::body::Incoming;

/// One event read from a stream.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// A whole event's text (without its closing blank line).
    Whole(String),
    /// An event longer than the limit: its first [`HEAD`] bytes and its
    /// length; the rest was read and discarded, never held.
    TooLarge { head: Vec<u8>, len: usize },
}

/// How much of an oversized event is kept (enough to find the id of the
/// request it answers).
pub(crate) const HEAD: usize = 4096;

/// An SSE body read one event at a time, as the bytes arrive; no event
/// longer than the limit is held.
pub(crate) struct Events {
    body: Incoming,
    split: Splitter,
    ended: bool,
}

impl Events {
    /// `limit`: the longest event kept whole (`--max-response-bytes`).
    pub(crate) fn new(body: Incoming, limit: usize) -> Events {
        Events {
            body,
            split: Splitter::new(limit),
            ended: false,
        }
    }

    /// The next event, or `None` when the body ended or broke off (an
    /// oversized event the body ended in is still reported).
    pub(crate) async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.split.next_event() {
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.split.push(&data);
                    }
                }
                _ => {
                    self.ended = true;
                    return self.split.unfinished_oversized();
                }
            }
        }
    }

    /// Bytes after the last whole event (a body that ended mid-event).
    pub(crate) fn rest(self) -> Vec<u8> {
        self.split.rest()
    }
}

/// Splits a byte stream into events (`\n\n` or `\r\n\r\n` after each:
/// servers use either). Each byte is looked at once, whatever the chunks
/// (a scan position is kept; the lookback is at most three bytes), and an
/// event over the limit is discarded as it arrives, only its head kept.
pub(crate) struct Splitter {
    buf: Vec<u8>,
    /// Where the current, unfinished event starts in `buf`.
    start: usize,
    /// `buf` before this was searched for an event's end.
    scanned: usize,
    limit: usize,
    /// The current event is over the limit: its head, and how many of its
    /// bytes were discarded (they are not in `buf`).
    over: Option<(Vec<u8>, usize)>,
    /// Bytes looked at so far (for the linearity test).
    looked: usize,
}

impl Splitter {
    pub(crate) fn new(limit: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            limit,
            over: None,
            looked: 0,
        }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            // Events taken since the last chunk leave the buffer at once.
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next event whose end has arrived.
    pub(crate) fn next_event(&mut self) -> Option<Event> {
        let mut i = self.scanned.max(self.start);
        while i < self.buf.len() {
            self.looked += 1;
            if self.buf[i] == b'\n' {
                let sep = if i > self.start && self.buf[i - 1] == b'\n' {
                    2
                } else if i >= self.start + 3 && &self.buf[i - 3..i] == b"\r\n\r" {
                    4
                } else {
                    0
                };
                if sep > 0 {
                    let end = i + 1 - sep;
                    let event = match self.over.take() {
                        Some((head, dropped)) => Event::TooLarge {
                            head,
                            len: dropped + end - self.start,
                        },
                        None => Event::Whole(
                            String::from_utf8_lossy(&self.buf[self.start..end]).into_owned(),
                        ),
                    };
                    self.start = i + 1;
                    self.scanned = i + 1;
                    return Some(event);
                }
            }
            i += 1;
        }
        self.scanned = self.buf.len();
        let held = self.buf.len() - self.start;
        if self.over.is_none() && held > self.limit {
            let head = self.buf[self.start..self.start + held.min(HEAD)].to_vec();
            self.over = Some((head, 0));
        }
        if let Some((_, dropped)) = &mut self.over {
            // Keep only the last three bytes: an event end may straddle
            // chunks.
            let keep = self.buf.len().saturating_sub(3).max(self.start);
            *dropped += keep - self.start;
            self.buf.drain(..keep);
            self.start = 0;
            self.scanned = self.buf.len();
        }
        None
    }

    /// At the end of the body: the oversized event it ended in, if any.
    pub(crate) fn unfinished_oversized(&mut self) -> Option<Event> {
        let (head, dropped) = self.over.take()?;
        let len = dropped + self.buf.len() - self.start;
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        Some(Event::TooLarge { head, len })
    }

    pub(crate) fn rest(mut self) -> Vec<u8> {
        self.buf.drain(..self.start);
        self.buf
    }
}

/// The `data` of an oversized event's head, for finding the id of the
/// request it answers.
pub(crate) fn data_head(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    split_event(&text).0.unwrap_or_default().into_bytes()
}

/// Where the first event in `buf` ends, and the length of the blank line
/// that ends it (`\n\n` or `\r\n\r\n`: servers use either).
#[cfg(test)]
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let mut s = Splitter::new(usize::MAX);
    s.push(buf);
    match s.next_event()? {
        Event::Whole(text) => Some((text.len(), s.start - text.len())),
        Event::TooLarge { .. } => None,
    }
}

/// Whether a client's SSE parser could cut `event` into other lines or
/// events than [`split_event`] does: the SSE format ends a line at a CR, an
/// LF or a CRLF, so a CR not followed by an LF ends a line for the client
/// (and `\r\r` or `\n\r\n` ends an event), while this reader ends lines at
/// LF and CRLF only. Such an event is not passed on: a message the proxy
/// did not read as one could reach the client.
pub(crate) fn ambiguous_event(event: &str) -> bool {
    let bytes = event.as_bytes();
    let lone_cr = bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'\r' && bytes.get(i + 1) != Some(&b'\n'));
    lone_cr || event.lines().any(str::is_empty)
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
    fn events_a_client_would_cut_otherwise_are_ambiguous() {
        assert!(!ambiguous_event(
            "event: message\r\ndata: {\"a\":1}\r\nid: 7"
        ));
        assert!(!ambiguous_event("data: one\ndata: two"));
        // A lone CR ends a line for the client: a hidden data line.
        assert!(ambiguous_event("id: 1\rdata: {\"id\":5,\"result\":{}}"));
        // `\n\r\n` is a blank line for the client: two events.
        let mut s = Splitter::new(usize::MAX);
        s.push(b"data: {\"id\":1}\n\r\ndata: {\"id\":2}\n\n");
        let Some(Event::Whole(text)) = s.next_event() else {
            panic!("an event")
        };
        assert!(ambiguous_event(&text), "{text:?}");
        // CR-only line endings.
        assert!(ambiguous_event("data: x\r"));
    }

    #[test]
    fn events_split_on_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some((7, 2)));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some((7, 4)));
        assert_eq!(event_end(b"data: a\n"), None);
        assert_eq!(event_end(b"a\r\n\nb\n\n"), Some((2, 2)));
        let (data, other) = split_event("event: message\r\ndata: {\"a\":1}\r\nid: 7");
        assert_eq!(data.as_deref(), Some("{\"a\":1}"));
        assert_eq!(other, ["event: message", "id: 7"]);
    }

    fn whole(text: &str) -> Event {
        Event::Whole(text.into())
    }

    #[test]
    fn events_across_chunks_of_every_size() {
        let stream = b"data: one\n\nevent: message\r\ndata: two\r\n\r\ndata: three\n\ntail";
        for size in 1..stream.len() {
            let mut s = Splitter::new(1024);
            let mut got = Vec::new();
            for chunk in stream.chunks(size) {
                s.push(chunk);
                while let Some(e) = s.next_event() {
                    got.push(e);
                }
            }
            assert_eq!(
                got,
                [
                    whole("data: one"),
                    whole("event: message\r\ndata: two"),
                    whole("data: three")
                ],
                "chunks of {size}"
            );
            assert_eq!(s.rest(), b"tail", "chunks of {size}");
        }
    }

    /// One large event fed a byte at a time is scanned once: the bytes
    /// looked at grow with the input, not with its square.
    #[test]
    fn one_byte_chunks_are_scanned_once() {
        let n = 200_000;
        let mut event = b"data: ".to_vec();
        event.resize(n, b'x');
        event.extend_from_slice(b"\n\n");
        let mut s = Splitter::new(usize::MAX);
        let mut got = None;
        for b in &event {
            s.push(std::slice::from_ref(b));
            if let Some(e) = s.next_event() {
                got = Some(e);
            }
        }
        match got {
            Some(Event::Whole(text)) => assert_eq!(text.len(), n),
            other => panic!("expected the whole event, got {other:?}"),
        }
        assert!(
            s.looked <= event.len(),
            "{} bytes looked at for {} bytes of input",
            s.looked,
            event.len()
        );
    }

    /// An event over the limit is never held: its head is kept, its
    /// length counted, and the events after it still come whole.
    #[test]
    fn an_event_over_the_limit_is_discarded_as_it_arrives() {
        let mut big = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":\"".to_vec();
        big.resize(1_000_000, b'y');
        big.extend_from_slice(b"\"}\r\n\r\ndata: after\n\n");
        for size in [1, 7, 4096, 65536] {
            let mut s = Splitter::new(10_000);
            let mut got = Vec::new();
            let mut most = 0;
            for chunk in big.chunks(size) {
                s.push(chunk);
                while let Some(e) = s.next_event() {
                    got.push(e);
                }
                most = most.max(s.buf.capacity());
            }
            assert!(
                most <= 2 * (10_000 + size),
                "held {most} bytes (chunks of {size})"
            );
            assert_eq!(got.len(), 2, "chunks of {size}");
            let Event::TooLarge { head, len } = &got[0] else {
                panic!("{:?}", got[0]);
            };
            assert_eq!(*len, 1_000_002, "chunks of {size}");
            assert_eq!(head.len(), HEAD);
            assert_eq!(
                crate::proxy::jsonrpc::top_level_id(&data_head(head)).as_deref(),
                Some("7")
            );
            assert_eq!(got[1], whole("data: after"));
        }
    }

    #[test]
    fn a_body_that_ends_in_an_oversized_event_reports_it() {
        let mut s = Splitter::new(10);
        s.push(b"data: 0123456789abcdef");
        assert_eq!(s.next_event(), None);
        match s.unfinished_oversized() {
            Some(Event::TooLarge { len, .. }) => assert_eq!(len, 22),
            other => panic!("{other:?}"),
        }
    }
}
