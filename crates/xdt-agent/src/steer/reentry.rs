//! The re-entry veth pair: the agent transmits a steered frame into the agent end, and the host
//! end hands it to the kernel stack as if it had arrived on a normal interface.
//!
//! The agent owns the pair: it creates it at start (replacing a pair left by an agent that was
//! killed), gives it the monitored interface's MTU, relaxes reverse-path filtering on the host
//! end only (the frames' sources are routed via the monitored interface, not this one), keeps
//! IPv6 addresses (and so router solicitations) off the agent end, and deletes the pair when it
//! stops.
//!
//! All of it goes over rtnetlink, the per-device settings too (IFLA_AF_SPEC), not through
//! /proc/sys/net: CAP_NET_ADMIN, which creating the pair needs anyway, is all it takes, and it
//! works where /proc/sys is read-only (every unprivileged container) or protected (systemd's
//! ProtectKernelTunables=).

use std::{fs, io};

use futures_util::TryStreamExt as _;
use log::{debug, info, warn};
use rtnetlink::{
    LinkUnspec, LinkVeth,
    packet_core::{DefaultNla, Emitable as _, NLA_F_NESTED},
    packet_route::link::{AfSpecInet, AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute},
};

/// A live pair; [`ReentryPair::remove`] deletes it.
#[derive(Debug)]
pub struct ReentryPair {
    /// Where the agent transmits.
    pub agent_end: String,
    /// Where frames enter the kernel stack.
    pub host_end: String,
    /// The host end's MAC: steered frames are rewritten to it so the stack takes them as its own.
    pub host_mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum ReentryError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("opening a netlink socket failed")]
    Socket(#[source] io::Error),
    #[error("{0} vanished, or lost the address it was given, right after it was created")]
    Vanished(String),
    #[error("{what} {path} failed")]
    Sysfs {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

/// The pair's names for the interface with index `ifindex` (at most 15 bytes).
#[must_use]
pub fn names(ifindex: u32) -> (String, String) {
    (format!("xdt{ifindex}a"), format!("xdt{ifindex}h"))
}

impl ReentryPair {
    /// Creates (or re-creates) the pair for the monitored interface `ifindex` with `mtu`.
    pub async fn create(ifindex: u32, mtu: u32) -> Result<Self, ReentryError> {
        let (agent_end, host_end) = names(ifindex);
        let host_mac = local_mac();
        let (connection, handle, _) = rtnetlink::new_connection().map_err(ReentryError::Socket)?;
        let task = tokio::spawn(connection);
        let result = async {
            if let Ok(stale) = nix::net::if_::if_nametoindex(agent_end.as_str()) {
                warn!("removing the re-entry pair {agent_end}/{host_end} of a previous agent");
                handle.link().del(stale).execute().await?;
            }
            handle
                .link()
                .add(LinkVeth::new(&agent_end, &host_end).mtu(mtu).build())
                .execute()
                .await?;
            // Before the links come up: no IPv6 addresses (so no duplicate address detection or
            // router solicitations) on the agent end, and no reverse-path check on the host end.
            let quiet = handle
                .link()
                .set(
                    LinkUnspec::new_with_name(&agent_end)
                        .append_extra_attribute(no_ipv6_addresses())
                        .build(),
                )
                .execute()
                .await;
            match quiet {
                Err(rtnetlink::Error::NetlinkError(e))
                    if e.code.is_some_and(|c| c.get().abs() == libc::EAFNOSUPPORT) =>
                {
                    debug!("no IPv6 on {agent_end}: nothing to keep quiet");
                }
                other => other?,
            }
            handle
                .link()
                .set(
                    LinkUnspec::new_with_name(&host_end)
                        .append_extra_attribute(rp_filter_off())
                        .build(),
                )
                .execute()
                .await?;
            // Both ends get addresses of ours: a veth's random address is fair game for udev's
            // MACAddressPolicy=persistent, which would replace the host end's after we read it
            // and send every re-injected frame to a MAC nobody has (seen in the VM test).
            for (name, mac) in [(&host_end, host_mac), (&agent_end, local_mac())] {
                handle
                    .link()
                    .set(
                        LinkUnspec::new_with_name(name)
                            .address(mac.to_vec())
                            .up()
                            .build(),
                    )
                    .execute()
                    .await?;
            }
            Ok::<_, ReentryError>(())
        }
        .await;
        task.abort();
        result?;
        let all = read_sysctl("/proc/sys/net/ipv4/conf/all/rp_filter");
        if all.as_deref().is_ok_and(|v| v.trim() != "0") {
            warn!(
                "net.ipv4.conf.all.rp_filter is {}: it overrides rp_filter=0 on {host_end}, so the \
                 stack may drop re-injected IPv4 packets; set it to 0 (per-device values still apply \
                 to every other interface)",
                all.as_deref().unwrap_or("?").trim()
            );
        }
        if link(&host_end).await?.and_then(|l| l.mac) != Some(host_mac) {
            return Err(ReentryError::Vanished(host_end.clone()));
        }
        info!("re-entry pair {agent_end} -> {host_end} (mtu {mtu}) is up");
        Ok(Self {
            agent_end,
            host_end,
            host_mac,
        })
    }

    /// Deletes the pair (both ends go with one delete).
    pub async fn remove(self) -> Result<(), ReentryError> {
        delete(&self.agent_end).await.map(drop)
    }
}

/// Deletes the re-entry pair an agent of `iface` left behind (a stop after the agent dropped
/// its capabilities leaves it to `xdt-agent --cleanup`). Returns the pair's agent end if there
/// was one.
pub async fn remove_left_behind(iface: &str) -> Result<Option<String>, ReentryError> {
    let Some(monitored) = link(iface).await? else {
        return Ok(None);
    };
    let (agent_end, _) = names(monitored.index);
    Ok(delete(&agent_end).await?.then_some(agent_end))
}

/// Deletes the link `name` (and so its veth peer); `false` if there is no such link.
async fn delete(name: &str) -> Result<bool, ReentryError> {
    let Ok(index) = nix::net::if_::if_nametoindex(name) else {
        return Ok(false);
    };
    let (connection, handle, _) = rtnetlink::new_connection().map_err(ReentryError::Socket)?;
    let task = tokio::spawn(connection);
    let result = handle.link().del(index).execute().await;
    task.abort();
    result?;
    Ok(true)
}

/// What the agent needs to know of a link. Read over netlink, not sysfs: /sys/class/net shows
/// the network namespace sysfs was mounted in, which need not be the agent's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub rx_queues: u32,
}

/// Looks `name` up; `None` if there is no such link.
pub async fn link(name: &str) -> Result<Option<Link>, ReentryError> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let (connection, handle, _) = rtnetlink::new_connection().map_err(ReentryError::Socket)?;
    let task = tokio::spawn(connection);
    let found = handle
        .link()
        .get()
        .match_name(name)
        .execute()
        .try_next()
        .await;
    task.abort();
    let message = match found {
        Ok(Some(m)) => m,
        Ok(None) => return Ok(None),
        Err(rtnetlink::Error::NetlinkError(e))
            if e.code.is_some_and(|c| c.get().abs() == libc::ENODEV) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let mut link = Link {
        index: message.header.index,
        mtu: 1500,
        mac: None,
        rx_queues: 1,
    };
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::NumRxQueues(n) => link.rx_queues = (*n).max(1),
            LinkAttribute::Address(bytes) => link.mac = bytes.as_slice().try_into().ok(),
            _ => {}
        }
    }
    if let Some(active) = active_rx_queues(name) {
        link.rx_queues = active;
    }
    Ok(Some(link))
}

/// Receive queues in use (ETHTOOL_GCHANNELS: rx + combined channels), which can be fewer than
/// the queues the device has (IFLA_NUM_RX_QUEUES); binding beyond them fails. `None` when the
/// driver does not report channels.
fn active_rx_queues(name: &str) -> Option<u32> {
    #[repr(C)]
    #[derive(Default)]
    struct EthtoolChannels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolChannels,
        _pad: [u8; 16],
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut channels = EthtoolChannels {
        cmd: ETHTOOL_GCHANNELS,
        ..EthtoolChannels::default()
    };
    let mut request = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &raw mut channels,
        _pad: [0; 16],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a datagram socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCETHTOOL with an ifreq whose data points at a live ethtool_channels.
    let rc = unsafe { libc::ioctl(fd, SIOCETHTOOL, &raw mut request) };
    // SAFETY: the socket opened above.
    unsafe { libc::close(fd) };
    let count = channels.rx_count + channels.combined_count;
    (rc == 0 && count > 0).then_some(count)
}

/// IFLA_AF_SPEC for the agent end: IPv6 address generation off (`ip link set X addrgenmode
/// none`), so the end gets no link-local address and sends nothing of its own.
fn no_ipv6_addresses() -> LinkAttribute {
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::None,
    )])])
}

/// IFLA_AF_SPEC for the host end: the IPv4 device setting rp_filter = 0, the one entry of
/// IFLA_INET_CONF. (netlink-packet-route's `DevConfRequest` leaves out every zero, so the nested
/// attribute is written here.)
fn rp_filter_off() -> LinkAttribute {
    const IFLA_INET_CONF: u16 = 1;
    const IPV4_DEVCONF_RP_FILTER: u16 = 8;
    let entry = DefaultNla::new(IPV4_DEVCONF_RP_FILTER, 0u32.to_ne_bytes().to_vec());
    let mut nested = vec![0; entry.buffer_len()];
    entry.emit(&mut nested);
    LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet(vec![AfSpecInet::Other(
        DefaultNla::new(IFLA_INET_CONF | NLA_F_NESTED, nested),
    )])])
}

fn read_sysctl(path: &str) -> Result<String, ReentryError> {
    fs::read_to_string(path).map_err(|source| ReentryError::Sysfs {
        what: "reading",
        path: path.to_owned(),
        source,
    })
}

/// A random, locally administered unicast MAC address.
fn local_mac() -> [u8; 6] {
    let random = crate::host::random_u64().to_ne_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&random[..6]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}
