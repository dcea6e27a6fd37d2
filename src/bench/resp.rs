//! A minimal Redis (RESP2) client: one connection, `SET` and `GET`.

use std::io;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::buf::ReadBuf;

pub struct RespConn {
    stream: TcpStream,
    rbuf: ReadBuf,
    wbuf: Vec<u8>,
}

/// What a command answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`, an integer or a bulk string.
    Value,
    /// A nil bulk string (missing key).
    Nil,
    /// `-ERR ...`
    Error(String),
}

impl RespConn {
    pub async fn connect(addr: &str) -> io::Result<RespConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RespConn { stream, rbuf: ReadBuf::new(), wbuf: Vec::with_capacity(1024) })
    }

    pub async fn set(&mut self, key: &[u8], value: &[u8]) -> io::Result<Reply> {
        self.command(&[b"SET", key, value]).await
    }

    pub async fn get(&mut self, key: &[u8]) -> io::Result<Reply> {
        self.command(&[b"GET", key]).await
    }

    async fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        use std::io::Write as _;
        self.wbuf.clear();
        let _ = write!(self.wbuf, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(self.wbuf, "${}\r\n", a.len());
            self.wbuf.extend_from_slice(a);
            self.wbuf.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.wbuf).await?;
        self.reply().await
    }

    async fn reply(&mut self) -> io::Result<Reply> {
        let line = self.line().await?;
        let (kind, rest) = line.split_first().ok_or_else(|| bad("empty reply"))?;
        match kind {
            b'+' | b':' => Ok(Reply::Value),
            b'-' => Ok(Reply::Error(String::from_utf8_lossy(rest).into_owned())),
            b'$' => {
                let len: i64 = std::str::from_utf8(rest).ok().and_then(|t| t.parse().ok()).ok_or_else(|| bad("bad bulk length"))?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let need = len as usize + 2;
                while self.rbuf.len() < need {
                    self.fill().await?;
                }
                self.rbuf.consume(need);
                Ok(Reply::Value)
            }
            _ => Err(bad("unexpected reply type")),
        }
    }

    async fn line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            if let Some(pos) = self.rbuf.data().windows(2).position(|w| w == b"\r\n") {
                let line = self.rbuf.data()[..pos].to_vec();
                self.rbuf.consume(pos + 2);
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.fill_from(&mut self.stream).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"));
        }
        Ok(())
    }
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}
