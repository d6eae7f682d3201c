//! `examples/seeds/all.toml`: the five seed tenants in one relay process, each
//! answering on its own listeners, none seeing another's clients.

use anyhow::Result;
use relay_tests::{get, http, udp, ws, TestRelay, WAIT};
use serde_json::{json, Value};

const MSWOOLE_AUTH: &str = "bTF2BGJT*b2N8:JFzhNu1ZMJlVw3KookEl3shiDpYHb8pZMLFE4NpOVlrQp*nORu*n:tVjWrxPJNpzDLaZZQBNCyV4uajEHtT3OpTHr86BetknQJV9FO8A__";

#[tokio::test]
async fn all_five_tenants_in_one_process() -> Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seeds/all.toml");
    let mut text = std::fs::read_to_string(&path)?
        .replace("[server]\ndata_dir = \"../../relay-data/seeds\"\n", "");
    for port in [
        "0.0.0.0:2120",
        "0.0.0.0:2121",
        "0.0.0.0:9501",
        "127.0.0.1:8880",
        "127.0.0.1:9502",
        "0.0.0.0:7001",
        "0.0.0.0:4000",
        "0.0.0.0:20000",
    ] {
        text = text.replace(&format!("bind = \"{port}\""), "bind = \"127.0.0.1:0\"");
    }
    let relay = TestRelay::start(&text).await?;
    assert_eq!(relay.running.node.tenants.len(), 5);

    // 004 MSwoole: auth + routing.
    let mut m = ws(relay.addr("outside"), &format!("/live?auth={MSWOOLE_AUTH}")).await?;
    m.send(json!({"method": "index.index.index"})).await?;
    m.recv().await?;
    assert_eq!(m.recv().await?["event"], "success");

    // 003 socket-im: the worked-example notify.
    let body = "source=demo&room_id=room1%2Croom2%2Croom3%2Croom4&data=test&sign=f9e5da4de0b56cbf5111e9fc8f3ce67c";
    let (_, b) = http(
        relay.addr("im"),
        "POST",
        "/api/notify",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .await?;
    assert_eq!(
        b,
        r#"{"code":1,"msg":"message notify successed!","data":""}"#
    );

    // 002 egg: the MSwoole connection is not an egg socket.
    let env = json!({"timestamp": 1543469988762u64, "app": "signatureApp", "target": "x", "userId": "u", "sign": "236e7f552a5cde6002c14c2510df1ec1", "message": {}});
    let (s, _) = http(
        relay.addr("egg"),
        "POST",
        "/api/transportMessage",
        Some("application/json"),
        env.to_string().as_bytes(),
    )
    .await?;
    assert_eq!(s, 500);

    // 000 xiaoniu: HTTP push to nobody.
    let (_, b) = get(relay.addr("push"), "/?client_id=demo&content=x&room=r").await?;
    assert_eq!(
        serde_json::from_str::<Value>(&b)?,
        json!({"errcode": 1, "errmsg": "offline"})
    );

    // 001 swoole push: UDP, and the MSwoole user (id 1001) is no user here.
    let q = json!({"means": "is_on_line", "data": {"to_uid": "1001"}}).to_string();
    assert_eq!(
        udp("127.0.0.1", relay.addr("udp"), q.as_bytes(), WAIT)
            .await?
            .as_deref(),
        Some(r#"{"onLine":0}"#)
    );
    let (s, _) = http(
        relay.addr("api"),
        "POST",
        "/token",
        Some("application/x-www-form-urlencoded"),
        b"uid=1&source=a&token=t&sk=change-me",
    )
    .await?;
    assert_eq!(s, 200);
    Ok(())
}
