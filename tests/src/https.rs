//! A small HTTPS server for the tests (an MTA-STS policy host, say): one
//! answer for every request, changed at will, and a count of requests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A request as received.
#[derive(Clone, Debug)]
pub struct Request {
    /// The request line and the header fields.
    pub head: String,
    /// The body (as long as `Content-Length` said).
    pub body: Vec<u8>,
}

impl Request {
    /// The request line (`GET /path HTTP/1.1`).
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }
}

/// The answer: status, media type, body.
type Answer = (u16, String, String);

/// An HTTPS server on loopback.
#[derive(Debug)]
pub struct HttpsServer {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<Request>>>,
    hits: Arc<AtomicUsize>,
}

impl HttpsServer {
    /// Starts serving TLS with `config` on 127.0.0.1; answers 404 until
    /// `respond` says otherwise.
    pub async fn start(config: Arc<rustls::ServerConfig>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let answer = Arc::new(Mutex::new((404, "text/plain".to_owned(), "not found\n".to_owned())));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hits = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        {
            let (answer, requests, hits) = (Arc::clone(&answer), Arc::clone(&requests), Arc::clone(&hits));
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    let (acceptor, answer, requests, hits) = (
                        acceptor.clone(),
                        Arc::clone(&answer),
                        Arc::clone(&requests),
                        Arc::clone(&hits),
                    );
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let end = head
                            .windows(4)
                            .position(|w| w == b"\r\n\r\n")
                            .map_or(head.len(), |p| p + 4);
                        let text = String::from_utf8_lossy(&head[..end]).into_owned();
                        let length: usize = text
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse().ok())?
                            })
                            .unwrap_or(0)
                            .min(1 << 20);
                        let mut body = head[end..].to_vec();
                        while body.len() < length {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => body.extend_from_slice(&buf[..n]),
                            }
                        }
                        hits.fetch_add(1, Ordering::SeqCst);
                        requests
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(Request { head: text, body });
                        let (status, content_type, body) =
                            answer.lock().unwrap_or_else(PoisonError::into_inner).clone();
                        let location = if (300..400).contains(&status) {
                            "Location: https://elsewhere.test/\r\n"
                        } else {
                            ""
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
        }
        Ok(Self {
            addr,
            answer,
            requests,
            hits,
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers every later request with `status`, `content_type` and `body`.
    pub fn respond(&self, status: u16, content_type: &str, body: &str) {
        *self.answer.lock().unwrap_or_else(PoisonError::into_inner) =
            (status, content_type.to_owned(), body.to_owned());
    }

    /// How many requests it answered.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    /// The request lines it got (`GET /path HTTP/1.1`).
    pub fn requests(&self) -> Vec<String> {
        self.received().iter().map(|r| r.line().to_owned()).collect()
    }

    /// The requests it got.
    pub fn received(&self) -> Vec<Request> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}
