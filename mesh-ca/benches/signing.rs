//! Signings per second: `CertificateAuthority::sign` in process, and
//! `IstioCertificateService/CreateCertificate` over gRPC + TLS on loopback (one persistent
//! HTTP/2 connection, 1 and 16 calls in flight), server and client in this process.
//!
//! `cargo bench -p mesh-ca --bench signing`; criterion reports `thrpt` in signings/s
//! (elements/s). Issue #5's target: at least 2,000/s over gRPC on 2 cores.
//!
//! The CSR (ECDSA P-256) is made once; every signing verifies its signature, builds and
//! signs a certificate with the intermediate's P-256 key and returns the 3-element chain.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mesh_ca::{
    CaOptions, Cacerts, CertificateAuthority, RootCa, csr,
    grpc::{
        IstioCertificateRequest, istio_certificate_service_client::IstioCertificateServiceClient,
    },
    identity::Identity,
    key::{KeyAlgorithm, KeyPair},
    server::{CaServer, ServerOptions},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const TTL: Duration = Duration::from_secs(3600);

fn ca() -> Arc<CertificateAuthority> {
    let p256 = || KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let root = RootCa::generate(&p256(), &CaOptions::root()).expect("root");
    let cacerts =
        Cacerts::intermediate(&root, &p256(), &CaOptions::intermediate("bench")).expect("ca");
    Arc::new(CertificateAuthority::new(&cacerts).expect("ca"))
}

fn signing(c: &mut Criterion) {
    let ca = ca();
    let id: Identity = "spiffe://cluster.local/ns/default/sa/bench"
        .parse()
        .expect("id");
    let key = KeyPair::generate(KeyAlgorithm::EcdsaP256).expect("key");
    let csr = csr::generate(&id, &key).expect("csr");

    let mut group = c.benchmark_group("mesh-ca signing");
    group.throughput(Throughput::Elements(1));
    group.bench_function("in-process sign", |b| {
        b.iter(|| black_box(ca.sign(&csr, &id, TTL).expect("sign")));
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, stop) = runtime.block_on(async {
        let server = CaServer::bind("127.0.0.1:0", Arc::clone(&ca), ServerOptions::default())
            .await
            .expect("bind");
        let addr = server.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve_with_shutdown(async {
            let _ = stopped.await;
        }));
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.root_cert_pem()))
            .domain_name("mesh-ca");
        let channel: Channel = Endpoint::from_shared(format!("https://{addr}"))
            .expect("uri")
            .tls_config(tls)
            .expect("tls")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect");
        (IstioCertificateServiceClient::new(channel), stop)
    });
    let token = ca
        .mint_token(&id, Duration::from_secs(24 * 3600), SystemTime::now())
        .expect("token");
    let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
        format!("Bearer {token}").parse().expect("header");
    let csr_pem = csr.as_str().to_owned();

    for in_flight in [1_u64, 16] {
        group.bench_function(format!("gRPC+TLS, {in_flight} in flight"), |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let next = Arc::new(AtomicU64::new(0));
                    let start = Instant::now();
                    let workers: Vec<_> = (0..in_flight.min(iters.max(1)))
                        .map(|_| {
                            let mut client = client.clone();
                            let next = Arc::clone(&next);
                            let bearer = bearer.clone();
                            let csr_pem = csr_pem.clone();
                            tokio::spawn(async move {
                                while next.fetch_add(1, Ordering::Relaxed) < iters {
                                    let mut request =
                                        tonic::Request::new(IstioCertificateRequest {
                                            csr: csr_pem.clone(),
                                            subject_id: String::new(),
                                            validity_duration: 3600,
                                            metadata: None,
                                        });
                                    request
                                        .metadata_mut()
                                        .insert("authorization", bearer.clone());
                                    let chain = client
                                        .create_certificate(request)
                                        .await
                                        .expect("signed")
                                        .into_inner()
                                        .cert_chain;
                                    assert_eq!(chain.len(), 3);
                                }
                            })
                        })
                        .collect();
                    for worker in workers {
                        worker.await.expect("worker");
                    }
                    start.elapsed()
                })
            });
        });
    }
    group.finish();
    let _ = stop.send(());
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    targets = signing
}
criterion_main!(benches);
