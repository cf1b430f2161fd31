//! Istio's label values: the workload itself, the peers it talks to, and the metadata
//! exchange through the W3C `baggage` header.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use mesh_core::{identity::Identity, snapshot::Endpoint};

use crate::mesh::Workload;

/// What Istio reports for a missing value.
pub const UNKNOWN: &str = "unknown";

/// The cluster name Istio reports when none is configured (`CLUSTER_ID`'s default).
pub const DEFAULT_CLUSTER: &str = "Kubernetes";

/// Istio's canonical service label.
pub const CANONICAL_NAME_LABEL: &str = "service.istio.io/canonical-name";
/// Istio's canonical revision label.
pub const CANONICAL_REVISION_LABEL: &str = "service.istio.io/canonical-revision";
/// Istio's label naming the workload (what `source_workload`/`destination_workload` report)
/// when it is not the instance's own name: Kubernetes reports a pod's Deployment
/// (`reviews-v1`), not the pod (`reviews-v1-5c7b8`); a workload instance registered as
/// `reviews-v1-5c7b8` sets this label to `reviews-v1` to be reported as Istio would.
pub const WORKLOAD_NAME_LABEL: &str = "service.istio.io/workload-name";

/// Baggage keys of the metadata exchange (the ones Istio's ambient mode exchanges).
pub mod baggage_keys {
    /// The workload's namespace.
    pub const NAMESPACE: &str = "k8s.namespace.name";
    /// The workload's name.
    pub const WORKLOAD: &str = "k8s.deployment.name";
    /// The canonical service.
    pub const SERVICE: &str = "service.name";
    /// The canonical revision.
    pub const VERSION: &str = "service.version";
    /// The cluster.
    pub const CLUSTER: &str = "k8s.cluster.name";
}

/// The longest `baggage` header read (W3C's limit is 8192 bytes); longer ones are ignored.
pub const MAX_BAGGAGE_LEN: usize = 8192;

/// The workload a telemetry layer reports for: the source on the outbound side, the
/// destination on the inbound side.
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct LocalWorkload {
    /// The workload name (`reviews-v2`).
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// Its labels (`app`, `version`, `service.istio.io/canonical-name`, ...).
    pub labels: BTreeMap<String, String>,
    /// Its service account.
    pub service_account: String,
    /// The SPIFFE trust domain (`cluster.local`).
    pub trust_domain: String,
    /// The cluster domain suffix (`cluster.local`), for the service host.
    pub domain: String,
    /// The cluster name reported as `source_cluster`/`destination_cluster`.
    pub cluster: String,
}

impl LocalWorkload {
    /// The telemetry identity of a mesh [`Workload`], with Istio's defaults (trust domain and
    /// domain `cluster.local`, cluster `Kubernetes`).
    pub fn from_workload(w: &Workload) -> Self {
        Self {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            labels: w.labels.clone(),
            service_account: w.service_account.clone(),
            trust_domain: "cluster.local".to_owned(),
            domain: "cluster.local".to_owned(),
            cluster: DEFAULT_CLUSTER.to_owned(),
        }
    }

    /// Sets the trust domain.
    pub fn trust_domain(mut self, td: impl Into<String>) -> Self {
        self.trust_domain = td.into();
        self
    }

    /// Sets the cluster domain suffix.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = domain.into();
        self
    }

    /// Sets the cluster name.
    pub fn cluster(mut self, cluster: impl Into<String>) -> Self {
        self.cluster = cluster.into();
        self
    }

    /// The workload's SPIFFE id, `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        spiffe(&self.trust_domain, &self.namespace, &self.service_account)
    }

    /// The workload's labels as Istio reports them; `principal` only when the connection was
    /// mutual TLS.
    pub fn peer_labels(&self, mutual_tls: bool) -> PeerLabels {
        PeerLabels::from_workload_labels(
            Some(&self.name),
            Some(&self.namespace),
            &self.labels,
            mutual_tls.then(|| self.principal()),
            Some(&self.cluster),
        )
    }

    /// The service the workload backs: `<app>.<namespace>.svc.<domain>` for a workload with
    /// an `app` label (it is an endpoint of that service in this mesh), else `None`.
    pub fn service_host(&self) -> Option<String> {
        let app = self.labels.get("app")?;
        Some(format!("{app}.{}.svc.{}", self.namespace, self.domain))
    }

    /// The `baggage` header value the outbound side sends (metadata exchange).
    pub fn baggage(&self) -> String {
        let labels = self.peer_labels(false);
        let mut out = String::new();
        for (k, v) in [
            (baggage_keys::NAMESPACE, &*labels.namespace),
            (baggage_keys::WORKLOAD, &*labels.workload),
            (baggage_keys::SERVICE, &*labels.canonical_service),
            (baggage_keys::VERSION, &*labels.canonical_revision),
            (baggage_keys::CLUSTER, &*labels.cluster),
        ] {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            out.push('=');
            percent_encode(v, &mut out);
        }
        out
    }
}

fn spiffe(td: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{td}/ns/{ns}/sa/{sa}")
}

/// One side's labels: `<side>_workload`, `<side>_workload_namespace`, `<side>_principal`,
/// `<side>_app`, `<side>_version`, `<side>_canonical_service`, `<side>_canonical_revision`,
/// `<side>_cluster`. Missing values are `unknown`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerLabels {
    /// The workload name.
    pub workload: Arc<str>,
    /// Its namespace.
    pub namespace: Arc<str>,
    /// Its SPIFFE id, when the connection was mutual TLS.
    pub principal: Arc<str>,
    /// The `app` label.
    pub app: Arc<str>,
    /// The `version` label.
    pub version: Arc<str>,
    /// The canonical service.
    pub canonical_service: Arc<str>,
    /// The canonical revision.
    pub canonical_revision: Arc<str>,
    /// The cluster.
    pub cluster: Arc<str>,
}

fn or_unknown(v: Option<&str>) -> Arc<str> {
    Arc::from(v.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN))
}

impl PeerLabels {
    /// Every value `unknown`.
    pub fn unknown() -> Self {
        let u: Arc<str> = Arc::from(UNKNOWN);
        Self {
            workload: u.clone(),
            namespace: u.clone(),
            principal: u.clone(),
            app: u.clone(),
            version: u.clone(),
            canonical_service: u.clone(),
            canonical_revision: u.clone(),
            cluster: u,
        }
    }

    /// Labels from a workload's name, namespace and labels, with Istio's canonical service
    /// rules: `service.istio.io/canonical-name`, else `app.kubernetes.io/name`, else `app`,
    /// else the workload name; revision `service.istio.io/canonical-revision`, else
    /// `app.kubernetes.io/version`, else `version`, else `latest`.
    pub fn from_workload_labels(
        name: Option<&str>,
        namespace: Option<&str>,
        labels: &BTreeMap<String, String>,
        principal: Option<String>,
        cluster: Option<&str>,
    ) -> Self {
        let get = |k: &str| labels.get(k).map(String::as_str).filter(|v| !v.is_empty());
        let canonical_service = get(CANONICAL_NAME_LABEL)
            .or_else(|| get("app.kubernetes.io/name"))
            .or_else(|| get("app"))
            .or(name);
        let canonical_revision = get(CANONICAL_REVISION_LABEL)
            .or_else(|| get("app.kubernetes.io/version"))
            .or_else(|| get("version"))
            .or(Some("latest"));
        Self {
            workload: or_unknown(get(WORKLOAD_NAME_LABEL).or(name)),
            namespace: or_unknown(namespace),
            principal: or_unknown(principal.as_deref()),
            app: or_unknown(get("app")),
            version: or_unknown(get("version")),
            canonical_service: or_unknown(canonical_service),
            canonical_revision: or_unknown(canonical_revision),
            cluster: or_unknown(cluster),
        }
    }

    /// The destination labels of the endpoint the balancer picked (its WorkloadEntry's name,
    /// namespace, labels and service account); `principal` when the connection to it was
    /// mutual TLS.
    pub fn from_endpoint(
        ep: &Endpoint,
        trust_domain: &str,
        mutual_tls: bool,
        cluster: &str,
    ) -> Self {
        let name = ep.workload.as_ref().map(|k| k.name.as_str());
        Self::from_workload_labels(
            name,
            Some(&ep.namespace),
            &ep.labels,
            mutual_tls.then(|| spiffe(trust_domain, &ep.namespace, &ep.service_account)),
            Some(cluster),
        )
    }

    /// The source labels of an inbound request: from its verified identity and its baggage.
    ///
    /// A verified identity names the namespace and the principal. The baggage is a claim of
    /// the caller's: it is used only when it agrees with the identity's namespace (or when
    /// there is no identity, on plaintext, where everything about the caller is a claim).
    pub fn from_peer(identity: Option<&Identity>, baggage: Option<&Baggage>) -> Self {
        let baggage = match (identity, baggage) {
            (Some(id), Some(b)) if b.namespace.as_deref() != Some(id.namespace()) => None,
            (_, b) => b,
        };
        let b = |f: fn(&Baggage) -> Option<&str>| baggage.and_then(f);
        let namespace = identity
            .map(Identity::namespace)
            .or_else(|| b(|b| b.namespace.as_deref()));
        let service = b(|b| b.service.as_deref());
        let version = b(|b| b.version.as_deref());
        Self {
            workload: or_unknown(b(|b| b.workload.as_deref())),
            namespace: or_unknown(namespace),
            principal: match identity {
                Some(id) => Arc::from(id.to_string()),
                None => Arc::from(UNKNOWN),
            },
            app: or_unknown(service),
            version: or_unknown(version),
            canonical_service: or_unknown(service),
            canonical_revision: or_unknown(version),
            cluster: or_unknown(b(|b| b.cluster.as_deref())),
        }
    }
}

/// The service labels: `destination_service` (the host), `destination_service_name`,
/// `destination_service_namespace`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceLabels {
    /// The host (FQDN for mesh services).
    pub host: Arc<str>,
    /// The service name: the first label of `<name>.<ns>.svc.<domain>`, else the host.
    pub name: Arc<str>,
    /// The namespace of `<name>.<ns>.svc.<domain>`, else `unknown`.
    pub namespace: Arc<str>,
}

impl ServiceLabels {
    /// Splits `host` as Istio does for Kubernetes services.
    pub fn from_host(host: &str, domain: &str) -> Self {
        let suffix = format!(".svc.{domain}");
        let (name, namespace) = match host.strip_suffix(&suffix).and_then(|s| s.split_once('.')) {
            Some((name, ns)) if !name.is_empty() && !ns.is_empty() && !ns.contains('.') => {
                (name, ns)
            }
            _ => (host, UNKNOWN),
        };
        Self {
            host: or_unknown(Some(host)),
            name: or_unknown(Some(name)),
            namespace: Arc::from(namespace),
        }
    }
}

/// The metadata-exchange members of a `baggage` header.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Baggage {
    /// `k8s.namespace.name`.
    pub namespace: Option<String>,
    /// `k8s.deployment.name`.
    pub workload: Option<String>,
    /// `service.name`.
    pub service: Option<String>,
    /// `service.version`.
    pub version: Option<String>,
    /// `k8s.cluster.name`.
    pub cluster: Option<String>,
}

impl Baggage {
    /// Reads the metadata-exchange members of a W3C `baggage` header value
    /// (`key=value;property,key2=value2`, values percent-encoded). Other members, properties,
    /// malformed members, and values that are not UTF-8 after decoding are ignored; the first
    /// occurrence of a key wins; a value longer than [`MAX_BAGGAGE_LEN`] is ignored whole.
    /// Never fails.
    pub fn parse(value: &[u8]) -> Self {
        let mut out = Self::default();
        if value.len() > MAX_BAGGAGE_LEN {
            return out;
        }
        let Ok(text) = std::str::from_utf8(value) else {
            return out;
        };
        for member in text.split(',') {
            let member = member.split(';').next().unwrap_or_default();
            let Some((k, v)) = member.split_once('=') else {
                continue;
            };
            let slot = match k.trim() {
                baggage_keys::NAMESPACE => &mut out.namespace,
                baggage_keys::WORKLOAD => &mut out.workload,
                baggage_keys::SERVICE => &mut out.service,
                baggage_keys::VERSION => &mut out.version,
                baggage_keys::CLUSTER => &mut out.cluster,
                _ => continue,
            };
            if slot.is_some() {
                continue;
            }
            if let Some(v) = percent_decode(v.trim()).filter(|v| !v.is_empty()) {
                *slot = Some(v);
            }
        }
        out
    }
}

/// Percent-encodes what W3C baggage values may not hold verbatim.
fn percent_encode(v: &str, out: &mut String) {
    for b in v.bytes() {
        let plain = b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\' | b'%');
        if plain {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or a result that is not UTF-8.
fn percent_decode(v: &str) -> Option<String> {
    if !v.contains('%') {
        return Some(v.to_owned());
    }
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> LocalWorkload {
        LocalWorkload::from_workload(
            &Workload::new("reviews-v2", "bookinfo")
                .label("app", "reviews")
                .label("version", "v2")
                .service_account("bookinfo-reviews"),
        )
    }

    #[test]
    fn source_labels_follow_istio_canonical_rules() {
        let w = workload();
        let l = w.peer_labels(false);
        assert_eq!(&*l.workload, "reviews-v2");
        assert_eq!(&*l.namespace, "bookinfo");
        assert_eq!(&*l.principal, UNKNOWN);
        assert_eq!(&*l.app, "reviews");
        assert_eq!(&*l.canonical_service, "reviews");
        assert_eq!(&*l.canonical_revision, "v2");
        assert_eq!(&*l.cluster, DEFAULT_CLUSTER);
        assert_eq!(
            &*w.peer_labels(true).principal,
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
        );
        // Canonical labels win; without app/version: the workload name and `latest`.
        let bare = LocalWorkload::from_workload(&Workload::new("job-1", "ns"));
        let l = bare.peer_labels(false);
        assert_eq!((&*l.app, &*l.version), (UNKNOWN, UNKNOWN));
        assert_eq!(&*l.canonical_service, "job-1");
        assert_eq!(&*l.canonical_revision, "latest");
        let canon = LocalWorkload::from_workload(
            &Workload::new("x", "ns")
                .label("app", "a")
                .label(CANONICAL_NAME_LABEL, "canon")
                .label(CANONICAL_REVISION_LABEL, "r7"),
        );
        let l = canon.peer_labels(false);
        assert_eq!(
            (&*l.canonical_service, &*l.canonical_revision),
            ("canon", "r7")
        );
        assert_eq!(
            workload().service_host().as_deref(),
            Some("reviews.bookinfo.svc.cluster.local")
        );
        // An instance reports the workload it belongs to, as a pod reports its Deployment.
        let pod = LocalWorkload::from_workload(
            &Workload::new("reviews-v1-5c7b8", "ns").label(WORKLOAD_NAME_LABEL, "reviews-v1"),
        );
        assert_eq!(&*pod.peer_labels(false).workload, "reviews-v1");
    }

    #[test]
    fn destination_labels_come_from_the_endpoint() {
        let ep = Endpoint {
            address: "10.0.0.1".into(),
            ports: BTreeMap::new(),
            labels: [("app".to_owned(), "ratings".to_owned())].into(),
            service_account: "ratings-sa".into(),
            namespace: "bookinfo".into(),
            weight: 1,
            workload: Some(mesh_core::config::ResourceKey::new(
                mesh_core::config::Kind::WorkloadEntry,
                "bookinfo",
                "ratings-v1",
            )),
        };
        let l = PeerLabels::from_endpoint(&ep, "td", true, "c1");
        assert_eq!(&*l.workload, "ratings-v1");
        assert_eq!(&*l.principal, "spiffe://td/ns/bookinfo/sa/ratings-sa");
        assert_eq!(&*l.version, UNKNOWN);
        assert_eq!(&*l.canonical_revision, "latest");
        assert_eq!(&*l.cluster, "c1");
        let l = PeerLabels::from_endpoint(&ep, "td", false, "c1");
        assert_eq!(&*l.principal, UNKNOWN);
    }

    #[test]
    fn service_labels_split_kubernetes_hosts() {
        let s = ServiceLabels::from_host("reviews.bookinfo.svc.cluster.local", "cluster.local");
        assert_eq!((&*s.name, &*s.namespace), ("reviews", "bookinfo"));
        let s = ServiceLabels::from_host("httpbin.org", "cluster.local");
        assert_eq!(
            (&*s.host, &*s.name, &*s.namespace),
            ("httpbin.org", "httpbin.org", UNKNOWN)
        );
        let s = ServiceLabels::from_host("", "cluster.local");
        assert_eq!(&*s.host, UNKNOWN);
    }

    #[test]
    fn baggage_round_trips_and_parses_leniently() {
        let w = LocalWorkload::from_workload(
            &Workload::new("product page,v1", "default").label("app", "product;page"),
        );
        let header = w.baggage();
        assert!(!header.contains(' '), "{header}");
        let b = Baggage::parse(header.as_bytes());
        assert_eq!(b.workload.as_deref(), Some("product page,v1"));
        assert_eq!(b.service.as_deref(), Some("product;page"));
        assert_eq!(b.namespace.as_deref(), Some("default"));
        assert_eq!(b.version.as_deref(), Some("latest"));
        assert_eq!(b.cluster.as_deref(), Some(DEFAULT_CLUSTER));

        let b = Baggage::parse(
            b" k8s.namespace.name = ns ;p=1, other=x,service.name=a,service.name=b,k8s.deployment.name=%ZZ",
        );
        assert_eq!(b.namespace.as_deref(), Some("ns"));
        assert_eq!(b.service.as_deref(), Some("a"));
        assert_eq!(b.workload, None);
        for junk in [
            &b""[..],
            b",,,;;;===",
            b"%",
            b"service.name=%",
            b"service.name=%C3",
            b"\xff\xfe",
            b"k8s.namespace.name",
        ] {
            assert_eq!(Baggage::parse(junk).service, None);
        }
        let long = vec![b'a'; MAX_BAGGAGE_LEN + 1];
        assert_eq!(Baggage::parse(&long), Baggage::default());
    }

    proptest::proptest! {
        #[test]
        fn baggage_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = Baggage::parse(&bytes);
        }

        #[test]
        fn baggage_near_misses_never_panic(text in "[a-z.=,;% 0-9A-F]{0,80}") {
            let _ = Baggage::parse(text.as_bytes());
        }
    }

    #[test]
    fn verified_identity_beats_baggage() {
        let id: Identity = "spiffe://cluster.local/ns/prod/sa/web".parse().unwrap();
        let honest = Baggage::parse(b"k8s.namespace.name=prod,k8s.deployment.name=web-v1");
        let l = PeerLabels::from_peer(Some(&id), Some(&honest));
        assert_eq!((&*l.workload, &*l.namespace), ("web-v1", "prod"));
        assert_eq!(&*l.principal, "spiffe://cluster.local/ns/prod/sa/web");
        let lying = Baggage::parse(b"k8s.namespace.name=admin,k8s.deployment.name=root");
        let l = PeerLabels::from_peer(Some(&id), Some(&lying));
        assert_eq!((&*l.workload, &*l.namespace), (UNKNOWN, "prod"));
        let l = PeerLabels::from_peer(None, Some(&lying));
        assert_eq!(
            (&*l.workload, &*l.namespace, &*l.principal),
            ("root", "admin", UNKNOWN)
        );
        assert_eq!(PeerLabels::from_peer(None, None), PeerLabels::unknown());
    }
}
