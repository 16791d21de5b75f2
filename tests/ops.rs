//! Operations through real processes and sockets: hot reload (file change, SIGHUP, invalid
//! file), requests in flight across a reload, TLS with HTTP/2 by ALPN, graceful SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use futures_util::StreamExt;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn chat_status(gw: &Gw, key: &str, model: &str) -> u16 {
    client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat_body(model, false))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn edit_config(gw: &Gw, from: &str, to: &str) {
    let p = gw.config_path();
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{from} not in config");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
}

#[tokio::test]
async fn file_change_reloads_and_in_flight_requests_keep_their_config() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    assert_eq!(chat_status(&gw, KEY_LIMITED, "chat-a").await, 200);

    // A slow stream starts on the current configuration...
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_LIMITED)
        .header("x-mock-tokens", "20")
        .header("x-mock-itl-ms", "60")
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // ...then the key is revoked in the file.
    let limited_block = format!("hash = \"{}\"", sha(KEY_LIMITED));
    edit_config(
        &gw,
        &limited_block,
        &format!("{limited_block}\nrevoked = true"),
    );
    wait_until("revocation", || async {
        chat_status(&gw, KEY_LIMITED, "chat-a").await == 401
    })
    .await;

    // The stream that began before the reload finishes normally.
    let body = r.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");

    // An invalid file is rejected; the running configuration stays.
    edit_config(&gw, "[[models]]", "[[modelz]]");
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(chat_status(&gw, KEY_GOOD, "chat-a").await, 200);
    let v: Value = client()
        .get(gw.admin_url("/v1/healthz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let err = v["components"]["config"]["last_reload_error"]
        .as_str()
        .unwrap();
    assert!(err.contains("modelz"), "{err}");
    assert!(gw.log().contains("reload rejected"), "{}", gw.log());
}

#[tokio::test]
async fn sighup_reloads() {
    let mock = mock().await;
    let gw = Gw::start(&mock).await;
    assert_eq!(chat_status(&gw, KEY_LIMITED, "chat-b").await, 403);
    // Grant every model with an edit of the same size and the old modification time, so the
    // file watcher cannot see it: only SIGHUP can load it.
    let p = gw.config_path();
    let tmp = gw.dir.path().join("next.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let from = "user_id = \"user_1\"\nmodels = [\"chat-a\"]";
    assert!(text.contains(from));
    std::fs::write(
        &tmp,
        text.replacen(from, "user_id = \"user_1\"\nmodels = [\"*\"]     ", 1),
    )
    .unwrap();
    let st = std::process::Command::new("touch")
        .arg("-r")
        .arg(&p)
        .arg(&tmp)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::rename(&tmp, &p).unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(chat_status(&gw, KEY_LIMITED, "chat-b").await, 403);
    gw.signal("HUP");
    wait_until("grant", || async {
        chat_status(&gw, KEY_LIMITED, "chat-b").await == 200
    })
    .await;
    let v: Value = client()
        .get(gw.url("/api/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["config_version"].as_u64().unwrap() >= 2, "{v}");
}

#[tokio::test]
async fn tls_listener_negotiates_http2() {
    let mock = mock().await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let extra = format!(
        "\n[server.tls]\ncert_file = \"{fixtures}/tls-cert.pem\"\nkey_file = \"{fixtures}/tls-key.pem\"\n"
    );
    let gw = Gw::start_with(&mock, &extra).await;
    let c = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    let r = c
        .post(format!("https://localhost:{}/v1/chat/completions", gw.port))
        .bearer_auth(KEY_GOOD)
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let body = r.text().await.unwrap();
    assert!(body.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        mock.last_request().unwrap().json().unwrap()["model"],
        "up-chat-a"
    );
}

#[tokio::test]
async fn sigterm_drains_streams_in_flight_then_exits() {
    let mock = mock().await;
    let mut gw = Gw::start(&mock).await;
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(KEY_GOOD)
        .header("x-mock-tokens", "10")
        .header("x-mock-itl-ms", "60")
        .json(&chat_body("chat-a", true))
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let mut s = r.bytes_stream();
    let first = s.next().await.unwrap().unwrap();
    assert!(!first.is_empty());
    gw.signal("TERM");
    let mut body = first.to_vec();
    while let Some(c) = s.next().await {
        body.extend_from_slice(&c.unwrap());
    }
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "stream cut by shutdown: {body}"
    );
    let rec = gw.usage_of(&id).await;
    assert_eq!(rec["outcome"], "success");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(st) = gw.child.try_wait().unwrap() {
            assert!(st.success(), "exit status {st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn https_providers_are_verified_with_sni() {
    // Gateway B terminates TLS (a certificate for `localhost` signed by a test CA) in front of
    // the mock; gateway A reaches it as an https provider, trusting that CA.
    let mock = mock().await;
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
    let b_extra = format!(
        r#"
[server.tls]
cert_file = "{fixtures}/upstream-cert.pem"
key_file = "{fixtures}/upstream-key.pem"

[[keys]]
id = "key_from_a"
hash = "{h}"
organisation_id = "org_1"
models = ["chat-a"]
"#,
        h = sha(PROVIDER_KEY)
    );
    let b = Gw::start_with(&mock, &b_extra).await;
    let a_extra = format!(
        r#"
[[providers]]
name = "gateway-b"
type = "OPENAI"
base_url = "https://localhost:{port}/v1"
api_key_env = "WHARF_TEST_PROVIDER_KEY"

[[models]]
name = "chain"
slug = "chat-a"
provider = "gateway-b"

[[keys]]
id = "key_chain"
hash = "{h}"
organisation_id = "org_1"
models = ["chain"]
"#,
        port = b.port,
        h = sha("wharf-test-chain")
    );
    let mock_addr = mock.addr().to_string();
    let a = Gw::start_custom(
        &mock,
        |port, admin, dir| {
            config_text(&mock_addr, port, admin, dir, &a_extra).replacen(
                "threads = 2",
                &format!("threads = 2\nupstream_ca_file = \"{fixtures}/ca-cert.pem\""),
                1,
            )
        },
        &[],
    )
    .await;
    for stream in [false, true] {
        let r = client()
            .post(a.url("/v1/chat/completions"))
            .bearer_auth("wharf-test-chain")
            .json(&chat_body("chain", stream))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", a.log());
        let body = r.text().await.unwrap();
        assert!(body.contains("up-chat-a"), "{body}");
    }
    // The mock saw gateway B's credential, and gateway B saw gateway A's (never the client's).
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    // Without the CA, the certificate is refused: 502, not a silent downgrade.
    let c = Gw::start_with(&mock, &a_extra).await;
    let r = client()
        .post(c.url("/v1/chat/completions"))
        .bearer_auth("wharf-test-chain")
        .json(&chat_body("chain", false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
}
