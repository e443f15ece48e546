//! Pure: the request body as pingora hands it to the HTTP/1.1 upstream, piece by piece.
//!
//! Two rules keep the upstream's framing equal to the client's request:
//! - An empty last piece (an h2 body ended by an empty END_STREAM DATA frame) goes on as
//!   `None`. pingora's chunked writer would write it as a zero-size chunk, which is the
//!   last-chunk, and then end the body with a second one: the upstream parses that
//!   `0\r\n\r\n` as the next request on the connection.
//! - The piece that completes a declared Content-Length waits for the end of the stream.
//!   An h2 stream can still go wrong after its last byte (a refused trailer section, a
//!   reset): until END_STREAM the upstream must not hold a complete request. A chunked
//!   body needs no wait: its last-chunk is only written at the end.

use bytes::{Bytes, BytesMut};

#[derive(Debug, Default)]
pub struct BodyRelay {
    /// The request's Content-Length, read at the first piece.
    declared: Option<Option<u64>>,
    seen: u64,
    held: Option<Bytes>,
}

impl BodyRelay {
    /// What to pass on for `piece` (`end`: the client's body is complete). Before the end
    /// the answer is never `None` (pingora reads `None` as the end; an empty piece is
    /// skipped); at the end it is `None` or a non-empty piece.
    pub fn pass(
        &mut self,
        piece: Option<Bytes>,
        end: bool,
        declared: impl FnOnce() -> Option<u64>,
    ) -> Option<Bytes> {
        let piece = piece.filter(|b| !b.is_empty());
        if end {
            return join(self.held.take(), piece);
        }
        let Some(piece) = piece else {
            return Some(Bytes::new());
        };
        self.seen += piece.len() as u64;
        let declared = *self.declared.get_or_insert_with(declared);
        if declared.is_some_and(|d| self.seen >= d) {
            self.held = join(self.held.take(), Some(piece));
            return Some(Bytes::new());
        }
        Some(piece)
    }
}

fn join(a: Option<Bytes>, b: Option<Bytes>) -> Option<Bytes> {
    match (a, b) {
        (Some(a), Some(b)) => {
            let mut out = BytesMut::with_capacity(a.len() + b.len());
            out.extend_from_slice(&a);
            out.extend_from_slice(&b);
            Some(out.freeze())
        }
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each step: (piece, end) in, expected piece out (`None` = end of body for pingora).
    type Step = (Option<&'static str>, bool, Option<&'static str>);

    #[test]
    fn relay_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<u64>, &[Step])] = &[
            ("chunked, END_STREAM on the last DATA", None, &[
                (Some("ab"), false, Some("ab")), (Some("cd"), true, Some("cd"))]),
            ("chunked, END_STREAM on an empty DATA", None, &[
                (Some("ab"), false, Some("ab")), (Some(""), true, None)]),
            ("chunked, end as None", None, &[
                (Some("ab"), false, Some("ab")), (None, true, None)]),
            ("empty pieces before the end are skipped", None, &[
                (Some(""), false, Some("")), (Some("a"), false, Some("a")), (Some(""), true, None)]),
            ("length, END_STREAM on the last DATA: no wait", Some(4), &[
                (Some("ab"), false, Some("ab")), (Some("cd"), true, Some("cd"))]),
            ("length, last byte waits for END_STREAM", Some(4), &[
                (Some("ab"), false, Some("ab")), (Some("cd"), false, Some("")), (Some(""), true, Some("cd"))]),
            ("length, end as None releases", Some(2), &[
                (Some("ab"), false, Some("")), (None, true, Some("ab"))]),
            ("length, stream fails after the last byte: nothing completes", Some(2), &[
                (Some("ab"), false, Some(""))]),
            ("length, more than declared is held and joined", Some(2), &[
                (Some("ab"), false, Some("")), (Some("c"), false, Some("")), (Some("d"), true, Some("abcd"))]),
            ("length 0", Some(0), &[(None, true, None)]),
            ("no body", None, &[(None, true, None)]),
        ];
        for (name, declared, steps) in cases {
            let mut relay = BodyRelay::default();
            for (i, (piece, end, want)) in steps.iter().enumerate() {
                let got = relay.pass(
                    piece.map(|s| Bytes::from_static(s.as_bytes())),
                    *end,
                    || *declared,
                );
                let got = got.as_deref().map(|b| std::str::from_utf8(b).unwrap());
                assert_eq!(got, *want, "{name}, step {i}");
            }
        }
    }
}
