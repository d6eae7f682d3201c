//! Seed 004 (MSwoole) on `examples/seeds/mswoole.toml`, driven the way its README
//! tells users to write a client: a plain WebSocket with `?auth=…`, JSON messages
//! `{"method": "a.c.m"}`.

use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use des::cipher::generic_array::GenericArray;
use des::cipher::{BlockEncrypt, KeyInit};
use relay_tests::{get, raw_upgrade, ws, Ended, TestRelay, WAIT};
use serde_json::json;

/// The worked example from PROTOCOLS.md (computed with `openssl des-ede3`).
const EXAMPLE_AUTH: &str = "bTF2BGJT*b2N8:JFzhNu1ZMJlVw3KookEl3shiDpYHb8pZMLFE4NpOVlrQp*nORu*n:tVjWrxPJNpzDLaZZQBNCyV4uajEHtT3OpTHr86BetknQJV9FO8A__";

/// Encrypt a plaintext the way the seed's backend does (3DES-EDE3-ECB, PKCS#5, `*:_`).
fn auth_for(plain: &str) -> String {
    let mut key = [b'0'; 24];
    key[..16].copy_from_slice(b"kfw001-websocket");
    let cipher = des::TdesEde3::new_from_slice(&key).expect("key");
    let mut data = plain.as_bytes().to_vec();
    let pad = 8 - data.len() % 8;
    data.extend(std::iter::repeat_n(pad as u8, pad));
    for block in data.chunks_exact_mut(8) {
        cipher.encrypt_block(GenericArray::from_mut_slice(block));
    }
    base64::engine::general_purpose::STANDARD
        .encode(data)
        .replace('+', "*")
        .replace('/', ":")
        .replace('=', "_")
}

async fn start(idle_ms: Option<u64>) -> Result<TestRelay> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds/mswoole.toml");
    let text = std::fs::read_to_string(&path)?;
    // The example as it is, on free ports and in a temp data dir.
    let text = text
        .replace("bind = \"0.0.0.0:20000\"", "bind = \"127.0.0.1:0\"")
        .replace(
            "idle_timeout_ms = 60000",
            &format!("idle_timeout_ms = {}", idle_ms.unwrap_or(60000)),
        )
        .replace("[server]\ndata_dir = \"../../relay-data/mswoole\"\n", "");
    TestRelay::start(&text).await
}

#[tokio::test]
async fn auth_routing_and_replies() -> Result<()> {
    let relay = start(None).await?;
    let addr = relay.addr("outside");
    assert_eq!(
        auth_for(
            r#"{"id":"1001","type":"wechatUser","code":"room1","nickname":"tom","ctime":1700000000}"#
        ),
        EXAMPLE_AUTH,
        "cipher matches the worked example"
    );

    // Missing, garbled, or non-JSON auth: 403 with `message: error auth`, empty body.
    for q in [
        "",
        "?auth=",
        "?auth=garbage*:_",
        &format!("?auth={}", auth_for("not json at all")),
    ] {
        let head = raw_upgrade(addr, &format!("/live{q}"), "").await?;
        assert!(head.starts_with("HTTP/1.1 403"), "{q}: {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("\r\nmessage: error auth\r\n"),
            "{head}"
        );
        assert!(head.ends_with("\r\n\r\n"), "empty body: {head:?}");
    }

    let head = raw_upgrade(addr, &format!("/live?auth={EXAMPLE_AUTH}"), "").await?;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nkeepalive: off\r\n"),
        "{head}"
    );
    let mut tom = ws(addr, &format!("/live?auth={EXAMPLE_AUTH}")).await?;
    tom.send(json!({"method": "index.index.index"})).await?;
    assert_eq!(
        tom.recv().await?,
        json!({"status": 200, "event": "receiveMessage", "info": "服务端已收到您的请求内容"})
    );
    assert_eq!(
        tom.recv().await?,
        json!({"status": 200, "event": "success", "info": "执行完成"})
    );
    tom.send(json!({"method": "index"})).await?; // one part: Index.Index.index
    tom.recv().await?;
    assert_eq!(tom.recv().await?["event"], "success");
    tom.send(json!({"method": "nothing"})).await?;
    tom.recv().await?;
    assert_eq!(
        tom.recv().await?,
        json!({"status": 405, "event": "methodNotFound", "info": "您请求的method方法不存在"})
    );
    tom.send(json!({"method": "no.such.thing"})).await?;
    tom.recv().await?;
    assert_eq!(
        tom.recv().await?,
        json!({"status": 500, "event": "controllerError", "info": "程序错误"})
    );
    tom.send_text("2").await?;
    assert_eq!(tom.recv_text_within(WAIT).await?, "3");

    // The Live sample: two wechat users in room1, HTML-escaped speech to the room.
    let ann_auth = auth_for(
        r#"{"id":"1002","type":"wechatUser","code":"room1","nickname":"ann","ctime":1700000001}"#,
    );
    let mut ann = ws(addr, &format!("/live?auth={ann_auth}")).await?;
    tom.send(json!({"method": "live.user.join"})).await?;
    tom.recv().await?;
    assert_eq!(tom.recv().await?["event"], "userJoinSuccess");
    ann.send(json!({"method": "Live.User.join"})).await?;
    ann.recv().await?;
    assert_eq!(ann.recv().await?["event"], "userJoinSuccess");
    let b = tom.recv().await?;
    assert_eq!(
        b,
        json!({"status": 200, "event": "userJoinBroadcast", "info": "用户加入", "param": {"id": "1002", "nickname": "ann"}})
    );
    ann.send(json!({"method": "live.user.say", "content": "<b>hi</b> & \"bye\""}))
        .await?;
    ann.recv().await?;
    for c in [&mut tom, &mut ann] {
        let m = c.recv().await?;
        assert_eq!(m["event"], "userSayBroadcast");
        assert_eq!(
            m["param"]["content"],
            "&lt;b&gt;hi&lt;/b&gt; &amp; &quot;bye&quot;"
        );
    }
    // Leaving tells the others.
    ann.send(json!({"method": "live.user.out"})).await?;
    ann.recv().await?;
    assert_eq!(tom.recv().await?["event"], "userOutBroadcast");
    assert_eq!(ann.recv().await?["event"], "userOutSuccess");
    // A big screen may not act as a wechat user.
    let wall =
        auth_for(r#"{"id":"w1","type":"wall","code":"room1","nickname":"screen","ctime":1}"#);
    let mut screen = ws(addr, &format!("/live?auth={wall}")).await?;
    screen.send(json!({"method": "live.user.join"})).await?;
    screen.recv().await?;
    assert_eq!(
        screen.recv().await?,
        json!({"status": 403, "event": "mustBeWechatUser", "info": "用户类型不正确"})
    );
    screen.send(json!({"method": "live.wall.join"})).await?;
    screen.recv().await?;
    assert_eq!(screen.recv().await?["event"], "wallJoinSuccess");

    // Non-JSON closes the connection.
    ann.send_text("hello").await?;
    assert!(matches!(
        ann.ended_within(WAIT).await?,
        Ended::Close(_) | Ended::CloseNoCode | Ended::Eof
    ));

    // Plain HTTP on the same port.
    let (s, body) = get(addr, "/").await?;
    assert_eq!((s, body.as_str()), (200, "<h1>Hi guy!</h1>"));
    Ok(())
}

#[tokio::test]
async fn silent_connections_are_cut() -> Result<()> {
    let relay = start(Some(300)).await?;
    let mut c = ws(relay.addr("outside"), &format!("/live?auth={EXAMPLE_AUTH}")).await?;
    assert_eq!(
        c.ended_within(Duration::from_secs(5)).await?,
        Ended::Close(1001)
    );
    Ok(())
}
