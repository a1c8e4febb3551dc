//! Slow and greedy clients against one node of a real cluster: 2,000 idle connections and 50
//! senders of a byte a second (half dribbling their headers, half their bodies) leave a normal
//! client's p99 within twice its unloaded value; the header timeout closes the idle and the
//! dribbling connections, the body timeout answers 408 and closes; and past
//! `--max-connections` the node accepts nothing until a connection closes.

use std::time::{Duration, Instant};

use raftflow_client::types::CreateWorkflow;
use raftflow_cluster_tests::Cluster;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const IDLE: usize = 2_000;
const SLOW: usize = 50;
const HEADER_TIMEOUT_MS: u64 = 8_000;
const BODY_TIMEOUT_MS: u64 = 3_000;
/// Room for the attack, the normal client's connection and a few more.
const MAX_CONNECTIONS: usize = IDLE + SLOW + 10;
const SAMPLES: usize = 1_000;

/// This process opens a few thousand sockets, and so does the node: lift the soft limit on
/// open files to the hard one (the nodes inherit it).
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur as usize > 2 * MAX_CONNECTIONS + 200,
        "the hard limit on open files ({}) is too low for this test",
        lim.rlim_max
    );
}

/// p99 of `SAMPLES` linearizable reads of `id` through `c`, in milliseconds.
async fn p99_ms(c: &raftflow_client::client::Client, id: &str) -> f64 {
    let mut took = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let t = Instant::now();
        c.get_workflow(id, false).await.expect("a read");
        took.push(t.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(|a, b| a.partial_cmp(b).unwrap());
    took[SAMPLES * 99 / 100]
}

/// Whether the server closed `s` (a read returns end of file or an error) within `within`.
async fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue, // an answer (a 408, say) before the close
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_do_not_slow_the_others() {
    raise_nofile_limit();
    let max_connections = MAX_CONNECTIONS.to_string();
    let header_timeout = HEADER_TIMEOUT_MS.to_string();
    let body_timeout = BODY_TIMEOUT_MS.to_string();
    let c = Cluster::start(
        3,
        2,
        &[
            "--max-connections",
            &max_connections,
            "--header-timeout-ms",
            &header_timeout,
            "--body-timeout-ms",
            &body_timeout,
        ],
    );
    c.wait_ready(Duration::from_secs(30)).await.unwrap();
    let addr = c.node(1).client.clone();
    let client = c.client(1);
    client
        .put_definition("order", &raftflow_cluster_tests::order_definition())
        .await
        .unwrap();
    client
        .create_workflow(&CreateWorkflow {
            id: Some("w1".into()),
            definition: "order".into(),
            version: None,
            context: Some(serde_json::json!({"n": 1})),
        })
        .await
        .unwrap();
    // Warm up, then the unloaded p99.
    p99_ms(&client, "w1").await;
    let unloaded = p99_ms(&client, "w1").await;

    // The attack: idle connections, and senders of a byte a second.
    let opened = Instant::now();
    // Each with when it was connected: the node's header timeout runs from its accept.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let s = TcpStream::connect(&addr).await.unwrap();
        idle.push((Instant::now(), s));
    }
    let connecting = opened.elapsed();
    let head_dribble =
        "POST /v1/workflows HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    let body_dribble = format!(
        "POST /v1/workflows HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: 1000\r\n\r\n{}",
        "{\"definition\":\"order\"".repeat(40)
    );
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let s = TcpStream::connect(&addr).await.unwrap();
        let (first, rest) = if i % 2 == 0 {
            // Dribbles its headers: never gets to a body.
            (Vec::new(), head_dribble.as_bytes().to_vec())
        } else {
            // Sends its headers at once, then dribbles the body.
            let cut = body_dribble.find("\r\n\r\n").unwrap() + 4;
            (
                body_dribble.as_bytes()[..cut].to_vec(),
                body_dribble.as_bytes()[cut..].to_vec(),
            )
        };
        slow.push(tokio::spawn(async move {
            let (mut rd, mut wr) = s.into_split();
            // Reads whatever the server answers, until it closes the connection.
            let reader = tokio::spawn(async move {
                let mut answer = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = rd.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    answer.extend_from_slice(&buf[..n]);
                }
                answer
            });
            wr.write_all(&first).await.ok();
            // A byte a second, until the server closes the connection (or 30 s).
            for b in rest.iter().take(30) {
                if reader.is_finished() || wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let answer = tokio::time::timeout(Duration::from_secs(5), reader)
                .await
                .expect("the server closed the connection")
                .unwrap();
            (i % 2 == 1, String::from_utf8_lossy(&answer).to_string())
        }));
    }
    let loaded = p99_ms(&client, "w1").await;
    let load_time = opened.elapsed();
    eprintln!(
        "p99 of a read: {unloaded:.2} ms unloaded, {loaded:.2} ms with {IDLE} idle connections \
         and {SLOW} byte-a-second senders (measured {:.1} s into the attack; the idle ones took \
         {:.1} s to connect)",
        load_time.as_secs_f64(),
        connecting.as_secs_f64()
    );
    // Twice the unloaded p99, counted from at least a millisecond: below that, one scheduler
    // hiccup on a two-core machine is the whole difference.
    assert!(
        loaded <= 2.0 * unloaded.max(1.0),
        "p99 {loaded:.2} ms under the attack, over twice the unloaded {unloaded:.2} ms"
    );

    // The node is at its bound: a new connection is not served until one closes. (The fill
    // counts the normal client's connection as free: one more waits in the kernel's queue.)
    let mut fill = Vec::new();
    for _ in IDLE + SLOW..MAX_CONNECTIONS {
        fill.push(TcpStream::connect(&addr).await.unwrap());
    }
    let mut extra = TcpStream::connect(&addr).await.unwrap();
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        opened.elapsed() + Duration::from_millis(1_500) < Duration::from_millis(HEADER_TIMEOUT_MS),
        "too slow to check the bound before the header timeout frees connections"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(1_000), extra.read(&mut buf))
            .await
            .is_err(),
        "a connection past --max-connections was served"
    );

    // The header timeout closes the idle connections (and the bound frees up: the waiting
    // connection is served).
    // Within 3 s of each connection's own timeout: opening 2,000 of them on a loaded two-core
    // machine has taken seconds (CI once saw connection 1,300 still open 11 s after the first).
    let wait = Duration::from_millis(HEADER_TIMEOUT_MS + 3_000);
    for (i, (connected, s)) in idle.iter_mut().enumerate().step_by(100) {
        assert!(
            closed_by_server(s, wait.saturating_sub(connected.elapsed())).await,
            "idle connection {i} still open {:?} after it was connected (header timeout {} ms)",
            connected.elapsed(),
            HEADER_TIMEOUT_MS
        );
    }
    let n = tokio::time::timeout(Duration::from_secs(10), extra.read(&mut buf))
        .await
        .expect("the waiting connection is served once others close")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // Header dribblers were cut off by the header timeout (no answer); body dribblers got 408
    // `request_timeout` after the body timeout, and their connections closed.
    for task in slow {
        let (body_sender, answer) = task.await.unwrap();
        if body_sender {
            assert!(
                answer.starts_with("HTTP/1.1 408") && answer.contains("request_timeout"),
                "a body dribbler got: {answer:?}"
            );
            assert!(answer.to_ascii_lowercase().contains("connection: close"));
        } else {
            assert!(answer.is_empty(), "a header dribbler got: {answer:?}");
        }
    }
    // Finished before a dribbler's 30 bytes: the timeouts cut them, not their end.
    assert!(opened.elapsed() < Duration::from_secs(30));

    // And the node serves as before.
    client.get_workflow("w1", false).await.unwrap();
}
