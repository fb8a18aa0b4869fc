//! Sending IPFIX over UDP to the collectors (`--ipfix HOST:PORT`, one transport session each):
//! templates at the start and again every refresh interval (RFC 7011 section 8.4: UDP has no
//! other way to tell a collector that restarted), a sequence number per session, messages cut
//! to the path MTU the kernel knows for the collector, and every send and failed send counted.

use std::{
    net::{SocketAddr, ToSocketAddrs as _, UdpSocket},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use log::warn;

use super::{
    ipfix::{self, Context, MessageWriter},
    state::FlowDelta,
};

/// The export's counters, cumulative since the agent started.
#[derive(Debug, Default)]
pub struct IpfixStats {
    pub messages: AtomicU64,
    pub records: AtomicU64,
    /// Messages the kernel refused (the collector's port unreachable, a full socket buffer
    /// past the send timeout, no route), and the data records in them.
    pub failed_messages: AtomicU64,
    pub lost_records: AtomicU64,
}

/// One collector's transport session.
#[derive(Debug)]
struct Collector {
    name: String,
    socket: UdpSocket,
    v6: bool,
    /// Data records sent in this session (mod 2^32), the header's sequence number.
    sequence: u32,
    templates_sent: Option<Instant>,
    failing: bool,
}

/// The IPFIX side of the agent's export.
#[derive(Debug)]
pub struct IpfixExporter {
    collectors: Vec<Collector>,
    domain: u32,
    refresh: Duration,
    templates: Vec<u8>,
    writer: MessageWriter,
}

/// The most an IPFIX message can be (its length field is 16 bits).
const MAX_MESSAGE: usize = 65_535;
/// Used when the kernel knows no MTU for the path: what fits in an Ethernet frame over IPv6.
const FALLBACK_PAYLOAD: usize = 1500 - 40 - 8;

impl IpfixExporter {
    /// Resolves and connects a socket to each of `collectors` (`HOST:PORT`). `send_timeout`
    /// bounds a send that waits for room in the socket buffer.
    pub fn new(
        collectors: &[String],
        domain: u32,
        refresh: Duration,
        send_timeout: Duration,
    ) -> Result<Self> {
        let mut sessions = Vec::new();
        for name in collectors {
            let addr: SocketAddr = name
                .to_socket_addrs()
                .with_context(|| format!("--ipfix {name}: not a HOST:PORT that resolves"))?
                .next()
                .with_context(|| format!("--ipfix {name}: resolves to no address"))?;
            let local: SocketAddr = if addr.is_ipv6() {
                "[::]:0".parse()?
            } else {
                "0.0.0.0:0".parse()?
            };
            let socket = UdpSocket::bind(local)
                .and_then(|s| s.connect(addr).map(|()| s))
                .with_context(|| format!("--ipfix {name}: cannot open a UDP socket to {addr}"))?;
            socket
                .set_write_timeout(Some(send_timeout))
                .with_context(|| format!("--ipfix {name}: setting the send timeout"))?;
            sessions.push(Collector {
                name: format!("{name} ({addr})"),
                socket,
                v6: addr.is_ipv6(),
                sequence: 0,
                templates_sent: None,
                failing: false,
            });
        }
        if sessions.is_empty() {
            bail!("no IPFIX collector");
        }
        Ok(Self {
            collectors: sessions,
            domain,
            refresh,
            templates: ipfix::template_set(),
            writer: MessageWriter::new(MAX_MESSAGE, domain),
        })
    }

    /// The observation domain id in every message.
    #[must_use]
    pub fn domain(&self) -> u32 {
        self.domain
    }

    /// Sends `deltas` to every collector, `labels` their label names in the same order (empty
    /// for none). Templates go first when the refresh interval has passed (or never were sent),
    /// also with no delta to send.
    pub fn export(
        &mut self,
        deltas: &[FlowDelta],
        labels: &[String],
        context: &Context,
        stats: &IpfixStats,
    ) {
        let now = Instant::now();
        let export_time = u32::try_from(crate::clock::unix_ns() / 1_000_000_000).unwrap_or(0);
        for collector in &mut self.collectors {
            let max = path_payload(&collector.socket, collector.v6).min(MAX_MESSAGE);
            self.writer = MessageWriter::new(max, self.domain);
            let refresh = collector
                .templates_sent
                .is_none_or(|t| now.duration_since(t) >= self.refresh);
            let mut templates = refresh.then_some(self.templates.as_slice());
            if refresh {
                collector.templates_sent = Some(now);
            }
            let mut next = 0;
            while next < deltas.len() || templates.is_some() {
                let carries_templates = templates.is_some();
                self.writer
                    .start(export_time, collector.sequence, templates.take());
                while next < deltas.len() && self.writer.push(&deltas[next], &labels[next], context)
                {
                    next += 1;
                }
                let records = self.writer.records();
                if records == 0 && next < deltas.len() {
                    // A record larger than the path allows (labels are at most 60 bytes, so
                    // only a path under 600 bytes): counted as lost, never sent broken.
                    stats.lost_records.fetch_add(1, Ordering::Relaxed);
                    next += 1;
                    continue;
                }
                let message = self.writer.finish();
                // The sequence counts records the exporting process sent, delivered or not: a
                // collector sees a gap where a message was lost.
                collector.sequence = collector.sequence.wrapping_add(records);
                match collector.socket.send(message) {
                    Ok(_) => {
                        stats.messages.fetch_add(1, Ordering::Relaxed);
                        stats
                            .records
                            .fetch_add(u64::from(records), Ordering::Relaxed);
                        if collector.failing {
                            collector.failing = false;
                            warn!("IPFIX collector {} takes messages again", collector.name);
                        }
                    }
                    Err(e) => {
                        stats.failed_messages.fetch_add(1, Ordering::Relaxed);
                        stats
                            .lost_records
                            .fetch_add(u64::from(records), Ordering::Relaxed);
                        if !collector.failing {
                            collector.failing = true;
                            warn!(
                                "IPFIX collector {}: sending failed ({e}); records lost are \
                                 counted, the next sends try again",
                                collector.name
                            );
                        }
                        // The collector needs the templates: send them again next time.
                        if carries_templates {
                            collector.templates_sent = None;
                        }
                    }
                }
            }
        }
    }
}

/// The largest UDP payload the path to the connected peer takes without fragments, from the
/// MTU the kernel keeps for the route (IP_MTU, IPV6_MTU on a connected socket).
fn path_payload(socket: &UdpSocket, v6: bool) -> usize {
    let (level, name, header) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU, 40)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU, 20)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `mtu`, an int that outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&raw mut mtu).cast(),
            &raw mut len,
        )
    };
    match usize::try_from(mtu) {
        Ok(mtu) if rc == 0 && mtu > header + 8 => mtu - header - 8,
        _ => FALLBACK_PAYLOAD,
    }
}
