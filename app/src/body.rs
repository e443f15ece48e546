//! HTTP bodies: the response type (in-memory bytes or a file streamed from disk) and the
//! request-body side that turns HTTP frames into the plain chunks storage consumes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::store::ChunkSource;

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// What the service accepts as a request body: hyper's `Incoming` on a socket, any
/// in-memory body (`Full`, `Empty`) in in-process tests.
pub trait RequestBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + Unpin
    + 'static
{
}

impl<B> RequestBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + Unpin
        + 'static
{
}

/// A request body as data chunks; trailers are skipped.
pub struct BodyChunks<B>(pub B);

impl<B: RequestBody> ChunkSource for BodyChunks<B> {
    type Error = String;

    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.0.frame().await? {
                Err(e) => return Some(Err(e.into().to_string())),
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    Err(_trailers) => continue,
                },
            }
        }
    }
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

const CHUNK: usize = 64 * 1024;

/// Streams exactly `len` bytes of an open file so large documents never sit in memory.
/// Reads go through tokio's blocking pool (tokio::fs), never on the async threads.
pub struct FileBody {
    file: tokio::fs::File,
    remaining: u64,
}

impl FileBody {
    pub fn new(file: tokio::fs::File, len: u64) -> FileBody {
        FileBody {
            file,
            remaining: len,
        }
    }

    pub fn boxed(self) -> Body {
        BodyExt::boxed_unsync(self)
    }
}

impl hyper::body::Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = self.remaining.min(CHUNK as u64) as usize;
        let mut buf = vec![0u8; want];
        let mut read_buf = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.file).poll_read(cx, &mut read_buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = read_buf.filled().len();
                if n == 0 {
                    // Shorter than its metadata says: fail the response rather than send a short body.
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                self.remaining -= n as u64;
                buf.truncate(n);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
