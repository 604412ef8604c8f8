//! A minimal HTTP/1.1 client over one keep-alive TCP connection: enough for `POST
//! /twins/{id}/methods` with a JSON body and a `Content-Length` answer, and nothing a timed
//! request would have to wait for beyond the server's answer.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One keep-alive connection to a node's REST API.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
}

/// A status code and a body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Vec<u8>,
}

impl Connection {
    pub(crate) async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(4096),
        })
    }

    /// `method path` with a JSON body and an `Authorization` header; reads the whole answer.
    pub(crate) async fn send_json(
        &mut self,
        method: &str,
        path: &str,
        authorization: &str,
        body: &str,
    ) -> Result<Answer, Box<dyn std::error::Error>> {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {authorization}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.stream.write_all(request.as_bytes()).await?;
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> Result<Answer, Box<dyn std::error::Error>> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("an answer without Content-Length: {head:?}"))?;
                let total = end + 4 + length;
                if self.buf.len() >= total {
                    let body = self.buf[end + 4..total].to_vec();
                    self.buf.drain(..total);
                    return Ok(Answer { status, body });
                }
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}
