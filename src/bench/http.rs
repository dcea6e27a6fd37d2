//! A minimal HTTP/1.1 client: one persistent keep-alive connection, one
//! request in flight, responses framed by `Content-Length` or chunked
//! encoding (or read to EOF when the server closes). Just enough for the
//! targets of the bench, with no pool that could open extra connections.

use std::io;
use std::io::Write as _;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::buf::ReadBuf;

const MAX_HEADERS: usize = 48;

pub struct HttpConn {
    stream: TcpStream,
    host: String,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
    /// Body of the last response.
    pub body: Vec<u8>,
    /// The server asked to close the connection after the last response.
    pub closed: bool,
    /// When set, the `x-causalkv-served-by` header of each response is kept
    /// in `served_by` (empty when absent).
    pub record_served_by: bool,
    pub served_by: Vec<u8>,
}

impl HttpConn {
    pub async fn connect(addr: &str) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            host: addr.to_string(),
            rbuf: ReadBuf::new(),
            wbuf: Vec::with_capacity(1024),
            body: Vec::with_capacity(1024),
            closed: false,
            record_served_by: false,
            served_by: Vec::new(),
        })
    }

    /// Sends one request and reads its whole response; returns the status.
    /// `body: None` sends no body (and no `Content-Length`).
    pub async fn request(&mut self, method: &str, path: &str, body: Option<&[u8]>) -> io::Result<u16> {
        if self.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "server closed the connection"));
        }
        self.wbuf.clear();
        self.wbuf.extend_from_slice(method.as_bytes());
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(path.as_bytes());
        self.wbuf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.wbuf.extend_from_slice(self.host.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        if let Some(body) = body {
            self.wbuf.extend_from_slice(b"Content-Type: application/json\r\nContent-Length: ");
            let _ = write!(self.wbuf, "{}", body.len());
            self.wbuf.extend_from_slice(b"\r\n\r\n");
            self.wbuf.extend_from_slice(body);
        } else {
            self.wbuf.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.wbuf).await?;
        self.read_response(method == "HEAD").await
    }

    async fn read_response(&mut self, head: bool) -> io::Result<u16> {
        // Status line and headers.
        let (status, header_len, framing, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(self.rbuf.data()) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = resp.code.unwrap_or(0);
                    let mut framing = Framing::UntilClose;
                    let mut close = resp.version == Some(0);
                    self.served_by.clear();
                    for h in resp.headers.iter() {
                        if self.record_served_by && h.name.eq_ignore_ascii_case("x-causalkv-served-by") {
                            self.served_by.extend_from_slice(h.value);
                        }
                        if h.name.eq_ignore_ascii_case("content-length") {
                            let len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .ok_or_else(|| bad("bad content-length"))?;
                            framing = Framing::Length(len);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                            if h.value.eq_ignore_ascii_case(b"chunked") {
                                framing = Framing::Chunked;
                            }
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = h.value.eq_ignore_ascii_case(b"close");
                        }
                    }
                    if head || status == 204 || status == 304 || (100..200).contains(&status) {
                        framing = Framing::Length(0);
                    }
                    break (status, n, framing, close);
                }
                Ok(httparse::Status::Partial) => self.fill().await?,
                Err(e) => return Err(bad(&format!("bad response: {e}"))),
            }
        };
        self.rbuf.consume(header_len);
        self.body.clear();
        match framing {
            Framing::Length(len) => {
                while self.rbuf.len() < len {
                    self.fill().await?;
                }
                self.body.extend_from_slice(&self.rbuf.data()[..len]);
                self.rbuf.consume(len);
            }
            Framing::Chunked => self.read_chunked().await?,
            Framing::UntilClose => {
                loop {
                    self.body.extend_from_slice(self.rbuf.data());
                    let n = self.rbuf.len();
                    self.rbuf.consume(n);
                    if self.rbuf.fill_from(&mut self.stream).await? == 0 {
                        break;
                    }
                }
                self.closed = true;
            }
        }
        if close {
            self.closed = true;
        }
        if status == 100 {
            // An interim answer: the real one follows.
            return Box::pin(self.read_response(head)).await;
        }
        Ok(status)
    }

    async fn read_chunked(&mut self) -> io::Result<()> {
        loop {
            let line = self.line().await?;
            let size_text = line.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers end with an empty line.
                while !self.line().await?.is_empty() {}
                return Ok(());
            }
            while self.rbuf.len() < size + 2 {
                self.fill().await?;
            }
            self.body.extend_from_slice(&self.rbuf.data()[..size]);
            self.rbuf.consume(size + 2);
        }
    }

    /// One CRLF-terminated line (without the CRLF).
    async fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.rbuf.data().windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.rbuf.data()[..pos]).into_owned();
                self.rbuf.consume(pos + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.fill_from(&mut self.stream).await? == 0 {
            self.closed = true;
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-response"));
        }
        Ok(())
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
