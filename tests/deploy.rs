//! The deployment files agree with the gateway: the Kubernetes ConfigMap's configuration passes
//! `wharf check`, and the probes name the routes the admin listener serves.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// The `wharf.toml: |` block of the ConfigMap, unindented.
fn configmap_toml(manifest: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        if line.trim_start().starts_with("wharf.toml: |") {
            inside = true;
            continue;
        }
        if inside {
            if line.starts_with("    ") || line.trim().is_empty() {
                out.push_str(line.strip_prefix("    ").unwrap_or(""));
                out.push('\n');
            } else {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn kubernetes_manifest_config_and_probes_are_valid() {
    let manifest = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/wharf.yaml"),
    )
    .unwrap();
    let toml = configmap_toml(&manifest);
    assert!(toml.contains("[database]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wharf.toml");
    std::fs::write(&path, &toml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
        .arg("check")
        .arg(&path)
        .env("DATABASE_URL", "postgres://x@127.0.0.1/x")
        .env("REDIS_URL", "redis://127.0.0.1:6379")
        .env("WHARF_INVALIDATION_SECRET", "s")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for probe in [
        "path: /v1/healthz, port: admin",
        "path: /v1/health, port: admin",
    ] {
        assert!(manifest.contains(probe), "missing probe {probe}");
    }
    // The probe paths answer on a running gateway's admin listener.
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    for p in ["/v1/healthz", "/v1/health"] {
        let r = client().get(gw.admin_url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
}
