//! Seed 000 (xiaoniu) on `examples/seeds/xiaoniu.toml`, with socket.io-client 2.x
//! (default transports) and HTTP pushes as the backend.

use std::time::Duration;

use anyhow::Result;
use md5::{Digest, Md5};
use relay_tests::sio::SioDriver;
use relay_tests::{get, http, HookServer, TestRelay};
use serde_json::{json, Map, Value};

const AES_KEY: &str = "698d51a19d8a121ce581499d7b701668";

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The seed's scheme, written from PROTOCOLS.md: sorted non-empty fields, `&&`, api key.
fn sign(o: &Value, api_key: &str) -> String {
    let o: &Map<String, Value> = o.as_object().expect("object");
    let mut keys: Vec<&String> = o
        .keys()
        .filter(|k| {
            *k != "sign"
                && !matches!(&o[*k], Value::Null | Value::Bool(false))
                && o[*k] != json!("")
                && o[*k] != json!(0)
                && o[*k] != json!("0")
        })
        .collect();
    keys.sort();
    let mut parts: Vec<String> = keys
        .iter()
        .map(|k| match &o[*k] {
            Value::String(s) => format!("{k}={s}"),
            Value::Bool(true) => format!("{k}=1"),
            v => format!("{k}={v}"),
        })
        .collect();
    parts.push(format!("api_key={api_key}"));
    md5_hex(&parts.join("&&"))
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A signed event object with a fresh nonce.
fn signed(mut o: Value, nonce: &str) -> Value {
    o["client_id"] = json!("demo");
    o["time_stamp"] = json!(now());
    o["nonce_str"] = json!(nonce);
    o["sign"] = json!(sign(&o, "demo"));
    o
}

async fn start(hooks: &HookServer, auth_ms: u64) -> Result<TestRelay> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds/xiaoniu.toml");
    let text = std::fs::read_to_string(&path)?
        .replace("bind = \"0.0.0.0:2120\"", "bind = \"127.0.0.1:0\"")
        .replace("bind = \"0.0.0.0:2121\"", "bind = \"127.0.0.1:0\"")
        .replace(
            "auth_timeout_ms = 30000",
            &format!("auth_timeout_ms = {auth_ms}"),
        )
        .replace("aes_key = \"\"", &format!("aes_key = \"{AES_KEY}\""))
        .replace(
            "login_cb = \"\"",
            &format!("login_cb = \"http://{}/login\"", hooks.addr),
        )
        .replace(
            "disconnect_cb = \"\"",
            &format!("disconnect_cb = \"http://{}/bye?app=x\"", hooks.addr),
        )
        .replace("[server]\ndata_dir = \"../../relay-data/xiaoniu\"\n", "");
    TestRelay::start(&text).await
}

#[tokio::test]
async fn the_protocols_scenario() -> Result<()> {
    // The worked examples validate this test's signer.
    assert_eq!(
        md5_hex("password=123456&&username=taiyouqu&&api_key=aaabbb"),
        "0a243d3055e90663d4411ca49c6f3852"
    );
    assert_eq!(
        sign(
            &json!({"client_id": "demo", "time_stamp": 1700000000, "nonce_str": "abc123"}),
            "demo"
        ),
        "1d641db2953adbb6cb7aeda8ab2b5b0b"
    );

    let hooks = HookServer::start(vec![]).await?;
    let relay = start(&hooks, 30_000).await?;
    let url = format!("http://{}", relay.addr("socket"));
    let push = relay.addr("push");
    let mut d = SioDriver::start().await?;
    let c = d.connect("a", 2, &url, json!({})).await?;
    let sid = c["id"].as_str().unwrap_or_default().to_owned();

    let login = signed(json!({}), "n1");
    d.emit("a", "login", json!([login.clone()]), false).await?;
    let r = d.next("a", "event", Some("server_return")).await?;
    assert_eq!(
        r["args"][0],
        json!({"type": "login", "errcode": 0, "errmsg": "恭喜登录成功！", "data": {"sid": sid}})
    );
    relay
        .eventually("login_cb", |_| !hooks.requests().is_empty())
        .await?;
    assert_eq!(hooks.requests()[0].1, format!("/login?sid={sid}"));
    // The same sign again (from a second socket): refused.
    d.connect("b", 2, &url, json!({})).await?;
    d.emit("b", "login", json!([login]), false).await?;
    let r = d.next("b", "event", Some("server_return")).await?;
    assert_eq!(r["args"][0]["errmsg"], "该sign已被使用,请重新生成");
    // A second login on a logged-in socket.
    d.emit("a", "login", json!([signed(json!({}), "n2")]), false)
        .await?;
    assert_eq!(
        d.next("a", "event", Some("server_return")).await?["args"][0]["errmsg"],
        "已登录过了"
    );

    // HTTP push to room r1 with nobody in it, kept offline.
    let (s, b) = http(
        push,
        "POST",
        "/anything",
        Some("application/x-www-form-urlencoded"),
        b"client_id=demo&room=r1&content=hello&is_save_offline=1",
    )
    .await?;
    assert_eq!(
        (s, serde_json::from_str::<Value>(&b)?),
        (200, json!({"errcode": 1, "errmsg": "offline"}))
    );
    // join r1: the kept message (AES'd) reaches the room, then the join answer.
    d.emit(
        "a",
        "join",
        json!([signed(json!({"room": "r1"}), "n3")]),
        false,
    )
    .await?;
    let m = d.next("a", "event", Some("message")).await?;
    assert_eq!(
        m["args"][0],
        json!({"datas": "lcAERmo7PzaA6ubdbGS/Dw==", "is_online": false})
    );
    let r = d.next("a", "event", Some("server_return")).await?;
    assert_eq!(
        r["args"][0],
        json!({"type": "join", "errcode": 0, "errmsg": "恭喜加入房间成功！"})
    );
    // Live push: is_online true and ok.
    let (_, b) = get(push, "/?client_id=demo&room=r1&content=hello&event=news").await?;
    assert_eq!(
        serde_json::from_str::<Value>(&b)?,
        json!({"errcode": 0, "errmsg": "ok"})
    );
    assert_eq!(
        d.next("a", "event", Some("news")).await?["args"][0],
        json!({"datas": "lcAERmo7PzaA6ubdbGS/Dw==", "is_online": true})
    );
    // Socket push to the room; a push to an empty room answers offline.
    d.emit(
        "a",
        "push",
        json!([signed(
            json!({"room": "r1", "datas": "hi", "event": "chat"}),
            "n4"
        )]),
        false,
    )
    .await?;
    let m = d.next("a", "event", Some("chat")).await?;
    assert_eq!(m["args"][0]["sid"], sid);
    assert_eq!(m["args"][0]["room"], "r1");
    d.emit(
        "a",
        "push",
        json!([signed(json!({"room": "nobody", "datas": "hi"}), "n5")]),
        false,
    )
    .await?;
    assert_eq!(
        d.next("a", "event", Some("server_return")).await?["args"][0],
        json!({"type": "push", "errcode": 1, "errmsg": "offline"})
    );

    // Error strings.
    let mut forged = signed(json!({"room": "r1"}), "n6");
    forged["sign"] = json!("0".repeat(32));
    d.emit("a", "join", json!([forged]), false).await?;
    assert_eq!(
        d.next("a", "event", Some("server_return")).await?["args"][0]["errmsg"],
        "验证失败"
    );
    let mut stale =
        json!({"client_id": "demo", "time_stamp": 1700000000, "nonce_str": "x", "room": "r1"});
    stale["sign"] = json!(sign(&stale, "demo"));
    d.emit("a", "join", json!([stale]), false).await?;
    assert_eq!(
        d.next("a", "event", Some("server_return")).await?["args"][0]["errmsg"],
        "time_stamp已过期"
    );
    d.emit("a", "join", json!(["not json"]), false).await?;
    assert_eq!(
        d.next("a", "event", Some("server_return")).await?["args"][0]["errmsg"],
        "数据格式有误"
    );
    for (q, msg) in [
        ("content=x", "client_id不能为空"),
        ("client_id=demo", "内容不能为空"),
        ("client_id=nope&content=x", "client_id不存在"),
        (
            "client_id=demo&content=x&is_save_offline=2",
            "是否要存储离线消息有误，只能传1,0",
        ),
    ] {
        let (_, b) = get(push, &format!("/?{q}")).await?;
        assert_eq!(serde_json::from_str::<Value>(&b)?["errmsg"], msg, "{q}");
    }

    // disconnect_cb for the logged-in socket.
    d.send(json!({"op": "close", "name": "a"})).await?;
    relay
        .eventually("disconnect_cb", |_| hooks.requests().len() == 2)
        .await?;
    assert_eq!(hooks.requests()[1].1, format!("/bye?app=x&sid={sid}"));
    d.exit().await
}

#[tokio::test]
async fn a_socket_that_never_logs_in_is_told_and_closed() -> Result<()> {
    let hooks = HookServer::start(vec![]).await?;
    let relay = start(&hooks, 300).await?;
    let mut d = SioDriver::start().await?;
    d.connect(
        "lazy",
        2,
        &format!("http://{}", relay.addr("socket")),
        json!({"reconnection": false}),
    )
    .await?;
    let r = d.next("lazy", "event", Some("server_return")).await?;
    assert_eq!(
        r["args"][0],
        json!({"type": "login", "errcode": 1, "errmsg": "没有进行授权，链接已关闭,请授权"})
    );
    d.next("lazy", "disconnect", None).await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        hooks.requests().is_empty(),
        "no disconnect_cb for a socket that never logged in"
    );
    d.exit().await
}

#[tokio::test]
async fn join_and_push_need_no_prior_login() -> Result<()> {
    // PROTOCOLS.md: join and push are validated on their own signatures.
    let hooks = HookServer::start(vec![]).await?;
    let relay = start(&hooks, 30_000).await?;
    let url = format!("http://{}", relay.addr("socket"));
    let mut d = SioDriver::start().await?;
    // Over socket.io-client 2.x's default transports (polling, then the upgrade) and
    // over WebSocket alone.
    for (name, opts) in [
        ("anon", json!({})),
        ("anonws", json!({"transports": ["websocket"]})),
    ] {
        let c = d.connect(name, 2, &url, opts).await?;
        let sid = c["id"].as_str().unwrap_or_default().to_owned();
        d.emit(
            name,
            "join",
            json!([signed(json!({"room": "r9"}), &format!("j-{name}"))]),
            false,
        )
        .await?;
        assert_eq!(
            d.next(name, "event", Some("server_return")).await?["args"][0],
            json!({"type": "join", "errcode": 0, "errmsg": "恭喜加入房间成功！"})
        );
        d.emit(
            name,
            "push",
            json!([signed(
                json!({"room": "r9", "datas": "hey", "event": "chat"}),
                &format!("p-{name}")
            )]),
            false,
        )
        .await?;
        let m = d.next(name, "event", Some("chat")).await?;
        assert_eq!(m["args"][0]["sid"], sid);
        assert_eq!(m["args"][0]["room"], "r9");
    }
    d.exit().await
}
