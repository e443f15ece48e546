//! Pure h2 frame watcher: reads the client's decrypted byte stream frame header by frame
//! header (payloads skipped) and flags the floods the h2 codec does not cap per connection:
//! RST_STREAM (rapid reset), PING/SETTINGS, CONTINUATION. It refuses request trailers (see
//! `Violation::RequestTrailers`) and says since when a header block has been open, for the
//! per-stream header deadline.

use std::time::{Duration, Instant};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    RapidReset,
    ControlFlood,
    ContinuationFlood,
    /// A HEADERS frame on a stream the client already opened: a trailer section (or a
    /// frame on a closed stream). The h2 codec drops a trailer's pseudo-header fields
    /// unseen and pingora cannot forward request trailers to an HTTP/1.1 upstream, so a
    /// trailer section is refused whole, as nginx does: the read that carries it never
    /// reaches the codec, and the stream's body never completes at the upstream.
    RequestTrailers,
}

impl Violation {
    /// The `reason` label of `gateway_h2_connections_closed_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Violation::RapidReset => "rapid_reset",
            Violation::ControlFlood => "control_flood",
            Violation::ContinuationFlood => "continuation_flood",
            Violation::RequestTrailers => "request_trailers",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    pub max_resets: u32,
    pub max_control: u32,
    pub max_continuations: u32,
    pub window: Duration,
}

#[derive(Debug)]
pub struct FrameWatch {
    limits: FrameLimits,
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    /// The frame being read ends a header block.
    ends_block: bool,
    continuations: u32,
    window_start: Option<Instant>,
    resets: u32,
    control: u32,
    /// When the open header block's first frame header arrived.
    block_since: Option<Instant>,
    /// The highest stream id a HEADERS frame opened (client streams only go up).
    last_stream: u32,
}

impl FrameWatch {
    pub fn new(limits: FrameLimits) -> FrameWatch {
        FrameWatch {
            limits,
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            ends_block: false,
            continuations: 0,
            window_start: None,
            resets: 0,
            control: 0,
            block_since: None,
            last_stream: 0,
        }
    }

    /// Since when a header block (HEADERS .. END_HEADERS) has been arriving, if one is.
    pub fn header_block_since(&self) -> Option<Instant> {
        self.block_since
    }

    /// Feeds bytes the client sent, in order. The first violation sticks: the caller closes.
    pub fn feed(&mut self, mut bytes: &[u8], now: Instant) -> Result<(), Violation> {
        let skip = self.preface_left.min(bytes.len());
        self.preface_left -= skip;
        bytes = &bytes[skip..];
        while !bytes.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
                if self.payload_left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&bytes[..n]);
            self.header_len += n;
            bytes = &bytes[n..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                self.frame_header(now)?;
            }
        }
        Ok(())
    }

    fn frame_header(&mut self, now: Instant) -> Result<(), Violation> {
        let h = self.header;
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let (kind, flags) = (h[3], h[4]);
        self.ends_block = false;
        match kind {
            HEADERS => {
                let stream = u32::from_be_bytes([h[5] & 0x7f, h[6], h[7], h[8]]);
                if stream <= self.last_stream {
                    return Err(Violation::RequestTrailers);
                }
                self.last_stream = stream;
                self.block_since.get_or_insert(now);
                self.continuations = 0;
                self.ends_block = flags & END_HEADERS != 0;
            }
            CONTINUATION => {
                self.continuations += 1;
                if self.continuations > self.limits.max_continuations {
                    return Err(Violation::ContinuationFlood);
                }
                self.ends_block = flags & END_HEADERS != 0;
            }
            RST_STREAM => {
                self.roll_window(now);
                self.resets += 1;
                if self.resets > self.limits.max_resets {
                    return Err(Violation::RapidReset);
                }
            }
            PING | SETTINGS if flags & ACK == 0 => {
                self.roll_window(now);
                self.control += 1;
                if self.control > self.limits.max_control {
                    return Err(Violation::ControlFlood);
                }
            }
            _ => {}
        }
        self.payload_left = len;
        if len == 0 {
            self.frame_done();
        }
        Ok(())
    }

    fn frame_done(&mut self) {
        if self.ends_block {
            self.block_since = None;
            self.ends_block = false;
        }
    }

    fn roll_window(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        if now.duration_since(start) >= self.limits.window {
            self.window_start = Some(now);
            self.resets = 0;
            self.control = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let l = (payload as u32).to_be_bytes();
        let mut f = vec![l[1], l[2], l[3], kind, flags, 0, 0, 0, 1];
        f.resize(FRAME_HEADER_LEN + payload, 0xAA);
        f
    }

    fn limits() -> FrameLimits {
        FrameLimits {
            max_resets: 3,
            max_control: 2,
            max_continuations: 2,
            window: Duration::from_secs(10),
        }
    }

    fn repeat(f: &[u8], n: usize) -> Vec<u8> {
        f.repeat(n)
    }

    /// `f` on stream `id`.
    fn on(id: u32, mut f: Vec<u8>) -> Vec<u8> {
        f[5..9].copy_from_slice(&id.to_be_bytes());
        f
    }

    /// `n` copies of `group`, each starting (its first frame) on a new client stream.
    fn streams(group: &[u8], n: u32) -> Vec<u8> {
        (0..n).flat_map(|i| on(2 * i + 1, group.to_vec())).collect()
    }

    #[test]
    fn table_of_streams() {
        let headers_end = frame(HEADERS, END_HEADERS, 20);
        let rst = frame(RST_STREAM, 0, 4);
        let ping = frame(PING, 0, 8);
        let ping_ack = frame(PING, ACK, 8);
        let settings = frame(SETTINGS, 0, 6);
        let cont = frame(CONTINUATION, 0, 10);
        let data = frame(0x0, 0, 100);
        let cases: Vec<(&str, Vec<u8>, Result<(), Violation>)> = vec![
            ("preface only", PREFACE.to_vec(), Ok(())),
            (
                "normal requests",
                [PREFACE, &streams(&headers_end, 50), &data].concat(),
                Ok(()),
            ),
            (
                "3 resets ok",
                [
                    PREFACE,
                    &streams(&[headers_end.clone(), rst.clone()].concat(), 3),
                ]
                .concat(),
                Ok(()),
            ),
            (
                "4th reset",
                [
                    PREFACE,
                    &streams(&[headers_end.clone(), rst.clone()].concat(), 4),
                ]
                .concat(),
                Err(Violation::RapidReset),
            ),
            (
                "ping flood",
                [PREFACE, &repeat(&ping, 3)].concat(),
                Err(Violation::ControlFlood),
            ),
            (
                "ping + settings",
                [PREFACE, &ping, &settings, &settings].concat(),
                Err(Violation::ControlFlood),
            ),
            (
                "acks are free",
                [PREFACE, &repeat(&ping_ack, 100)].concat(),
                Ok(()),
            ),
            (
                "2 continuations ok",
                [
                    PREFACE,
                    &frame(HEADERS, 0, 5),
                    &cont,
                    &frame(CONTINUATION, END_HEADERS, 5),
                ]
                .concat(),
                Ok(()),
            ),
            (
                "3 continuations",
                [
                    PREFACE,
                    &frame(HEADERS, 0, 5),
                    &cont,
                    &cont,
                    &frame(CONTINUATION, END_HEADERS, 5),
                ]
                .concat(),
                Err(Violation::ContinuationFlood),
            ),
            (
                "continuation flood",
                [PREFACE, &frame(HEADERS, 0, 5), &repeat(&cont, 1000)].concat(),
                Err(Violation::ContinuationFlood),
            ),
            (
                "budget per block",
                [
                    PREFACE,
                    &streams(
                        &[
                            frame(HEADERS, 0, 5),
                            cont.clone(),
                            frame(CONTINUATION, END_HEADERS, 1),
                        ]
                        .concat(),
                        5,
                    ),
                ]
                .concat(),
                Ok(()),
            ),
            // A big DATA payload whose bytes look like RST_STREAM headers is skipped, not parsed.
            (
                "payload not parsed",
                [PREFACE, &frame(0x0, 0, 900)[..9], &repeat(&rst, 60)].concat(),
                Ok(()),
            ),
            // A second HEADERS on an open stream is a trailer section; on an older stream
            // too (closed or not, it is never a new request).
            (
                "trailers",
                [
                    PREFACE,
                    &headers_end,
                    &data,
                    &frame(HEADERS, END_HEADERS, 4),
                ]
                .concat(),
                Err(Violation::RequestTrailers),
            ),
            (
                "headers on an older stream",
                [
                    PREFACE,
                    &on(5, headers_end.clone()),
                    &on(3, headers_end.clone()),
                ]
                .concat(),
                Err(Violation::RequestTrailers),
            ),
            (
                "stream 0",
                [PREFACE, &on(0, headers_end.clone())].concat(),
                Err(Violation::RequestTrailers),
            ),
            (
                "data on open streams interleaved",
                [
                    PREFACE,
                    &on(1, headers_end.clone()),
                    &on(3, headers_end.clone()),
                    &data,
                    &on(3, data.clone()),
                ]
                .concat(),
                Ok(()),
            ),
        ];
        for (name, bytes, want) in cases {
            let now = Instant::now();
            let mut w = FrameWatch::new(limits());
            assert_eq!(w.feed(&bytes, now), want, "{name}, whole");
            // Byte by byte gives the same answer.
            let mut w = FrameWatch::new(limits());
            let got = bytes
                .iter()
                .try_for_each(|b| w.feed(std::slice::from_ref(b), now));
            assert_eq!(got, want, "{name}, byte by byte");
        }
    }

    #[test]
    fn window_refills_budgets() {
        let t0 = Instant::now();
        let mut w = FrameWatch::new(limits());
        w.feed(PREFACE, t0).unwrap();
        let rst = frame(RST_STREAM, 0, 4);
        for _ in 0..3 {
            w.feed(&rst, t0).unwrap();
        }
        w.feed(&rst, t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(
            w.feed(&repeat(&rst, 3), t0 + Duration::from_secs(11)),
            Err(Violation::RapidReset)
        );
    }

    #[test]
    fn header_block_open_until_end_headers() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut w = FrameWatch::new(limits());
        w.feed(PREFACE, t0).unwrap();
        assert_eq!(w.header_block_since(), None);
        let h = frame(HEADERS, END_HEADERS, 30);
        // Header frame in, payload trickling: open since its header.
        w.feed(&h[..12], t0).unwrap();
        assert_eq!(w.header_block_since(), Some(t0));
        w.feed(&h[12..], t1).unwrap();
        assert_eq!(w.header_block_since(), None, "END_HEADERS frame complete");
        w.feed(&on(3, frame(HEADERS, 0, 3)), t1).unwrap();
        w.feed(&frame(CONTINUATION, 0, 3), t1 + Duration::from_secs(5))
            .unwrap();
        assert_eq!(
            w.header_block_since(),
            Some(t1),
            "continuations don't restart the clock"
        );
        w.feed(&frame(CONTINUATION, END_HEADERS, 0), t1).unwrap();
        assert_eq!(w.header_block_since(), None);
    }
}
