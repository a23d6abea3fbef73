//! Reading an upstream's JSON answer without holding more of it than
//! `--max-response-bytes`: the HTTP proxy and the bridge read answers the
//! way the stdio transport reads server lines.

use crate::proxy::sse::HEAD;
use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::Body;

/// A body read with a limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bounded {
    /// The whole body, at most the limit.
    Whole(Vec<u8>),
    /// A body over the limit: its first [`HEAD`] bytes and its length; the
    /// rest was read and discarded.
    TooLarge { head: Vec<u8>, len: usize },
}

/// Reads `body` to its end, keeping at most `limit` bytes: past the limit
/// only the head is kept and the rest is counted and dropped.
pub(crate) async fn collect_bounded<B>(mut body: B, limit: usize) -> Result<Bounded, B::Error>
where
    B: Body + Unpin,
{
    let mut kept: Vec<u8> = Vec::new();
    let mut over: Option<(Vec<u8>, usize)> = None;
    while let Some(frame) = body.frame().await {
        let Ok(mut data) = frame?.into_data() else {
            continue;
        };
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            match &mut over {
                Some((_, len)) => *len += n,
                None if kept.len() + n > limit => {
                    let mut head = std::mem::take(&mut kept);
                    let len = head.len() + n;
                    head.truncate(HEAD);
                    head.extend_from_slice(&chunk[..n.min(HEAD - head.len())]);
                    over = Some((head, len));
                }
                None => kept.extend_from_slice(chunk),
            }
            data.advance(n);
        }
    }
    Ok(match over {
        Some((head, len)) => Bounded::TooLarge { head, len },
        None => Bounded::Whole(kept),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn read(chunks: &[&'static [u8]], limit: usize) -> Bounded {
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        let body = StreamBody::new(futures::stream::iter(frames));
        futures::executor::block_on(collect_bounded(body, limit)).unwrap()
    }

    #[test]
    fn at_most_the_limit_is_kept() {
        assert_eq!(
            read(&[b"abc", b"def"], 6),
            Bounded::Whole(b"abcdef".to_vec())
        );
        assert_eq!(
            read(&[b"abc", b"defg", b"hi"], 6),
            Bounded::TooLarge {
                head: b"abcdefg".to_vec(),
                len: 9
            }
        );
        let big: &'static [u8] = Box::leak(vec![b'x'; 3 * HEAD].into_boxed_slice());
        match read(&[b"{", big, big], 10) {
            Bounded::TooLarge { head, len } => {
                assert_eq!(head.len(), HEAD);
                assert_eq!(len, 1 + 6 * HEAD);
            }
            other => panic!("{other:?}"),
        }
    }
}
