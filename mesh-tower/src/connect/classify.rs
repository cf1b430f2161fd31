//! hyper's client errors, mapped to the mesh's (see the table in the module docs).

use std::error::Error as StdError;

use mesh_core::BoxError;

use crate::error::{UpstreamConnectFailure, UpstreamReset, cause_ref};

/// How h2 describes a `RST_STREAM(REFUSED_STREAM)` received from the peer
/// (`h2::Error`'s `Display`: "stream error received: " + `Reason::description`).
const H2_REFUSED_STREAM: &str =
    "stream error received: refused stream before processing any application logic";
/// How h2 describes a graceful `GOAWAY(NO_ERROR)` received from the peer, reported on the
/// streams it did not process (those above its last stream id). Debug data may follow.
const H2_REMOTE_GOAWAY_NO_ERROR: &str = "connection error received: not a result of an error";

/// A failure to establish a connection (connect, timeout, TLS handshake, HTTP handshake).
pub(super) fn connect_failure(source: BoxError, endpoint: &str) -> BoxError {
    UpstreamConnectFailure {
        endpoint: endpoint.to_owned(),
        source,
    }
    .into()
}

/// Maps an error sending a request on an established connection to [`UpstreamReset`] or,
/// for the errors that are not resets (a malformed response, the request body failing, an
/// unsupported request), the error itself. `reused`: the connection had carried a response
/// before (it was taken from the pool).
pub(super) fn classify(err: hyper::Error, endpoint: &str, reused: bool) -> BoxError {
    match reset_kind(&err, reused) {
        Some(refused) => UpstreamReset {
            endpoint: endpoint.to_owned(),
            refused,
            source: err.into(),
        }
        .into(),
        None => err.into(),
    }
}

/// `Some(refused)` if `err` means the upstream reset or closed the connection or stream
/// before answering; `None` for other errors.
fn reset_kind(h: &hyper::Error, reused: bool) -> Option<bool> {
    // The request went back unsent: the connection closed before hyper wrote it.
    if h.is_canceled() {
        return Some(true);
    }
    // EOF before the response was complete. On a connection that had carried a response
    // before, this is the keep-alive race (the server closed it as idle while the request
    // was on its way): refused. On a new connection the server accepted and then closed it
    // after the request was written: it may have seen the request.
    if h.is_incomplete_message() {
        return Some(reused);
    }
    // A user error (the request body failed) or a parse error is not a reset.
    if h.is_user() || h.is_parse() {
        return None;
    }
    if chain(h).any(|e| {
        let text = e.to_string();
        text == H2_REFUSED_STREAM || text.starts_with(H2_REMOTE_GOAWAY_NO_ERROR)
    }) {
        return Some(true);
    }
    // Any other HTTP/2 stream or connection error, or the socket failing, after the request
    // was handed to the connection.
    let h2 = h.to_string() == "http2 error";
    let io = cause_ref::<std::io::Error>(h).map(std::io::Error::kind);
    let reset = matches!(
        io,
        Some(
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        )
    );
    // The keep-alive race again, as a reset: a server that closed an idle HTTP/1.1
    // connection answers the request written into it with a TCP reset, and the client reads
    // `ECONNRESET` (or fails writing with `EPIPE`) where it would otherwise read the end of
    // the stream. Refused, as above.
    if reused && !h2 && reset {
        return Some(true);
    }
    let io = reset
        || matches!(
            io,
            Some(std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotConnected)
        );
    (h2 || io || h.is_closed()).then_some(false)
}

/// `err` and its sources.
fn chain<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| {
        let e: &'a (dyn StdError + 'static) = *e;
        e.source()
    })
}
