//! `meshctl` as a user runs it: the real binary, a temporary store directory, exit codes,
//! standard output and standard error.

use std::path::{Path, PathBuf};

mod support;

use support::{Run, compat};

/// `meshctl` over the store directory `dir` (none: no store option).
fn meshctl(dir: Option<&Path>, args: &[&str], stdin: Option<&str>) -> Run {
    let global: Vec<&std::ffi::OsStr> = match dir {
        Some(dir) => vec!["--config-dir".as_ref(), dir.as_os_str()],
        None => Vec::new(),
    };
    support::meshctl(&global, args, stdin)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn analyze_clean_files_exits_zero() {
    let r = meshctl(
        None,
        &[
            "analyze",
            "-f",
            &compat("destination-rule-all.yaml"),
            "-f",
            &compat("virtual-service-all-v1.yaml"),
            "--output-threshold",
            "Error",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.is_empty(), "{}", r.stdout);
    assert!(r.stderr.contains("No validation issues"), "{}", r.stderr);
}

#[test]
fn analyze_reports_errors_with_file_line_and_code_79() {
    let r = meshctl(
        None,
        &["analyze", "-f", &compat("virtual-service-all-v1.yaml")],
        None,
    );
    assert_eq!(r.code, 79, "{}{}", r.stdout, r.stderr);
    let line = r
        .stdout
        .lines()
        .find(|l| l.contains("reviews+v1"))
        .expect("unknown subset reported");
    assert!(
        line.starts_with("Error [IST0101] (VirtualService default/reviews "),
        "{line}"
    );
    assert!(line.contains("virtual-service-all-v1.yaml:25)"), "{line}");
    assert!(
        line.contains("spec.http[0].route[0].destination.subset"),
        "{line}"
    );
}

#[test]
fn analyze_json_lists_findings() {
    let bad = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [r]\n  http:\n  - route:\n    - destination: {host: r}\n      weight: -1\n";
    let r = meshctl(None, &["analyze", "-f", "-", "-o", "json"], Some(bad));
    assert_eq!(r.code, 79);
    let findings: serde_json::Value = serde_json::from_str(&r.stdout).expect("valid JSON");
    let errors: Vec<&serde_json::Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == "Error")
        .collect();
    assert!(!errors.is_empty(), "{}", r.stdout);
    assert!(
        errors
            .iter()
            .any(|f| f["field"] == "spec.http[0].route[0].weight"
                && f["code"] == "IST0106"
                && f["line"] == 9
                && f["resource"]["kind"] == "VirtualService")
    );
}

#[test]
fn analyze_syntax_error_names_line_and_column() {
    let r = meshctl(None, &["analyze", "-f", "-"], Some("a: [1, 2\nb: c\n"));
    assert_eq!(r.code, 79);
    assert!(r.stdout.contains("[MESH0002]"), "{}", r.stdout);
    assert!(r.stdout.contains("column"), "{}", r.stdout);
}

#[test]
fn apply_get_delete_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = Some(dir.path());
    let r = meshctl(
        d,
        &[
            "apply",
            "-f",
            &compat("destination-rule-all.yaml"),
            "-f",
            &compat("virtual-service-all-v1.yaml"),
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("virtualservice.networking.istio.io/reviews created")
    );
    assert!(
        r.stdout
            .contains("destinationrule.networking.istio.io/reviews created")
    );

    // Applying the same thing again changes nothing.
    let r = meshctl(
        d,
        &["apply", "-f", &compat("destination-rule-all.yaml")],
        None,
    );
    assert!(
        r.stdout
            .contains("destinationrule.networking.istio.io/reviews unchanged")
    );

    let r = meshctl(d, &["get", "vs"], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.starts_with("NAME"), "{}", r.stdout);
    assert!(r.stdout.contains("reviews"));

    // Update: the test-v2 rule replaces the reviews VirtualService.
    let r = meshctl(
        d,
        &[
            "apply",
            "-f",
            &compat("virtual-service-reviews-test-v2.yaml"),
        ],
        None,
    );
    assert!(
        r.stdout
            .contains("virtualservice.networking.istio.io/reviews configured")
    );
    let r = meshctl(d, &["get", "virtualservice", "reviews", "-o", "json"], None);
    let vs: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        vs["spec"]["http"][0]["match"][0]["headers"]["end-user"]["exact"],
        "jason"
    );

    // `get -o yaml` output applies back unchanged.
    let r = meshctl(d, &["get", "dr", "-o", "yaml"], None);
    let again = meshctl(d, &["apply", "-f", "-"], Some(&r.stdout));
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        4,
        "{}",
        again.stdout
    );

    // Deleting a DestinationRule that routes still use is refused.
    let r = meshctl(d, &["delete", "destinationrule", "reviews"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("reviews+v1"), "{}", r.stderr);
    // Delete the route first, then the rule.
    let r = meshctl(d, &["delete", "vs", "reviews"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("virtualservice.networking.istio.io \"reviews\" deleted")
    );
    let r = meshctl(d, &["delete", "vs", "reviews"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("not found"));
    let r = meshctl(d, &["get", "vs", "reviews"], None);
    assert_eq!(r.code, 1);
}

#[test]
fn apply_refuses_invalid_configuration_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = Some(dir.path());
    // A route to a subset no DestinationRule defines.
    let r = meshctl(
        d,
        &["apply", "-f", &compat("virtual-service-all-v1.yaml")],
        None,
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("nothing was written"), "{}", r.stderr);
    assert!(r.stderr.contains("Error [IST0101]"), "{}", r.stderr);
    assert!(files_under(dir.path()).is_empty());

    // A schema error in one document refuses the whole input.
    let mixed = format!(
        "{}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: x}}\nspec: {{host: x, subsets: [{{name: v1, labels: {{v: '1'}}}}], bogus: 1}}\n",
        std::fs::read_to_string(compat("destination-rule-all.yaml")).unwrap()
    );
    let r = meshctl(d, &["apply", "-f", "-"], Some(&mixed));
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("spec.bogus"), "{}", r.stderr);
    assert!(files_under(dir.path()).is_empty());
}

#[test]
fn usage_errors() {
    let r = meshctl(None, &["get", "widgets"], None);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("unknown kind"), "{}", r.stderr);
    let r = meshctl(None, &["get", "vs"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("--config-dir"), "{}", r.stderr);
    let r = meshctl(None, &["apply"], None);
    assert_eq!(r.code, 2, "clap usage errors exit 2");
    let r = meshctl(None, &["--help"], None);
    assert_eq!(r.code, 0);
    for verb in ["analyze", "apply", "get", "delete"] {
        assert!(r.stdout.contains(verb));
    }
}

fn bookinfo_file(f: &str) -> String {
    compat(f)
}

#[test]
fn describe_explains_the_matching_rule() {
    let dr = bookinfo_file("destination-rule-all.yaml");
    let vs = bookinfo_file("virtual-service-reviews-test-v2.yaml");
    let r = meshctl(
        None,
        &[
            "describe",
            "--host",
            "reviews",
            "-H",
            "end-user: jason",
            "/reviews/0",
            "-f",
            &dr,
            "-f",
            &vs,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("Host:      reviews.default.svc.cluster.local"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("spec.http[0] MATCHED"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains(r#"[x] header end-user exact "jason" (got "jason")"#),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("subset v2 weight 100 (100.0%)"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("Retries:   mesh default"), "{}", r.stdout);

    // Anyone else: rule 0 fails on the header, rule 1 sends to v1.
    let r = meshctl(
        None,
        &[
            "describe",
            "http://reviews:9080/reviews/0",
            "-f",
            &dr,
            "-f",
            &vs,
        ],
        None,
    );
    assert!(
        r.stdout.contains("spec.http[0] not matched"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains(r#"[ ] header end-user exact "jason" (absent)"#),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("spec.http[1] MATCHED"), "{}", r.stdout);
    assert!(r.stdout.contains("subset v1"), "{}", r.stdout);
}

#[test]
fn describe_shows_weights_faults_and_timeouts_as_json() {
    let dr = bookinfo_file("destination-rule-all.yaml");
    let split = bookinfo_file("virtual-service-reviews-80-20.yaml");
    let r = meshctl(
        None,
        &[
            "describe",
            "http://reviews/",
            "-f",
            &dr,
            "-f",
            &split,
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["outcome"], "forward");
    assert_eq!(v["destinations"][0]["subset"], "v1");
    assert_eq!(v["destinations"][0]["percent"], 80.0);
    assert_eq!(v["destinations"][1]["percent"], 20.0);

    let timeout = bookinfo_file("virtual-service-reviews-timeout.yaml");
    let r = meshctl(
        None,
        &[
            "describe",
            "http://ratings/ratings/0",
            "-f",
            &dr,
            "-f",
            &timeout,
        ],
        None,
    );
    assert!(
        r.stdout
            .contains("Fault:     delay 2s for 100% of requests"),
        "{}",
        r.stdout
    );
    let r = meshctl(
        None,
        &["describe", "http://reviews/", "-f", &dr, "-f", &timeout],
        None,
    );
    assert!(r.stdout.contains("Timeout:   500ms"), "{}", r.stdout);
}

#[test]
fn describe_reports_no_route_for_a_gateway() {
    let gw = bookinfo_file("bookinfo-gateway.yaml");
    let r = meshctl(
        None,
        &[
            "describe",
            "--gateway",
            "istio=ingressgateway",
            "http://localhost:8080/admin",
            "-f",
            &gw,
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout
            .contains("no rule matches: 404 with response flag NR"),
        "{}",
        r.stdout
    );
    let r = meshctl(
        None,
        &[
            "describe",
            "--gateway",
            "app=nothing",
            "http://localhost:8080/",
            "-f",
            &gw,
        ],
        None,
    );
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("no Gateway selects"), "{}", r.stderr);
}
