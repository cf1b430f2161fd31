//! What a try ended with, in the terms of [`mesh_core::policy::retry::Outcome`].

use http::Response;
use mesh_core::{BoxError, policy::retry::Outcome};

use crate::error::{PerTryTimeout, UpstreamConnectFailure, UpstreamReset, cause_ref};

/// The outcome of a try: its response, or the first failure recognized in the error's source
/// chain ([`PerTryTimeout`], [`UpstreamConnectFailure`], [`UpstreamReset`]); any other error
/// is [`Outcome::Other`].
pub(super) fn outcome<B>(result: &Result<Response<B>, BoxError>) -> Outcome<'_> {
    match result {
        Ok(res) => Outcome::Response {
            status: res.status(),
            headers: res.headers(),
        },
        Err(err) => {
            let err: &(dyn std::error::Error + 'static) = &**err;
            if cause_ref::<PerTryTimeout>(err).is_some() {
                Outcome::PerTryTimeout
            } else if cause_ref::<UpstreamConnectFailure>(err).is_some() {
                Outcome::ConnectFailure
            } else if let Some(reset) = cause_ref::<UpstreamReset>(err) {
                Outcome::Reset {
                    refused: reset.refused,
                }
            } else {
                Outcome::Other
            }
        }
    }
}
