//! `security.istio.io` resources: PeerAuthentication, AuthorizationPolicy, RequestAuthentication.

use serde::{Deserialize, Serialize};

use crate::validate::{Checker, Validate};

macro_rules! placeholder {
    ($($name:ident),*) => {$(
        #[doc = concat!("Istio's ", stringify!($name), " spec.")]
        #[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
        #[serde(deny_unknown_fields, rename_all = "camelCase")]
        pub struct $name {}
        impl Validate for $name {
            fn validate(&self, _cx: &mut Checker<'_>) {}
        }
    )*};
}
placeholder!(PeerAuthentication, AuthorizationPolicy, RequestAuthentication);
