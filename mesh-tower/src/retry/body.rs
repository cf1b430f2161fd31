//! Keeping a request body so every try can send it again.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use mesh_core::BoxError;

use crate::body::{self, Body};

/// The largest request body kept for replay (64 KiB); larger bodies are sent once, without
/// retries.
pub const MAX_REPLAY_BODY: usize = 64 * 1024;

/// A body read whole, sent again on every try.
#[derive(Clone, Debug, Default)]
pub(super) struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// A fresh body with the same bytes (and trailers).
    pub(super) fn body(&self) -> Body {
        match &self.trailers {
            None if self.data.is_empty() => body::empty(),
            None => body::full(self.data.clone()),
            Some(trailers) => body::boxed(ReplayBody {
                data: Some(self.data.clone()).filter(|d| !d.is_empty()),
                trailers: Some(trailers.clone()),
            }),
        }
    }
}

/// What [`prepare`] made of a request body.
pub(super) enum Prepared {
    /// Kept: every try sends [`Replay::body`].
    Replay(Replay),
    /// Too large or of unknown size: sent once.
    Once(Body),
}

/// Reads `body` whole if its size is known to be at most `limit` bytes (from the size hint,
/// else `content-length`); otherwise hands it back untouched. A body that turns out larger
/// than announced is handed back with the bytes read so far in front.
///
/// # Errors
/// The body's own error while it is read.
pub(super) async fn prepare(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Prepared, BoxError> {
    if body.is_end_stream() {
        return Ok(Prepared::Replay(Replay::default()));
    }
    let known = body.size_hint().upper().or_else(|| content_length(headers));
    if known.is_none_or(|n| n > limit as u64) {
        return Ok(Prepared::Once(body));
    }
    let mut body = body;
    let mut chunks = Vec::new();
    let mut len = 0usize;
    let mut trailers: Option<HeaderMap> = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                len += data.len();
                chunks.push(data);
                if len > limit {
                    let rest = PrefixedBody {
                        prefix: chunks.into(),
                        rest: body,
                    };
                    return Ok(Prepared::Once(body::boxed(rest)));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers.get_or_insert_default().extend(t);
                }
            }
        }
    }
    let data = match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(len);
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    };
    Ok(Prepared::Replay(Replay { data, trailers }))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Data, then trailers.
#[derive(Debug)]
struct ReplayBody {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl http_body::Body for ReplayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// Chunks already read, then the rest of the body.
struct PrefixedBody {
    prefix: VecDeque<Bytes>,
    rest: Body,
}

impl http_body::Body for PrefixedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(data) = self.prefix.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_empty() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.prefix.iter().map(|b| b.len() as u64).sum();
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(buffered));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(buffered));
        }
        hint
    }
}
