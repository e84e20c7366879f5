//! Stand-ins for the gateway's outside world, for tests and benchmarks on loopback: a DNS
//! server answering from a table, and a connector that maps the addresses the gateway checked
//! (documentation addresses) to loopback servers and refuses everything else, so nothing is
//! ever dialled off the machine.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;

use tokio::net::{TcpStream, UdpSocket};

use super::proxy::{Connect, Dial};

/// Starts a DNS server on 127.0.0.1 answering A and AAAA questions from `table` with time to
/// live `ttl` seconds. A name with several answer lists gives the next list on each A question
/// (the last one repeats); other names get NXDOMAIN.
pub async fn dns_server(
    table: HashMap<String, Vec<Vec<IpAddr>>>,
    ttl: u32,
) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let addr = socket.local_addr()?;
    tokio::spawn(async move {
        let mut asked: HashMap<String, usize> = HashMap::new();
        let mut buf = [0u8; 1500];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            if let Some(reply) = answer(&buf[..n], &table, &mut asked, ttl) {
                let _ = socket.send_to(&reply, from).await;
            }
        }
    });
    Ok(addr)
}

fn answer(
    q: &[u8],
    table: &HashMap<String, Vec<Vec<IpAddr>>>,
    asked: &mut HashMap<String, usize>,
    ttl: u32,
) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    while *q.get(at)? != 0 {
        let len = q[at] as usize;
        labels.push(String::from_utf8_lossy(q.get(at + 1..at + 1 + len)?).to_lowercase());
        at += 1 + len;
    }
    let qtype = u16::from_be_bytes([*q.get(at + 1)?, *q.get(at + 2)?]);
    let question_end = at + 5;
    let name = labels.join(".");
    let answers: Vec<IpAddr> = match table.get(&name) {
        Some(lists) if !lists.is_empty() => {
            let list = if qtype == 1 {
                let i = asked.entry(name.clone()).or_insert(0);
                let list = lists[(*i).min(lists.len() - 1)].clone();
                *i += 1;
                list
            } else {
                lists[asked
                    .get(&name)
                    .copied()
                    .unwrap_or(1)
                    .saturating_sub(1)
                    .min(lists.len() - 1)]
                .clone()
            };
            list.into_iter()
                .filter(|ip| matches!((ip, qtype), (IpAddr::V4(_), 1) | (IpAddr::V6(_), 28)))
                .collect()
        }
        _ => Vec::new(),
    };
    let rcode = if table.contains_key(&name) { 0 } else { 3 };
    let mut r = Vec::new();
    r.extend_from_slice(q.get(..2)?);
    r.extend_from_slice(&[0x81, 0x80 | rcode, 0, 1]);
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(q.get(12..question_end)?);
    for ip in answers {
        r.extend_from_slice(&[0xc0, 12]);
        let (t, data) = match ip {
            IpAddr::V4(v4) => (1u16, v4.octets().to_vec()),
            IpAddr::V6(v6) => (28u16, v6.octets().to_vec()),
        };
        r.extend_from_slice(&t.to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&ttl.to_be_bytes());
        r.extend_from_slice(&(data.len() as u16).to_be_bytes());
        r.extend_from_slice(&data);
    }
    Some(r)
}

/// Maps checked addresses to loopback servers and records every address asked for.
pub struct MapConnector {
    pub map: HashMap<SocketAddr, SocketAddr>,
    pub asked: Mutex<Vec<SocketAddr>>,
    /// Dials to these addresses take this long first (a slow upstream).
    pub delays: HashMap<SocketAddr, std::time::Duration>,
}

impl MapConnector {
    pub fn new(map: HashMap<SocketAddr, SocketAddr>) -> Self {
        MapConnector {
            map,
            asked: Mutex::new(Vec::new()),
            delays: HashMap::new(),
        }
    }

    /// Dials to `address` wait `delay` before connecting.
    pub fn slow(mut self, address: SocketAddr, delay: std::time::Duration) -> Self {
        self.delays.insert(address, delay);
        self
    }

    pub fn asked(&self) -> Vec<SocketAddr> {
        self.asked.lock().map(|a| a.clone()).unwrap_or_default()
    }
}

impl Connect for MapConnector {
    fn connect(&self, address: SocketAddr) -> Dial<'_> {
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(address);
        }
        let target = self.map.get(&address).copied();
        let delay = self.delays.get(&address).copied();
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            match target {
                Some(t) if t.ip().is_loopback() => TcpStream::connect(t).await,
                _ => Err(std::io::Error::other("not a loopback test server")),
            }
        })
    }
}
