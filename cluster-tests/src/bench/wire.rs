//! The generator's HTTP/1.1 client: one keep-alive connection per closed-loop client, written
//! and read in that client's own task, with the request built and the response parsed in one
//! buffer each.
//!
//! The generator shares the machine's two cores with the three nodes it measures, so every
//! microsecond it spends is one the nodes do not get. A general client (reqwest over
//! hyper-util's pool) costs about 30 µs of CPU per request here: a pool checkout and check-in
//! under a lock, and a hand-off to the task that drives the connection and back, each a
//! wake-up. This one writes the request with one system call and reads the answer with
//! usually one more, as wrk does. Both systems are driven through it.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head or body accepted.
const MAX_RESPONSE_BYTES: usize = 16 << 20;
/// Headers parsed per response.
const MAX_HEADERS: usize = 32;

/// No answer: refused, reset, timed out, or not HTTP. A write may or may not have applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

/// One keep-alive connection to `addr` (`host:port`), opened on first use and again after an
/// error.
pub struct Wire {
    addr: String,
    timeout: Duration,
    stream: Option<TcpStream>,
    /// `Authorization: Bearer …`, when the cluster has a token file.
    authorization: Option<String>,
    out: Vec<u8>,
    buf: Vec<u8>,
    /// Where the last response's body lies in `buf`.
    body: std::ops::Range<usize>,
}

impl Wire {
    /// `addr` is `host:port`, or an `http://host:port` URL.
    pub fn new(addr: &str, timeout: Duration) -> Wire {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        Wire {
            addr: addr.to_string(),
            timeout,
            stream: None,
            authorization: None,
            out: Vec::with_capacity(512),
            buf: Vec::with_capacity(4096),
            body: 0..0,
        }
    }

    /// Sends `token` as a bearer token with every request.
    pub fn with_token(mut self, token: Option<&str>) -> Wire {
        self.authorization = token.map(|t| format!("Bearer {t}"));
        self
    }

    pub async fn get(&mut self, path: &str) -> Result<u16, WireError> {
        self.exchange("GET", path, None).await
    }

    pub async fn post(&mut self, path: &str, json: &[u8]) -> Result<u16, WireError> {
        self.exchange("POST", path, Some(json)).await
    }

    /// The body of the last response.
    pub fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// Sends one request and reads its response; returns the status. A connection that failed
    /// or timed out is closed, so the next request opens a new one.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        json: Option<&[u8]>,
    ) -> Result<u16, WireError> {
        self.out.clear();
        self.out.extend_from_slice(method.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.out.extend_from_slice(self.addr.as_bytes());
        if let Some(auth) = &self.authorization {
            self.out.extend_from_slice(b"\r\nAuthorization: ");
            self.out.extend_from_slice(auth.as_bytes());
        }
        if let Some(json) = json {
            self.out
                .extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
            self.out
                .extend_from_slice(itoa::Buffer::new().format(json.len()).as_bytes());
        }
        self.out.extend_from_slice(b"\r\n\r\n");
        if let Some(json) = json {
            self.out.extend_from_slice(json);
        }
        let result = match tokio::time::timeout(self.timeout, self.round_trip()).await {
            Ok(r) => r,
            Err(_) => Err(WireError(format!("no answer within {:?}", self.timeout))),
        };
        match result {
            Ok((status, keep_alive)) => {
                if !keep_alive {
                    self.stream = None;
                }
                Ok(status)
            }
            Err(e) => {
                self.stream = None;
                self.body = 0..0;
                Err(e)
            }
        }
    }

    async fn round_trip(&mut self) -> Result<(u16, bool), WireError> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(&self.addr)
                .await
                .map_err(|e| WireError(format!("connect {}: {e}", self.addr)))?;
            stream
                .set_nodelay(true)
                .map_err(|e| WireError(e.to_string()))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream
            .write_all(&self.out)
            .await
            .map_err(|e| WireError(format!("write: {e}")))?;
        self.buf.clear();
        let (status, head_len, framing, keep_alive) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = response.code.unwrap_or(0);
                    let (framing, keep_alive) = framing_of(&response)?;
                    break (status, n, framing, keep_alive);
                }
                Ok(httparse::Status::Partial) => read_more(stream, &mut self.buf).await?,
                Err(e) => return Err(WireError(format!("bad response head: {e}"))),
            }
        };
        self.body = match framing {
            Framing::Length(len) => {
                if len > MAX_RESPONSE_BYTES {
                    return Err(WireError(format!("response body of {len} bytes")));
                }
                while self.buf.len() < head_len + len {
                    read_more(stream, &mut self.buf).await?;
                }
                head_len..head_len + len
            }
            Framing::Chunked => {
                let end = dechunk(stream, &mut self.buf, head_len).await?;
                head_len..end
            }
        };
        Ok((status, keep_alive))
    }
}

enum Framing {
    Length(usize),
    Chunked,
}

fn framing_of(response: &httparse::Response<'_, '_>) -> Result<(Framing, bool), WireError> {
    let mut framing = Framing::Length(0);
    let mut keep_alive = response.version == Some(1);
    for h in response.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| WireError("bad content-length".into()))?;
            framing = Framing::Length(len);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            && h.value.eq_ignore_ascii_case(b"chunked")
        {
            framing = Framing::Chunked;
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive = !h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok((framing, keep_alive))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), WireError> {
    if buf.len() >= MAX_RESPONSE_BYTES {
        return Err(WireError("response too large".into()));
    }
    buf.reserve(4096);
    let n = stream
        .read_buf(buf)
        .await
        .map_err(|e| WireError(format!("read: {e}")))?;
    if n == 0 {
        return Err(WireError(
            "connection closed before the response ended".into(),
        ));
    }
    Ok(())
}

/// Decodes a chunked body that starts at `buf[from..]` in place; returns where it ends.
async fn dechunk(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    from: usize,
) -> Result<usize, WireError> {
    // `end` is the end of the decoded body so far; `at` where the next chunk's size line is.
    let (mut end, mut at) = (from, from);
    loop {
        let line_end = loop {
            if let Some(i) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                break at + i;
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[at..line_end])
            .ok()
            .map(|s| s.split(';').next().unwrap_or("").trim())
            .ok_or_else(|| WireError("bad chunk size".into()))?;
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| WireError(format!("bad chunk size {size_text:?}")))?;
        if end - from + size > MAX_RESPONSE_BYTES {
            return Err(WireError("response too large".into()));
        }
        let data = line_end + 2;
        // The chunk, and the CRLF after it (after the last, empty chunk: the final CRLF).
        while buf.len() < data + size + 2 {
            read_more(stream, buf).await?;
        }
        if &buf[data + size..data + size + 2] != b"\r\n" {
            return Err(WireError("chunk not followed by CRLF".into()));
        }
        if size == 0 {
            return Ok(end);
        }
        buf.copy_within(data..data + size, end);
        end += size;
        at = data + size + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request with the next of `replies`, written in pieces of
    /// `piece` bytes, and records the requests it read.
    async fn serve(
        replies: Vec<&'static [u8]>,
        piece: usize,
    ) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for reply in replies {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.unwrap();
                seen.extend_from_slice(&chunk[..n]);
                for part in reply.chunks(piece) {
                    s.write_all(part).await.unwrap();
                    s.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            seen
        });
        (addr, handle)
    }

    #[tokio::test]
    async fn reads_length_framed_and_chunked_bodies_on_one_connection() {
        let replies: Vec<&'static [u8]> = vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 14\r\ncontent-type: application/json\r\n\r\n{\"revision\":7}",
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ];
        // Served a few bytes at a time, so every parse meets a partial head or body.
        let (addr, server) = serve(replies, 5).await;
        let mut wire = Wire::new(&format!("http://{addr}/"), Duration::from_secs(5));
        assert_eq!(wire.post("/v1/x", b"{\"e\":1}").await, Ok(200));
        assert_eq!(wire.body(), b"{\"revision\":7}");
        assert_eq!(wire.get("/y").await, Ok(409));
        assert_eq!(wire.body(), b"{\"a\":1}");
        assert_eq!(wire.get("/z").await, Ok(204));
        assert_eq!(wire.body(), b"");
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(seen.starts_with(&format!(
            "POST /v1/x HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{{\"e\":1}}GET /y HTTP/1.1\r\n"
        )), "{seen}");
    }

    #[tokio::test]
    async fn a_cut_response_is_an_error_and_the_next_request_reconnects() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            // First connection: half a response, then closed.
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut [0u8; 4096]).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{\"a\"")
                .await
                .unwrap();
            drop(s);
            // Second connection: a whole one.
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut [0u8; 4096]).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                .await
                .unwrap();
        });
        let mut wire = Wire::new(&addr, Duration::from_secs(5));
        let err = wire.get("/").await.unwrap_err();
        assert!(
            err.0.contains("closed before the response ended"),
            "{err:?}"
        );
        assert_eq!(wire.get("/").await, Ok(200));
        assert_eq!(wire.body(), b"{}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_garbage_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.read(&mut [0u8; 4096]).await.unwrap();
            // Say nothing until the client gives up and reconnects.
            let (mut s2, _) = listener.accept().await.unwrap();
            let _ = s2.read(&mut [0u8; 4096]).await.unwrap();
            s2.write_all(b"SMTP ready\r\n\r\n").await.unwrap();
            drop(s);
        });
        let mut wire = Wire::new(&addr, Duration::from_millis(200));
        let err = wire.get("/").await.unwrap_err();
        assert!(err.0.contains("no answer within"), "{err:?}");
        let err = wire.get("/").await.unwrap_err();
        assert!(err.0.contains("bad response head"), "{err:?}");
        server.await.unwrap();
    }
}
