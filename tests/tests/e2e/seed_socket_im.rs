//! Seed 003 (node-socket-im) on `examples/seeds/socket-im.toml`, with socket.io-client
//! 2.x (default transports) as the bundled client uses it and HTTP as the backend.

use std::time::Duration;

use anyhow::Result;
use md5::{Digest, Md5};
use relay_tests::sio::SioDriver;
use relay_tests::{get, http, TestRelay};
use serde_json::{json, Value};

pub(crate) const KEY: &str = "try4dfs%#fs!#$2334ds(%B)";

pub(crate) fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn enc(s: &str) -> String {
    form_urlencoded(s)
}

fn form_urlencoded(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn start() -> Result<TestRelay> {
    TestRelay::start(&seed_config()?).await
}

/// The seed's example config on an ephemeral port.
pub(crate) fn seed_config() -> Result<String> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds/socket-im.toml");
    Ok(std::fs::read_to_string(&path)?
        .replace("bind = \"0.0.0.0:4000\"", "bind = \"127.0.0.1:0\"")
        .replace("[server]\ndata_dir = \"../../relay-data/socket-im\"\n", ""))
}

#[tokio::test]
async fn the_protocols_scenario_and_its_error_paths() -> Result<()> {
    // The worked examples of PROTOCOLS.md.
    assert_eq!(
        md5_hex(&format!("demoroom1,room2{KEY}")),
        "e59b91ea6d0980ddcdd968c630c2ed7c"
    );
    assert_eq!(
        md5_hex(&format!("demoroom1,room2,room3,room4test{KEY}")),
        "f9e5da4de0b56cbf5111e9fc8f3ce67c"
    );
    let relay = start().await?;
    let addr = relay.addr("im");
    let base = format!("http://{addr}");
    let mut d = SioDriver::start().await?;
    d.connect("a", 2, &format!("{base}/?userid=1&username=tom&source=demo&room_ids=room1,room2&sign=e59b91ea6d0980ddcdd968c630c2ed7c"), json!({})).await?;
    let sign_b = md5_hex(&format!("demoroom2,room3{KEY}"));
    d.connect(
        "b",
        2,
        &format!("{base}/?userid=2&username=ann&source=demo&room_ids=room2,room3&sign={sign_b}"),
        json!({}),
    )
    .await?;
    d.wait_transport("a", "websocket").await?;

    // Backend notify to four rooms: one copy per room the client is in.
    let body = "source=demo&room_id=room1%2Croom2%2Croom3%2Croom4&data=test&filename=test.log&sign=f9e5da4de0b56cbf5111e9fc8f3ce67c";
    let (s, b) = http(
        addr,
        "POST",
        "/api/notify",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .await?;
    assert_eq!(
        (s, b.as_str()),
        (
            200,
            r#"{"code":1,"msg":"message notify successed!","data":""}"#
        )
    );
    let m = d.next("a", "event", Some("newMsg")).await?;
    assert_eq!(
        m["args"],
        json!([{"source": "demo", "data": "test", "room_id": "room1", "filename": "test.log", "from_sys": true, "ip": "127.0.0.1"}])
    );
    assert_eq!(
        d.next("a", "event", Some("newMsg")).await?["args"][0]["room_id"],
        "room2"
    );
    assert_eq!(
        d.next("b", "event", Some("newMsg")).await?["args"][0]["room_id"],
        "room2"
    );
    assert_eq!(
        d.next("b", "event", Some("newMsg")).await?["args"][0]["room_id"],
        "room3"
    );

    // The message log: <log_dir>/<date>/demo_test.log, one line.
    let logs = relay.dir.path().join("logs").join("socket-im");
    relay
        .eventually("log line written", |r| r.metric("log_lines") == 1)
        .await?;
    let day = std::fs::read_dir(&logs)?
        .flatten()
        .next()
        .map(|e| e.path())
        .unwrap_or_default();
    let line = std::fs::read_to_string(day.join("demo_test.log"))?;
    assert!(
        line.starts_with("\r\n<br>")
            && line.contains("[127.0.0.1] message:{")
            && line.contains("\"source\":\"demo\""),
        "{line:?}"
    );
    assert!(
        !line.contains("sign"),
        "published JSON without the sign: {line}"
    );
    // The published JSON as the original logged it: all rooms, from_sys and the ip.
    let json_part = line.split_once("message:").map_or("", |(_, j)| j);
    let published: Value = serde_json::from_str(json_part)?;
    assert_eq!(published["from_sys"], true, "{line}");
    assert_eq!(published["ip"], "127.0.0.1", "{line}");
    assert!(
        published["room_id"]
            .as_str()
            .is_some_and(|r| r.contains(',')),
        "{line}"
    );

    // GET /readmsg answers with that file ([proposed]; the original never answered).
    let (s, b) = get(addr, "/readmsg?source=demo&filename=test.log").await?;
    assert_eq!((s, b.as_str()), (200, line.as_str()));
    let (s, b) = get(addr, "/readmsg?source=demo&filename=none.log").await?;
    assert_eq!((s, b.as_str()), (200, ""), "no such file: empty");
    for (q, msg) in [
        (
            format!("source=demo&filename={}", enc("../../relay.toml")),
            "filename can not contain '/', '\\' or '..'!",
        ),
        ("filename=test.log".to_owned(), "source can not be null!"),
        (
            "source=nope&filename=test.log".to_owned(),
            "this source can not be configured!",
        ),
    ] {
        let (s, b) = get(addr, &format!("/readmsg?{q}")).await?;
        assert_eq!(
            (s, b),
            (200, json!({"code": 0, "msg": msg, "data": ""}).to_string()),
            "{q}"
        );
    }

    // Error paths of /api/notify.
    for (body, msg) in [
        (
            "source=demo&room_id=room1&data=test&sign=0000",
            "api notify sign verify failed!",
        ),
        ("room_id=room1&data=test&sign=x", "source can not be null!"),
        ("source=demo&room_id=room1&sign=x", "data can not be null!"),
        (
            "source=nope&room_id=room1&data=test&sign=x",
            "this source can not be configured!",
        ),
    ] {
        let (s, b) = http(
            addr,
            "POST",
            "/api/notify",
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
        )
        .await?;
        assert_eq!(
            (s, b),
            (200, json!({"code": 0, "msg": msg, "data": ""}).to_string())
        );
    }
    let sneaky = format!(
        "source=demo&room_id=room1&data=x&filename={}&sign={}",
        enc("../../evil.log"),
        md5_hex(&format!("demoroom1x{KEY}"))
    );
    let (_, b) = http(
        addr,
        "POST",
        "/api/notify",
        Some("application/x-www-form-urlencoded"),
        sneaky.as_bytes(),
    )
    .await?;
    assert!(b.contains("\"code\":0"), "traversal refused: {b}");

    // postMsg from a client reaches the room.
    d.emit("a", "postMsg", json!(["hi", "room2"]), false)
        .await?;
    let m = d.next("b", "event", Some("newMsg")).await?;
    assert_eq!(
        m["args"],
        json!([{"source": "demo", "data": "hi", "room_id": "room2", "from_sys": true}])
    );
    d.emit("a", "postMsg", json!(["", "room2"]), false).await?;
    assert_eq!(
        d.next("a", "event", Some("sys_error")).await?["args"],
        json!(["data can not be null!"])
    );

    // refreshPage to one raw room name.
    let (s, b) = get(addr, "/refreshpage?room=demoroom3").await?;
    assert_eq!((s, b.as_str()), (200, "refreshPage:demoroom3"));
    assert_eq!(
        d.next("b", "event", Some("refreshPage")).await?["args"],
        json!([])
    );

    // A bad connect sign: sys_error, and never connected.
    d.send(json!({"op": "connect", "name": "bad", "version": 2, "url": format!("{base}/?source=demo&room_ids=room1&sign=0123"), "opts": {"reconnection": false}})).await?;
    assert_eq!(
        d.next("bad", "event", Some("sys_error")).await?["args"],
        json!(["sign verify failed!"])
    );
    assert!(
        !d.sees_within(Duration::from_millis(500), |v| v["name"] == "bad"
            && v["type"] == "connect")
            .await?
    );

    // watch_quit: the room hears the user leave.
    let sign_q = md5_hex(&format!("demoroom3{KEY}"));
    d.connect(
        "q",
        2,
        &format!(
            "{base}/?userid=3&username=joe&source=demo&room_ids=room3&watch_quit=1&sign={sign_q}"
        ),
        json!({}),
    )
    .await?;
    d.send(json!({"op": "close", "name": "q"})).await?;
    let m = d.next("b", "event", Some("newMsg")).await?;
    assert_eq!(
        m["args"][0]["data"],
        json!({"username": "joe", "key": "user_quit", "msg": "joe退出群聊"})
    );
    assert_eq!(m["args"][0]["room_id"], "room3");
    d.exit().await
}
