//! Stable finding codes.
//!
//! `IST…` codes mean what they mean in `istioctl analyze` (Istio's
//! `pkg/config/analysis/msg/messages.yaml`). `MESH…` codes are this mesh's own, for things
//! Istio has no code for (a field the mesh accepts but does not implement, a YAML syntax error,
//! a resource defined twice).

use std::fmt;

/// A finding code: its id (`IST0101`) and name (`ReferencedResourceNotFound`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Code {
    /// The stable id, e.g. `IST0101`.
    pub id: &'static str,
    /// The name, e.g. `ReferencedResourceNotFound`.
    pub name: &'static str,
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id)
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id)
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $konst:ident = $id:literal, $name:literal;)*) => {
        $( $(#[$doc])* pub const $konst: Code = Code { id: $id, name: $name }; )*
        /// Every code, for documentation and lookups.
        pub const ALL: &[Code] = &[$($konst),*];
    };
}

codes! {
    /// A field is deprecated (Istio's IST0002).
    DEPRECATED = "IST0002", "Deprecated";
    /// A referenced host, subset or gateway does not exist (Istio's IST0101).
    REFERENCED_RESOURCE_NOT_FOUND = "IST0101", "ReferencedResourceNotFound";
    /// The resource does not satisfy the schema (Istio's IST0106).
    SCHEMA_VALIDATION_ERROR = "IST0106", "SchemaValidationError";
    /// Several VirtualServices for the mesh gateway define the same host (Istio's IST0109).
    CONFLICTING_MESH_GATEWAY_VIRTUAL_SERVICE_HOSTS = "IST0109", "ConflictingMeshGatewayVirtualServiceHosts";
    /// A route to a service with several ports names no port (Istio's IST0112).
    VIRTUAL_SERVICE_DESTINATION_PORT_SELECTOR_REQUIRED = "IST0112", "VirtualServiceDestinationPortSelectorRequired";
    /// A DestinationRule and a PeerAuthentication disagree on mTLS (Istio's IST0113).
    MTLS_POLICY_CONFLICT = "IST0113", "MTLSPolicyConflict";
    /// A regular expression does not compile (Istio's IST0122).
    INVALID_REGEXP = "IST0122", "InvalidRegexp";
    /// A selector matches no workload (Istio's IST0127).
    NO_MATCHING_WORKLOADS_FOUND = "IST0127", "NoMatchingWorkloadsFound";
    /// A VirtualService rule can never be used (Istio's IST0130).
    VIRTUAL_SERVICE_UNREACHABLE_RULE = "IST0130", "VirtualServiceUnreachableRule";
    /// A match inside a rule can never be used (Istio's IST0131).
    VIRTUAL_SERVICE_INEFFECTIVE_MATCH = "IST0131", "VirtualServiceIneffectiveMatch";
    /// A VirtualService host is not served by its Gateway (Istio's IST0132).
    VIRTUAL_SERVICE_HOST_NOT_FOUND_IN_GATEWAY = "IST0132", "VirtualServiceHostNotFoundInGateway";
    /// The resource is accepted but probably wrong (Istio's IST0133).
    SCHEMA_WARNING = "IST0133", "SchemaWarning";
    /// A field is valid Istio but this mesh does not implement it; it is ignored.
    UNSUPPORTED_FIELD = "MESH0001", "UnsupportedField";
    /// The text is not valid YAML or JSON.
    SYNTAX_ERROR = "MESH0002", "SyntaxError";
    /// The document is not one of the Istio kinds the mesh reads; it is ignored.
    UNSUPPORTED_KIND = "MESH0003", "UnsupportedKind";
    /// The same kind/namespace/name is defined more than once.
    DUPLICATE_RESOURCE = "MESH0004", "DuplicateResource";
}
