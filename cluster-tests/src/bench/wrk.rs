//! Cells driven by `wrk`, a load tool that is not ours, so that the figures do not rest on our
//! generator alone: one thread, every connection to one node's address, the way a user tries
//! a server. raftflow gets the realistic update (an event with a 200-byte payload on an order
//! picked at random); etcd, whose gateway has no read-modify-write in one request, gets a put
//! of the same 1 KiB order value to a key picked at random.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::load::{order_context, order_key, update_payload, Measured};
use super::procstat::{self, Usage};

/// The Lua script for `wrk -s`: random orders of the population, one request each.
fn script(requests: &[(String, String)], token: Option<&str>, seed: u64) -> String {
    let mut lua = format!("math.randomseed({seed})\nlocal reqs = {{\n");
    for (path, body) in requests {
        lua.push_str(&format!(
            "  {{{}, {}}},\n",
            lua_string(path),
            lua_string(body)
        ));
    }
    lua.push_str(
        "}\nwrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
         request = function()\n  local r = reqs[math.random(#reqs)]\n  \
         return wrk.format(nil, r[1], nil, r[2])\nend\n",
    );
    if let Some(token) = token {
        lua.push_str(&format!(
            "wrk.headers[\"Authorization\"] = {}\n",
            lua_string(&format!("Bearer {token}"))
        ));
    }
    lua
}

/// A Lua string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The requests raftflow's wrk cell picks from: an update of each order.
pub fn raftflow_requests(prefix: &str, population: usize) -> Vec<(String, String)> {
    (0..population)
        .map(|i| {
            let body = serde_json::json!({"event": "update", "payload": update_payload(i as u64)});
            (
                format!("/v1/workflows/{}/events", order_key(prefix, i)),
                body.to_string(),
            )
        })
        .collect()
}

/// The requests etcd's wrk cell picks from: a put of each order's 1 KiB value.
pub fn etcd_requests(prefix: &str, population: usize) -> Vec<(String, String)> {
    (0..population)
        .map(|i| {
            let body = serde_json::json!({
                "key": B64.encode(order_key(prefix, i)),
                "value": B64.encode(order_context(i).to_string()),
            });
            ("/v3/kv/put".to_string(), body.to_string())
        })
        .collect()
}

/// Runs `wrk` with `connections` connections to `addr` for `duration` after `warmup`,
/// measuring the CPU of `pids` over the measured run.
pub async fn cell(
    addr: &str,
    token: Option<&str>,
    requests: &[(String, String)],
    connections: usize,
    warmup: Duration,
    duration: Duration,
    pids: &[u32],
) -> anyhow::Result<Measured> {
    let dir = tempfile::tempdir()?;
    let lua = dir.path().join("cell.lua");
    std::fs::write(&lua, script(requests, token, 7))?;
    if !warmup.is_zero() {
        run_wrk(addr, &lua, connections, warmup).await?;
    }
    let before = Usage::sample_all(pids);
    let out = run_wrk(addr, &lua, connections, duration).await?;
    let peaks: Vec<u64> = pids.iter().map(|p| procstat::rss_bytes(*p)).collect();
    let mut measured = parse(&out).with_context(|| format!("wrk's output:\n{out}"))?;
    measured.nodes = Usage::since(&before, &peaks);
    Ok(measured)
}

async fn run_wrk(
    addr: &str,
    lua: &std::path::Path,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    let out = tokio::process::Command::new("wrk")
        .args(["-t1", &format!("-c{connections}")])
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .args(["--latency", "--timeout", "5s", "-s"])
        .arg(lua)
        .arg(format!("http://{}", addr.trim_start_matches("http://")))
        .output()
        .await
        .context("running wrk (apt-get install wrk; `make bench` installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// A latency as wrk prints it (`812.00us`, `13.20ms`, `1.02s`), in ms.
fn millis(s: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = s.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// wrk's summary: requests/s, the latency distribution, and the answers that were not 2xx
/// (counted as errors) and socket errors.
fn parse(out: &str) -> anyhow::Result<Measured> {
    let mut percentiles = BTreeMap::new();
    let mut rate = None;
    let mut total = None;
    let mut seconds = None;
    let mut errors = BTreeMap::new();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p @ ("50%" | "99%" | "90%" | "75%"), v] => {
                percentiles.insert(*p, millis(v).context("a latency")?);
            }
            ["Requests/sec:", v] => rate = v.parse::<f64>().ok(),
            [n, "requests", "in", t, ..] => {
                total = n.parse::<u64>().ok();
                seconds = millis(t.trim_end_matches(',')).map(|ms| ms / 1000.0);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                errors.insert("non_2xx".to_string(), n.parse()?);
            }
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.join(" ").split(',') {
                    let mut kv = pair.split_whitespace();
                    if let (Some(k), Some(v)) = (kv.next(), kv.next()) {
                        let v: u64 = v.parse()?;
                        if v > 0 {
                            errors.insert(format!("socket_{k}"), v);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let rate = rate.context("no Requests/sec line")?;
    let total = total.context("no request count")?;
    let failed: u64 = errors.values().sum();
    let seconds = seconds.unwrap_or(total as f64 / rate.max(1e-9));
    let ok = total.saturating_sub(failed);
    Ok(Measured {
        ops: ok,
        seconds,
        ops_per_s: ok as f64 / seconds,
        p50_ms: *percentiles.get("50%").context("no 50% latency")?,
        p99_ms: *percentiles.get("99%").context("no 99% latency")?,
        // wrk's distribution stops at 99%.
        p999_ms: *percentiles.get("99%").unwrap_or(&0.0),
        max_ms: 0.0,
        errors,
        error_examples: BTreeMap::new(),
        nodes: Vec::new(),
        generator_cpu_s: 0.0,
        host_memory_ns: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "Running 10s test @ http://127.0.0.1:7001
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.71ms    2.30ms  40.12ms   80.00%
    Req/Sec     9.53k   512.00    10.20k    70.00%
  Latency Distribution
     50%    6.35ms
     75%    7.60ms
     90%    9.10ms
     99%   13.20ms
  94860 requests in 10.00s, 60.12MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   9486.00
Transfer/sec:      6.01MB
";

    #[test]
    fn wrks_summary_parses_and_answers_that_are_not_2xx_count_as_errors() {
        let m = parse(OUT).unwrap();
        assert_eq!(m.ops, 94860 - 12);
        assert_eq!(m.errors["non_2xx"], 12);
        assert!((m.seconds - 10.0).abs() < 1e-9);
        assert!((m.p50_ms - 6.35).abs() < 1e-9 && (m.p99_ms - 13.2).abs() < 1e-9);
        assert!((m.ops_per_s - 9484.8).abs() < 1e-6);
        assert!(parse("garbage").is_err());
        assert_eq!(millis("812.00us"), Some(0.812));
        assert_eq!(millis("1.50s"), Some(1500.0));
    }

    #[test]
    fn the_script_quotes_bodies_for_lua() {
        let lua = script(&[("/p".into(), r#"{"a":"b\"c"}"#.into())], Some("t"), 1);
        assert!(lua.contains(r#"{"/p", "{\"a\":\"b\\\"c\"}"}"#), "{lua}");
        assert!(
            lua.contains(r#"wrk.headers["Authorization"] = "Bearer t""#),
            "{lua}"
        );
    }
}
