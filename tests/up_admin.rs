//! `concord up`'s supervisor admin API against a real cluster: orders reach real
//! processes (pids change, /proc shows a stopped process, the consensus sees a liar).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use concord::pb::predict::v1::{predictor_client::PredictorClient, Policy, PredictRequest};
use concord_testkit::eventually;
use concord_testkit::process::{command, follow_stdout, wait_for_line, KillOnDrop};
use serde_json::Value;

const TOKEN: &str = "up-admin-test-token";

/// One HTTP/1.1 request (`Connection: close`); returns the status and the JSON body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the admin API");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(20),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("answer in time")
    .expect("read answer");
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let json = serde_json::from_str(body).unwrap_or(Value::Null);
    (status, json)
}

/// The launcher's metrics page.
async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("send");
    let mut page = String::new();
    stream.read_to_string(&mut page).await.expect("read");
    page
}

async fn children(addr: SocketAddr) -> Vec<Value> {
    let (status, body) = http(addr, "GET", "/v1/children", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    body["children"].as_array().expect("children").clone()
}

async fn child(addr: SocketAddr, name: &str) -> Value {
    children(addr)
        .await
        .into_iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} listed"))
}

async fn act(addr: SocketAddr, name: &str, action: &str, body: Option<&str>) -> (u16, Value) {
    http(
        addr,
        "POST",
        &format!("/v1/children/{name}/{action}"),
        Some(TOKEN),
        body,
    )
    .await
}

/// `act`, which must answer 200 with `field` = `want` in the child it returns.
async fn act_ok(
    addr: SocketAddr,
    name: &str,
    action: &str,
    body: Option<&str>,
    (field, want): (&str, &str),
) -> Value {
    let (status, body) = act(addr, name, action, body).await;
    assert_eq!((status, body[field].as_str()), (200, Some(want)), "{body}");
    body
}

/// Whether child `name` runs again under a pid other than `old_pid` within 30 s.
async fn restarted(addr: SocketAddr, name: &str, old_pid: u64) -> bool {
    eventually(Duration::from_secs(30), || async {
        let c = child(addr, name).await;
        c["state"] == "running" && c["pid"].as_u64().is_some_and(|p| p != old_pid)
    })
    .await
}

/// Whether process `pid` is (`stopped`) or is not stopped (state T) within 5 s; SIGSTOP
/// and SIGCONT are delivered asynchronously.
async fn becomes_stopped(pid: u64, stopped: bool) -> bool {
    eventually(Duration::from_secs(5), || async {
        (proc_state(pid) == Some('T')) == stopped
    })
    .await
}

/// The process state letter in /proc/<pid>/stat (R, S, T…).
fn proc_state(pid: u64) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

/// The label `node` voted for in the aggregator's consensus on one fixed sample (Err:
/// what went wrong, for the failure message).
async fn vote_of(aggregator: SocketAddr, node: &str) -> Result<u32, String> {
    let channel =
        concord::grpc::lazy_channel(&aggregator.to_string()).map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        PredictorClient::new(channel).predict(PredictRequest {
            features: vec![6.3, 3.3, 6.0, 2.5],
            policy: Policy::Mean as i32,
        }),
    )
    .await
    .map_err(|_| "timed out".to_owned())?
    .map_err(|e| e.to_string())?
    .into_inner();
    reply
        .votes
        .iter()
        .find(|v| v.node_id == node && !v.probabilities.is_empty())
        .map(|v| v.label)
        .ok_or_else(|| format!("no vote of {node} in {:?}", reply.votes))
}

fn pid_of(child: &Value) -> u64 {
    child["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no pid: {child}"))
}

/// The admin API kills (pid changes, restarts counted), freezes (state T in /proc) and
/// thaws, stops and starts a child, turns a node liar (the consensus sees its vote
/// flip), and refuses what it must: no token, unknown child, behaviour of a shop or a
/// bad behaviour, an order in the wrong state.
#[tokio::test(flavor = "multi_thread")]
async fn admin_api_orders_reach_real_processes() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut up = command(&[
        "up",
        "--auto-ports",
        "--nodes",
        "3",
        "--replication",
        "none",
        "--metrics-addr",
        "127.0.0.1:0",
        "--data-dir",
        data.path().to_str().expect("utf-8 path"),
    ])
    .env("CONCORD_ADMIN_TOKEN", TOKEN)
    .stdout(Stdio::piped())
    .spawn()
    .expect("spawn concord up");
    let lines = follow_stdout(&mut up);
    let mut up = KillOnDrop(up);
    let metrics: SocketAddr = wait_for_line(&lines, Duration::from_secs(90), |l| {
        l.strip_prefix("concord up metrics on http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .and_then(|a| a.parse().ok())
    })
    .expect("launcher metrics announced");
    let api: SocketAddr = wait_for_line(&lines, Duration::from_secs(90), |l| {
        l.strip_prefix("concord up: supervisor admin API at http://")
            .and_then(|a| a.trim().parse().ok())
    })
    .expect("admin API announced");
    let written =
        std::fs::read_to_string(data.path().join("supervisor-admin.addr")).expect("address file");
    assert_eq!(written.trim(), api.to_string());

    // Refusals.
    let (status, body) = http(api, "GET", "/v1/children", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_string(), "{body}");
    let (status, _) = http(api, "GET", "/v1/children", Some("wrong"), None).await;
    assert_eq!(status, 401);
    let (status, body) = act(api, "nobody", "kill", None).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = act(
        api,
        "shop-1",
        "behaviour",
        Some(r#"{"behaviour":"inverted"}"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = act(api, "node-2", "behaviour", Some(r#"{"behaviour":"bogus"}"#)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown behaviour")),
        "{body}"
    );

    let listed = children(api).await;
    let names: Vec<&str> = listed.iter().filter_map(|c| c["name"].as_str()).collect();
    for name in [
        "registry",
        "node-1",
        "node-2",
        "aggregator",
        "shop-1",
        "gateway",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let node1 = child(api, "node-1").await;
    assert_eq!(node1["state"], "running", "{node1}");
    assert_eq!(node1["behaviour"], "honest", "{node1}");
    assert_eq!(child(api, "shop-1").await["behaviour"], Value::Null);

    // Kill: a new process, one more restart.
    let old_pid = pid_of(&node1);
    let (status, body) = act(api, "node-1", "kill", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        restarted(api, "node-1", old_pid).await,
        "node-1 not restarted after kill"
    );
    assert!(child(api, "node-1").await["restarts"].as_u64() >= Some(1));
    assert_ne!(proc_state(old_pid), Some('S'), "old process still there");

    // Freeze / thaw: the process is really stopped, then continues.
    let pid = pid_of(&child(api, "node-1").await);
    act_ok(api, "node-1", "freeze", None, ("state", "frozen")).await;
    assert!(
        becomes_stopped(pid, true).await,
        "frozen process is not stopped: {:?}",
        proc_state(pid)
    );
    let (status, _) = act(api, "node-1", "freeze", None).await;
    assert_eq!(status, 409, "freezing twice");
    act_ok(api, "node-1", "thaw", None, ("state", "running")).await;
    assert!(
        becomes_stopped(pid, false).await,
        "thawed process still stopped"
    );
    assert_eq!(
        pid_of(&child(api, "node-1").await),
        pid,
        "thaw keeps the process"
    );

    // Behaviour: node-2 restarts inverted and the consensus sees its vote flip.
    let aggregator: SocketAddr = child(api, "aggregator").await["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .expect("aggregator address");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let honest = loop {
        let vote = vote_of(aggregator, "node-2").await;
        if let Ok(label) = vote {
            break label;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node-2 never voted: {vote:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let node2_pid = pid_of(&child(api, "node-2").await);
    let inverted = Some(r#"{"behaviour":"inverted"}"#);
    act_ok(
        api,
        "node-2",
        "behaviour",
        inverted,
        ("behaviour", "inverted"),
    )
    .await;
    assert!(
        restarted(api, "node-2", node2_pid).await,
        "node-2 not restarted with its new behaviour"
    );
    let lie = (honest + 1) % 3;
    assert!(
        eventually(Duration::from_secs(30), || async {
            vote_of(aggregator, "node-2").await == Ok(lie)
        })
        .await,
        "node-2's vote did not flip from {honest} to {lie}"
    );
    let honest_again = Some(r#"{"behaviour":"honest"}"#);
    act_ok(
        api,
        "node-2",
        "behaviour",
        honest_again,
        ("behaviour", "honest"),
    )
    .await;

    // Stop / start: held down until started.
    let pid = pid_of(&child(api, "node-1").await);
    let body = act_ok(api, "node-1", "stop", None, ("state", "stopped")).await;
    assert_eq!(body["pid"], Value::Null, "{body}");
    assert!(
        proc_state(pid).is_none_or(|s| s == 'Z'),
        "stopped process still there"
    );
    let (status, _) = act(api, "node-1", "stop", None).await;
    assert_eq!(status, 409, "stopping twice");
    let (status, _) = act(api, "node-1", "kill", None).await;
    assert_eq!(status, 409, "killing a stopped child");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(child(api, "node-1").await["state"], "stopped", "held down");
    let (status, body) = act(api, "node-1", "start", None).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        eventually(Duration::from_secs(30), || async {
            child(api, "node-1").await["state"] == "running"
        })
        .await,
        "node-1 not running after start"
    );
    let (status, _) = act(api, "node-1", "start", None).await;
    assert_eq!(status, 409, "starting a running child");

    // Every order carried out is counted, by action and child.
    let page = scrape(metrics).await;
    for series in [
        r#"concord_up_admin_actions_total{action="kill",child="node-1"} 1"#,
        r#"concord_up_admin_actions_total{action="freeze",child="node-1"} 1"#,
        r#"concord_up_admin_actions_total{action="behaviour",child="node-2"} 2"#,
        r#"concord_up_admin_actions_total{action="start",child="node-1"} 1"#,
    ] {
        assert!(page.contains(series), "{series} missing from:\n{page}");
    }

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &up.0.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = up.0.try_wait().expect("wait") {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "up did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "up exits 0 after SIGTERM: {status}");
}
