//! `DnsServer`: a real DNS server on loopback (UDP) answering from a zone
//! the test writes: MX, A, AAAA, TXT, PTR, null MX, NXDOMAIN for unknown
//! names and SERVFAIL where asked. Encoding and decoding use hickory-proto.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, PTR, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(Debug, Default)]
struct Zone {
    records: HashMap<(String, RecordType), Vec<RData>>,
    servfail: HashSet<String>,
    queries: Vec<(String, RecordType)>,
    /// The answers' TTL; 60 s when not set.
    ttl: Option<u32>,
}

/// The DNS server.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    task: JoinHandle<()>,
}

fn key(name: &str) -> String {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    format!("{name}.")
}

impl DnsServer {
    /// Starts a server on 127.0.0.1 with a free port and an empty zone.
    pub async fn start() -> Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await.context("binding the DNS server")?;
        let addr = socket.local_addr()?;
        let zone = Arc::new(Mutex::new(Zone::default()));
        let task = {
            let zone = Arc::clone(&zone);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok((n, peer)) = socket.recv_from(&mut buf).await {
                    if let Some(answer) = answer(&zone, &buf[..n]) {
                        let _ = socket.send_to(&answer, peer).await;
                    }
                }
            })
        };
        Ok(Self { addr, zone, task })
    }

    /// Its address, for `dns.nameservers`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn add(&self, name: &str, record_type: RecordType, data: RData) {
        let mut zone = self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        zone.records.entry((key(name), record_type)).or_default().push(data);
    }

    /// An MX record.
    pub fn mx(&self, domain: &str, preference: u16, exchange: &str) -> Result<()> {
        let exchange = Name::from_ascii(key(exchange))?;
        self.add(domain, RecordType::MX, RData::MX(MX::new(preference, exchange)));
        Ok(())
    }

    /// Removes the records of `record_type` at `name`.
    pub fn remove(&self, name: &str, record_type: RecordType) {
        let mut zone = self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        zone.records.remove(&(key(name), record_type));
    }

    /// The TTL of every answer from now on (60 s by default; 0 keeps
    /// resolvers from caching, for a test that changes records).
    pub fn ttl(&self, seconds: u32) {
        self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner).ttl = Some(seconds);
    }

    /// A null MX (RFC 7505): `0 .`.
    pub fn null_mx(&self, domain: &str) {
        self.add(domain, RecordType::MX, RData::MX(MX::new(0, Name::root())));
    }

    /// An A or AAAA record, by the address's family.
    pub fn address(&self, host: &str, ip: IpAddr) {
        match ip {
            IpAddr::V4(v4) => self.add(host, RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => self.add(host, RecordType::AAAA, RData::AAAA(AAAA(v6))),
        }
    }

    /// A TXT record of `text`, split into strings of at most 255 octets
    /// (a DKIM key is longer than one string may be).
    pub fn txt(&self, name: &str, text: &str) {
        let strings = text
            .as_bytes()
            .chunks(255)
            .map(|chunk| String::from_utf8_lossy(chunk).into_owned())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(strings)));
    }

    /// A PTR record for `ip`, in in-addr.arpa or ip6.arpa.
    pub fn ptr(&self, ip: IpAddr, target: &str) -> Result<()> {
        let name = Name::from(ip).to_ascii();
        let target = Name::from_ascii(key(target))?;
        self.add(&name, RecordType::PTR, RData::PTR(PTR(target)));
        Ok(())
    }

    /// Answers SERVFAIL for every query about `name`.
    pub fn servfail(&self, name: &str) {
        let mut zone = self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        zone.servfail.insert(key(name));
    }

    /// Stops answering SERVFAIL for `name`.
    pub fn heal(&self, name: &str) {
        let mut zone = self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        zone.servfail.remove(&key(name));
    }

    /// How many queries for `name` of `record_type` arrived.
    pub fn queries(&self, name: &str, record_type: RecordType) -> usize {
        let zone = self.zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = key(name);
        zone.queries
            .iter()
            .filter(|(n, t)| *n == name && *t == record_type)
            .count()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(zone: &Mutex<Zone>, packet: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(packet).ok()?;
    let query = request.queries.first()?.clone();
    let name = key(&query.name.to_ascii());
    let mut zone = zone.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    zone.queries.push((name.clone(), query.query_type));
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    if zone.servfail.contains(&name) {
        response.metadata.response_code = ResponseCode::ServFail;
    } else if let Some(records) = zone.records.get(&(name.clone(), query.query_type)) {
        for data in records {
            response.add_answer(Record::from_rdata(
                query.name.clone(),
                zone.ttl.unwrap_or(60),
                data.clone(),
            ));
        }
    } else if !zone.records.keys().any(|(n, _)| *n == name) {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response.to_vec().ok()
}
