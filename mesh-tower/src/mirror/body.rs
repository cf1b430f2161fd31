//! Taking a copy of a request body that is already in memory, without waiting for it.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll, Waker},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use mesh_core::BoxError;

use crate::body::{self, Body};

/// A body's frames, read whole: what a mirrored copy replays.
#[derive(Clone, Debug, Default)]
pub(super) struct Buffered {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
}

/// Why a body could not be copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NotBuffered {
    /// More than the limit (from the size hint, or read so far).
    TooLarge,
    /// A frame was not ready at once: the body is streaming.
    Streaming,
    /// The body failed.
    Failed,
}

/// Reads the frames of `body` that are ready right now, without waiting (a no-op waker),
/// up to `limit` bytes of data.
///
/// Returns the body to forward, which yields exactly what `body` would have (frames read
/// here first, then the rest), and a copy of the whole body when it was all ready and within
/// `limit`.
pub(super) fn take_buffered(body: Body, limit: usize) -> (Body, Result<Buffered, NotBuffered>) {
    use http_body::Body as _;

    if body.is_end_stream() {
        return (body, Ok(Buffered::default()));
    }
    if body.size_hint().lower() > limit as u64 {
        return (body, Err(NotBuffered::TooLarge));
    }
    let mut body = body;
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = Buffered::default();
    let mut len = 0usize;
    let outcome = loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => break Ok(()),
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    len = len.saturating_add(data.len());
                    read.data.push_back(data);
                    if len > limit {
                        break Err((NotBuffered::TooLarge, None));
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        read.trailers = Some(trailers);
                    }
                }
            },
            Poll::Ready(Some(Err(e))) => break Err((NotBuffered::Failed, Some(e))),
            Poll::Pending => break Err((NotBuffered::Streaming, None)),
        }
        if body.is_end_stream() {
            break Ok(());
        }
    };
    match outcome {
        Ok(()) => {
            let forward = body::boxed(Replay::new(read.clone(), Rest::Done));
            (forward, Ok(read))
        }
        Err((why, error)) => {
            let rest = match error {
                Some(e) => Rest::Failed(Some(e)),
                None => Rest::Body(body),
            };
            (body::boxed(Replay::new(read, rest)), Err(why))
        }
    }
}

/// A copy of a buffered body.
pub(super) fn replay(buffered: Buffered) -> Body {
    if buffered.data.is_empty() && buffered.trailers.is_none() {
        return body::empty();
    }
    body::boxed(Replay::new(buffered, Rest::Done))
}

/// What follows the frames read ahead.
enum Rest {
    /// The rest of the original body.
    Body(Body),
    /// The error the original body failed with (yielded once).
    Failed(Option<BoxError>),
    /// Nothing.
    Done,
}

/// Frames read ahead, then the rest.
struct Replay {
    read: Buffered,
    rest: Rest,
}

impl Replay {
    fn new(read: Buffered, rest: Rest) -> Self {
        Self { read, rest }
    }
}

impl http_body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.read.data.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(trailers) = this.read.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        match &mut this.rest {
            Rest::Body(b) => Pin::new(b).poll_frame(cx),
            Rest::Failed(e) => Poll::Ready(e.take().map(Err)),
            Rest::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.read.data.is_empty()
            && self.read.trailers.is_none()
            && match &self.rest {
                Rest::Body(b) => b.is_end_stream(),
                Rest::Failed(e) => e.is_none(),
                Rest::Done => true,
            }
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self.read.data.iter().map(|d| d.len() as u64).sum();
        match &self.rest {
            Rest::Body(b) => SizeHint::with_exact(read) + b.size_hint(),
            Rest::Failed(_) | Rest::Done => SizeHint::with_exact(read),
        }
    }
}
