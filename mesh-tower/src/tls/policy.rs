//! What the configuration asks of a connection: PeerAuthentication for inbound connections,
//! DestinationRule `trafficPolicy.tls` and auto-mTLS for outbound ones.

use std::{collections::BTreeMap, sync::Arc};

use http::uri::Authority;
use mesh_core::{
    config::{
        Spec,
        networking::destination_rule::{ClientTlsMode, ClientTlsSettings, TrafficPolicy},
        security::peer_authentication::MtlsMode,
    },
    identity::Identity,
    policy::peer_authn,
    snapshot::{Endpoint, Service, Snapshot},
};

use super::{ExpectedIdentities, InboundMode, Originate, UpstreamTls};

/// The endpoint label that marks a workload served by a mesh with mutual TLS (Istio's
/// sidecar injector puts it on every injected pod; auto-mTLS keys on it).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// The value of [`TLS_MODE_LABEL`] for mesh workloads with a certificate.
pub const TLS_MODE_ISTIO: &str = "istio";

/// The PeerAuthentication mode of a workload in `namespace` with `labels` on `port`, with
/// Istio's precedence (mesh, namespace, workload; `portLevelMtls` overrides; `UNSET` at
/// every level means PERMISSIVE).
pub fn inbound_mode(
    snapshot: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    port: u16,
) -> InboundMode {
    peer_authn::compose(
        snapshot.resources(),
        &snapshot.settings().root_namespace,
        namespace,
        labels,
    )
    .mode_for_port(port)
    .into()
}

/// What a connection to `authority` (an endpoint's `address:port`, as the balancer puts it
/// into the URI) uses, from the registry and policies in `snapshot`:
///
/// 1. The endpoints registered at that address and port, in every service that has them.
/// 2. The identities they may present (secure naming): each endpoint's service account,
///    `spiffe://<trust-domain>/ns/<ns>/sa/<sa>`, plus the `subjectAltNames` of the
///    ServiceEntries that declare their services.
/// 3. A DestinationRule with `tls` for one of those services (subset-level when the
///    endpoint belongs to a subset with its own `tls`, port-level for the port) decides:
///    `DISABLE` is plaintext, `ISTIO_MUTUAL` mutual TLS with the identities of step 2 (or
///    the rule's own `subjectAltNames`), `SIMPLE` and `MUTUAL` originate TLS
///    ([`UpstreamTls::Originate`], the server name being `sni` or the service's host;
///    `credentialName` is refused with [`UpstreamTls::Refuse`]).
/// 4. Without one, auto-mTLS as Istio does it: mutual TLS when an endpoint carries
///    [`TLS_MODE_LABEL`]` = istio` (a workload whose mesh has an identity registers with
///    it) and its PeerAuthentication does not DISABLE mTLS on that port; plaintext
///    otherwise.
///
/// An address that is no registered endpoint but the host of a service (a ServiceEntry with
/// `resolution: DNS` and no endpoints, connected to by name) follows that service's
/// DestinationRule `tls` (rule- or port-level) the same way; any other address is
/// plaintext.
///
/// Services are looked at in host order, so the result does not depend on hash order.
pub fn upstream_tls(snapshot: &Snapshot, authority: &Authority) -> UpstreamTls {
    let Some(port) = authority.port_u16() else {
        return UpstreamTls::Plaintext;
    };
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let mut matches: Vec<(&Arc<Service>, &Arc<Endpoint>)> = snapshot
        .services()
        .flat_map(|svc| svc.endpoints.iter().map(move |ep| (svc, ep)))
        .filter(|(svc, ep)| ep.address == host && serves_port(svc, ep, port))
        .collect();
    if matches.is_empty() {
        // Not a registered endpoint: a service reached by its own name (a DNS ServiceEntry
        // without endpoints, an external host) follows its DestinationRule, if any.
        return match snapshot.service(host) {
            Some(svc) => match host_tls(snapshot, svc, port) {
                Some(tls) => explicit_tls(&tls, &svc.host, || {
                    expected_identities(snapshot, &[], Some(svc))
                }),
                None => UpstreamTls::Plaintext,
            },
            None => UpstreamTls::Plaintext,
        };
    }
    matches.sort_by(|a, b| a.0.host.cmp(&b.0.host));

    let explicit = matches.iter().find_map(|(svc, ep)| {
        destination_tls(snapshot, svc, ep, port).map(|tls| (tls, svc.host.as_str()))
    });
    let expected = || expected_identities(snapshot, &matches, None);
    match explicit {
        Some((tls, host)) => explicit_tls(&tls, host, expected),
        None => {
            let auto = matches.iter().any(|(_, ep)| {
                ep.labels.get(TLS_MODE_LABEL).map(String::as_str) == Some(TLS_MODE_ISTIO)
                    && peer_authn::compose(
                        snapshot.resources(),
                        &snapshot.settings().root_namespace,
                        &ep.namespace,
                        &ep.labels,
                    )
                    .mode_for_port(port)
                        != MtlsMode::Disable
            });
            if auto {
                UpstreamTls::Mutual(expected())
            } else {
                UpstreamTls::Plaintext
            }
        }
    }
}

/// What a DestinationRule's `tls` asks for a destination whose host is `host`.
fn explicit_tls(
    tls: &ClientTlsSettings,
    host: &str,
    expected: impl FnOnce() -> ExpectedIdentities,
) -> UpstreamTls {
    match tls.mode.unwrap_or(ClientTlsMode::Disable) {
        ClientTlsMode::Disable => UpstreamTls::Plaintext,
        ClientTlsMode::IstioMutual => {
            let sans: Vec<Identity> = tls
                .subject_alt_names
                .iter()
                .filter_map(|san| san.parse().ok())
                .collect();
            if sans.is_empty() {
                UpstreamTls::Mutual(expected())
            } else {
                UpstreamTls::Mutual(ExpectedIdentities::one_of(sans))
            }
        }
        ClientTlsMode::Simple | ClientTlsMode::Mutual => {
            match Originate::from_settings(tls, host) {
                Ok(originate) => UpstreamTls::Originate(Arc::new(originate)),
                Err(reason) => UpstreamTls::Refuse(Arc::from(reason)),
            }
        }
    }
}

/// The DestinationRule `tls` settings for `svc` reached by its name at `port` (no endpoint,
/// so no subset): port-level settings for the port, else the rule's.
fn host_tls(snapshot: &Snapshot, svc: &Service, port: u16) -> Option<ClientTlsSettings> {
    let rule = snapshot.destination_policy(&svc.host)?;
    let policy = rule.effective(None)?;
    let p = u32::from(port);
    let ports: Vec<u32> = svc
        .ports
        .iter()
        .filter(|sp| sp.number == p || sp.target_port == Some(p))
        .map(|sp| sp.number)
        .chain([p])
        .collect();
    let port_level = policy.port_level_settings.iter().find(|s| {
        s.port
            .as_ref()
            .is_some_and(|sel| ports.contains(&sel.number))
    });
    match port_level {
        Some(s) if s.tls.is_some() => s.tls.clone(),
        _ => policy.tls,
    }
}

/// True if connecting to `port` of `ep` is how `svc` reaches it: one of the endpoint's
/// ports, the port a service port maps to, or any port when neither lists ports.
fn serves_port(svc: &Service, ep: &Endpoint, port: u16) -> bool {
    let p = u32::from(port);
    if ep.ports.values().any(|v| *v == p) {
        return true;
    }
    if svc.ports.is_empty() {
        return ep.ports.is_empty();
    }
    svc.ports.iter().any(|sp| {
        u16::try_from(sp.number).is_ok_and(|n| {
            ep.port_for(
                n,
                Some(sp.name.as_str()).filter(|s| !s.is_empty()),
                sp.target_port,
            ) == port
        })
    })
}

/// The service ports of `svc` that reach `port` on `ep` (the port itself when none does).
fn service_ports(svc: &Service, ep: &Endpoint, port: u16) -> Vec<u32> {
    let mut out: Vec<u32> = svc
        .ports
        .iter()
        .filter(|sp| {
            u16::try_from(sp.number).is_ok_and(|n| {
                ep.port_for(
                    n,
                    Some(sp.name.as_str()).filter(|s| !s.is_empty()),
                    sp.target_port,
                ) == port
            })
        })
        .map(|sp| sp.number)
        .collect();
    if out.is_empty() {
        out.push(u32::from(port));
    }
    out
}

/// The DestinationRule `tls` settings for a connection to `ep` of `svc`: the subset's policy
/// when the endpoint belongs to a subset with a `tls` of its own (the first by name),
/// port-level settings for the port (which replace the rule's), else the rule's.
fn destination_tls(
    snapshot: &Snapshot,
    svc: &Service,
    ep: &Endpoint,
    port: u16,
) -> Option<ClientTlsSettings> {
    let rule = snapshot.destination_policy(&svc.host)?;
    let has_tls = |p: &TrafficPolicy| {
        p.tls.is_some() || p.port_level_settings.iter().any(|s| s.tls.is_some())
    };
    let subset = rule
        .subsets
        .iter()
        .filter(|(_, s)| {
            s.traffic_policy.as_ref().is_some_and(has_tls)
                && s.labels.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
        })
        .map(|(name, _)| name.as_str())
        .min();
    let policy = rule.effective(subset)?;
    let ports = service_ports(svc, ep, port);
    let port_level = policy
        .port_level_settings
        .iter()
        .find(|s| s.port.as_ref().is_some_and(|p| ports.contains(&p.number)));
    match port_level {
        // Port-level settings replace the rule's, field by field as configured.
        Some(s) if s.tls.is_some() => s.tls.clone(),
        _ => policy.tls,
    }
}

/// The identities the endpoints in `matches` may present.
fn expected_identities(
    snapshot: &Snapshot,
    matches: &[(&Arc<Service>, &Arc<Endpoint>)],
    service: Option<&Arc<Service>>,
) -> ExpectedIdentities {
    let trust_domain = &snapshot.settings().trust_domain;
    let mut ids: Vec<Identity> = Vec::new();
    let services = matches.iter().map(|(svc, ep)| (*svc, Some(*ep)));
    for (svc, ep) in services.chain(service.map(|svc| (svc, None))) {
        if let Some(ep) = ep {
            match Identity::new(trust_domain.as_str(), &ep.namespace, &ep.service_account) {
                Ok(id) => ids.push(id),
                Err(e) => {
                    tracing::debug!(error = %e, endpoint = %ep.address, "no identity for endpoint")
                }
            }
        }
        let Some(key) = &svc.declared_by else {
            continue;
        };
        let declared = snapshot.resources().iter().find(|r| {
            r.metadata.name == key.name
                && r.namespace() == key.namespace
                && matches!(r.spec, Spec::ServiceEntry(_))
        });
        if let Some(Spec::ServiceEntry(se)) = declared.map(|r| &r.spec) {
            ids.extend(se.subject_alt_names.iter().filter_map(|s| s.parse().ok()));
        }
    }
    ExpectedIdentities::one_of(ids)
}
