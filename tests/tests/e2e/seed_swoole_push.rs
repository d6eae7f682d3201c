//! Seed 001 (swoole push) on `examples/seeds/swoole-push.toml`: plain WebSocket
//! clients, HTTP token registration and UDP pushes from the test as the backend.

use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use relay_tests::{get, http, raw_upgrade, udp, ws, Ended, TestRelay, WAIT};
use serde_json::{json, Value};

/// `uid.token.source` in the seed's `-_,` alphabet.
pub(crate) fn access_token(uid: &str, token: &str, source: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("{uid}.{token}.{source}"))
        .replace('+', "-")
        .replace('/', "_")
        .replace('=', ",")
}

async fn start() -> Result<TestRelay> {
    TestRelay::start(&seed_config()?).await
}

/// The seed's example config on ephemeral ports, with a UDP peer group for the tests.
pub(crate) fn seed_config() -> Result<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds/swoole-push.toml");
    let text = std::fs::read_to_string(&path)?
        .replace("bind = \"0.0.0.0:9501\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:8880\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"127.0.0.1:9502\"", "bind = \"127.0.0.1:0\"")
        .replace(
            "udpsocket_group = []",
            "udpsocket_group = [{ ip = \"127.0.0.3\", secret_key = \"s3\" }]",
        )
        .replace(
            "[server]\ndata_dir = \"../../relay-data/swoole-push\"\n",
            "",
        );
    Ok(text)
}

pub(crate) async fn register(
    relay: &TestRelay,
    uid: &str,
    source: &str,
    token: &str,
) -> Result<()> {
    let body = format!("uid={uid}&source={source}&token={token}&sk=change-me");
    let (s, b) = http(
        relay.addr("api"),
        "POST",
        "/token",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .await?;
    anyhow::ensure!(s == 200, "register: {s} {b}");
    Ok(())
}

#[tokio::test]
async fn login_kick_chat_unread_and_udp() -> Result<()> {
    assert_eq!(
        access_token("123456", "123456", "app"),
        "MTIzNDU2LjEyMzQ1Ni5hcHA,",
        "PROTOCOLS.md example"
    );
    let relay = start().await?;
    let wsa = relay.addr("ws");
    register(&relay, "123456", "app", "123456").await?;
    register(&relay, "654321", "app", "t-654321").await?;
    register(&relay, "654321", "web", "w-654321").await?;
    let (s, _) = http(
        relay.addr("api"),
        "POST",
        "/token",
        Some("application/x-www-form-urlencoded"),
        b"uid=1&source=a&token=t&sk=wrong",
    )
    .await?;
    assert_eq!(s, 403, "token registration needs the api key");

    // Login (the README's unpadded form decodes too), then a second device kicks the first.
    let mut first = ws(
        wsa,
        "/?access_token=MTIzNDU2LjEyMzQ1Ni5hcHA&token=device-aaaaaaaa",
    )
    .await?;
    assert_eq!(
        first.recv().await?,
        json!({"message": "授权成功", "type": "login", "code": 200, "data": {"token": "device-aaaaaaaa"}})
    );
    let mut second = ws(
        wsa,
        "/?access_token=MTIzNDU2LjEyMzQ1Ni5hcHA,&token=device-bbbbbbbb",
    )
    .await?;
    assert_eq!(
        second.recv().await?["message"],
        "授权成功,该账号已在别处登录，已被您踢下线。"
    );
    assert_eq!(
        first.recv().await?,
        json!({"message": "该账号已在别处登录，您被踢下线", "type": "login", "code": 441, "data": []})
    );
    assert!(matches!(first.ended_within(WAIT).await?, Ended::Close(_)));

    // Bad token → 401 frame and closed; no query → refused.
    let mut bad = ws(
        wsa,
        &format!("/?access_token={}", access_token("123456", "nope", "app")),
    )
    .await?;
    assert_eq!(
        bad.recv().await?,
        json!({"message": "授权失败", "code": 401, "data": []})
    );
    assert!(matches!(bad.ended_within(WAIT).await?, Ended::Close(_)));
    assert!(raw_upgrade(wsa, "/", "").await?.starts_with("HTTP/1.1 400"));

    // Chat reaches every device of the recipient, with uid, time, state and id.
    let mut phone = ws(
        wsa,
        &format!(
            "/?access_token={}&token=phone-0000000",
            access_token("654321", "t-654321", "app")
        ),
    )
    .await?;
    let mut laptop = ws(
        wsa,
        &format!(
            "/?access_token={}&token=laptop-000000",
            access_token("654321", "w-654321", "web")
        ),
    )
    .await?;
    phone.recv().await?;
    laptop.recv().await?;
    second
        .send(
            json!({"to_uid": "654321", "type": "chat", "content": {"type": "text", "value": "hi"}}),
        )
        .await?;
    for c in [&mut phone, &mut laptop] {
        let m = c.recv().await?;
        assert_eq!(
            (
                m["uid"].clone(),
                m["state"].clone(),
                m["content"]["value"].clone()
            ),
            (json!("123456"), json!(1), json!("hi"))
        );
        assert!(
            m["id"].as_u64().is_some_and(|id| id > 15_000_000_000_000) && m["time"].is_string(),
            "{m}"
        );
    }

    // A user offline now gets it at their next login, with state 0.
    second
        .send(json!({"to_uid": "777", "type": "chat", "content": "later"}))
        .await?;
    second.send_text("ping").await?; // ignored
    register(&relay, "777", "app", "t777").await?;
    relay
        .eventually("kept", |r| r.metric("offline_stored") == 1)
        .await?;
    let mut late = ws(
        wsa,
        &format!("/?access_token={}", access_token("777", "t777", "app")),
    )
    .await?;
    late.recv().await?; // login frame
    let m = late.recv().await?;
    assert_eq!(
        (m["content"].clone(), m["state"].clone(), m["uid"].clone()),
        (json!("later"), json!(0), json!("123456"))
    );

    // UDP: loopback is trusted; a group member needs its sk (as a string); others get 0.
    let push = json!({"sk": "x", "means": "to_uid", "data": {"to_uid": "654321", "type": "chat", "content": "udp"}}).to_string();
    let reply = udp(
        "127.0.0.1",
        relay.addr("udp"),
        format!("{push}\n").as_bytes(),
        WAIT,
    )
    .await?;
    assert_eq!(reply.as_deref(), Some(r#"{"onLine":1}"#));
    assert_eq!(phone.recv().await?["content"], "udp");
    laptop.recv().await?;
    let stranger = udp("127.0.0.2", relay.addr("udp"), push.as_bytes(), WAIT).await?;
    assert_eq!(stranger.as_deref(), Some(r#"{"onLine":0}"#));
    let member =
        json!({"sk": "s3", "means": "is_on_line", "data": {"to_uid": "654321"}}).to_string();
    assert_eq!(
        udp("127.0.0.3", relay.addr("udp"), member.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":1}"#)
    );
    let numeric = json!({"sk": 3, "means": "is_on_line", "data": {"to_uid": "654321"}}).to_string();
    assert_eq!(
        udp("127.0.0.3", relay.addr("udp"), numeric.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":0}"#)
    );
    let all = json!({"means": "to_uid_all", "data": {"uid_all": ["654321"], "content": "all"}})
        .to_string();
    assert_eq!(
        udp("127.0.0.1", relay.addr("udp"), all.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":null}"#)
    );
    assert_eq!(phone.recv().await?["content"], "all");
    laptop.recv().await?;
    phone.expect_silence(Duration::from_millis(200)).await?;

    // to_fd / to_fd_all address connections by id.
    let tenant = relay.running.node.tenants["swoole-push"].clone();
    let fds = relay::hub::Presence::user_connections(&*tenant.hub, "654321");
    assert_eq!(fds.len(), 2);
    let one = json!({"means": "to_fd", "data": {"to_fd": fds[0], "content": "fd"}}).to_string();
    assert_eq!(
        udp("127.0.0.1", relay.addr("udp"), one.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":1}"#)
    );
    let both = json!({"means": "to_fd_all", "data": {"fd_all": fds, "content": "fds"}}).to_string();
    assert_eq!(
        udp("127.0.0.1", relay.addr("udp"), both.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":null}"#)
    );
    let mut got = Vec::new();
    for c in [&mut phone, &mut laptop] {
        while let Ok(m) = c.recv_within(Duration::from_millis(300)).await {
            got.push(m["content"].as_str().unwrap_or_default().to_owned());
        }
    }
    got.sort();
    assert_eq!(
        got,
        ["fd", "fds", "fds"],
        "to_fd reached one device, to_fd_all both"
    );

    // HTTP /chat/send and the hello page.
    let (s, b) = get(relay.addr("api"), "/chat/send?to_uid=654321&content=yo").await?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&b)?),
        (200, json!({"onLine": 1}))
    );
    assert_eq!(phone.recv().await?["content"], "yo");
    let (s, b) = get(wsa, "/").await?;
    assert!(s == 200 && b.contains("Hello"), "{b}");
    Ok(())
}
