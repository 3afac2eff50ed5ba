//! The PROXY protocol (HAProxy, versions 1 and 2): a TCP load balancer
//! sends the client's real address ahead of the client's own bytes. Read
//! byte-exact, so nothing that follows (SMTP, or a TLS ClientHello on an
//! implicit-TLS listener) is consumed; parsed with the `ppp` crate.

use std::net::SocketAddr;

use ppp::v1::{Addresses as V1Addresses, IPv4, IPv6};
use ppp::v2::{Addresses as V2Addresses, Command as V2Command};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
/// The most address and TLV octets a v2 header may carry here.
const V2_MAX_PAYLOAD: usize = 1024;

/// What a PROXY header said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    /// The client's address and the address it connected to.
    Client {
        /// The real client.
        source: SocketAddr,
        /// The address the client connected to.
        destination: SocketAddr,
    },
    /// A connection of the balancer's own (v2 LOCAL, v1 UNKNOWN, or a
    /// non-TCP family): the socket's addresses stand.
    Local,
}

// Both versions carry the same address types.
impl From<IPv4> for Proxied {
    fn from(a: IPv4) -> Self {
        Self::Client {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }
    }
}

impl From<IPv6> for Proxied {
    fn from(a: IPv6) -> Self {
        Self::Client {
            source: SocketAddr::new(a.source_address.into(), a.source_port),
            destination: SocketAddr::new(a.destination_address.into(), a.destination_port),
        }
    }
}

/// Why a header was refused; the connection is closed without a reply.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Reading failed or the peer closed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The first bytes are not a PROXY header.
    #[error("no PROXY protocol header")]
    Missing,
    /// The header is malformed.
    #[error("invalid PROXY header: {0}")]
    Invalid(String),
}

/// Reads one PROXY header, v1 or v2, from the start of `stream`.
pub async fn read_header(stream: &mut (impl AsyncRead + Unpin)) -> Result<Proxied, ProxyError> {
    let mut header = vec![0; 6];
    stream.read_exact(&mut header).await?;
    if header == b"PROXY " {
        read_v1(stream, header).await
    } else if V2_SIGNATURE.starts_with(&header) {
        read_v2(stream, header).await
    } else {
        Err(ProxyError::Missing)
    }
}

async fn read_v1(stream: &mut (impl AsyncRead + Unpin), mut header: Vec<u8>) -> Result<Proxied, ProxyError> {
    // One octet at a time up to the LF: the header is short, and reading
    // past it would swallow the client's first bytes.
    while !header.ends_with(b"\r\n") {
        if header.len() >= V1_MAX {
            return Err(ProxyError::Invalid("v1 header too long".into()));
        }
        header.push(stream.read_u8().await?);
    }
    let parsed = ppp::v1::Header::try_from(header.as_slice()).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    Ok(match parsed.addresses {
        V1Addresses::Tcp4(a) => Proxied::from(a),
        V1Addresses::Tcp6(a) => Proxied::from(a),
        V1Addresses::Unknown => Proxied::Local,
    })
}

async fn read_v2(stream: &mut (impl AsyncRead + Unpin), mut header: Vec<u8>) -> Result<Proxied, ProxyError> {
    header.resize(16, 0);
    stream.read_exact(&mut header[6..]).await?;
    if &header[..12] != V2_SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if length > V2_MAX_PAYLOAD {
        return Err(ProxyError::Invalid(format!("v2 header of {length} octets")));
    }
    header.resize(16 + length, 0);
    stream.read_exact(&mut header[16..]).await?;
    let parsed = ppp::v2::Header::try_from(header.as_slice()).map_err(|e| ProxyError::Invalid(e.to_string()))?;
    if parsed.command == V2Command::Local {
        return Ok(Proxied::Local);
    }
    Ok(match parsed.addresses {
        V2Addresses::IPv4(a) => Proxied::from(a),
        V2Addresses::IPv6(a) => Proxied::from(a),
        V2Addresses::Unspecified | V2Addresses::Unix(_) => Proxied::Local,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> (Result<Proxied, ProxyError>, Vec<u8>) {
        let mut input = bytes;
        let result = read_header(&mut input).await;
        (result, input.to_vec())
    }

    fn client(source: &str, destination: &str) -> Proxied {
        Proxied::Client {
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
        }
    }

    #[tokio::test]
    async fn reads_v1_without_consuming_what_follows() {
        let (result, rest) = parse(b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25\r\nEHLO x\r\n").await;
        assert_eq!(result.unwrap(), client("203.0.113.9:40000", "192.0.2.1:25"));
        assert_eq!(rest, b"EHLO x\r\n");
        let (result, _) = parse(b"PROXY TCP6 2001:db8::9 2001:db8::1 40000 25\r\n").await;
        assert_eq!(result.unwrap(), client("[2001:db8::9]:40000", "[2001:db8::1]:25"));
        let (result, _) = parse(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(result.unwrap(), Proxied::Local);
    }

    #[tokio::test]
    async fn reads_v2_without_consuming_what_follows() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([0x21, 0x11, 0, 12, 203, 0, 113, 9, 192, 0, 2, 1, 0x9c, 0x40, 0, 25]);
        bytes.extend(b"\x16\x03\x01");
        let (result, rest) = parse(&bytes).await;
        assert_eq!(result.unwrap(), client("203.0.113.9:40000", "192.0.2.1:25"));
        assert_eq!(rest, b"\x16\x03\x01");
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await.0.unwrap(), Proxied::Local);
    }

    #[tokio::test]
    async fn refuses_anything_else() {
        for bad in [
            &b"EHLO client.test\r\n"[..],
            b"PROXY TCP4 not-an-ip 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.9 192.0.2.1 40000 25 and much more text that goes on and on past the longest header allowed\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            b"PROXY",
        ] {
            assert!(parse(bad).await.0.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
