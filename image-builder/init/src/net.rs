//! Static network setup over rtnetlink, the same requests `ip link set up`, `ip addr add` and
//! `ip route add default` send. Minimal images have neither a DHCP client nor `ip`, so PID 1
//! does it. Messages are built as bytes here (safe code); `sys` only provides the socket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::IpAddr;

use crate::spec::{InterfaceSpec, NetworkSpec};
use crate::sys;

// From <linux/netlink.h>, <linux/rtnetlink.h>, <linux/if_addr.h>, <linux/if_link.h>, <net/if.h>.
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;
const IFF_UP: u32 = 0x1;
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Which step failed, on which interface, and the kernel's answer.
#[derive(Debug)]
pub struct NetError {
    pub interface: String,
    pub step: String,
    pub source: io::Error,
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interface {}: {}: {}",
            self.interface, self.step, self.source
        )
    }
}

impl std::error::Error for NetError {}

/// Brings up `lo`, then each listed interface: MTU, up, addresses, default routes.
pub fn setup(spec: &NetworkSpec) -> Result<(), NetError> {
    let mut nl = Netlink::open().map_err(|e| err("lo", "opening a netlink socket", e))?;
    let lo = sys::if_nametoindex("lo").map_err(|e| err("lo", "looking it up", e))?;
    nl.link_up(lo, None)
        .map_err(|e| err("lo", "setting it up", e))?;
    for iface in &spec.interfaces {
        configure(&mut nl, iface)?;
    }
    Ok(())
}

/// One console-log line per configured interface, e.g.
/// `eth0 up: 10.50.0.12/24 via 10.50.0.1, fd00:50::c/64`.
pub fn describe(iface: &InterfaceSpec) -> String {
    let mut parts = Vec::new();
    if let Some(net) = iface.ipv4 {
        parts.push(
            iface
                .gateway4
                .map_or_else(|| net.to_string(), |gw| format!("{net} via {gw}")),
        );
    }
    if let Some(net) = iface.ipv6 {
        parts.push(
            iface
                .gateway6
                .map_or_else(|| net.to_string(), |gw| format!("{net} via {gw}")),
        );
    }
    if parts.is_empty() {
        parts.push("no addresses".into());
    }
    format!("{} up: {}", iface.name, parts.join(", "))
}

fn err(interface: &str, step: impl Into<String>, source: io::Error) -> NetError {
    NetError {
        interface: interface.to_string(),
        step: step.into(),
        source,
    }
}

fn configure(nl: &mut Netlink, iface: &InterfaceSpec) -> Result<(), NetError> {
    let name = iface.name.as_str();
    let index = sys::if_nametoindex(name).map_err(|e| {
        let hint = if e.raw_os_error() == Some(libc::ENODEV) {
            io::Error::new(
                e.kind(),
                "no such interface in this container (is the NIC device attached?)",
            )
        } else {
            e
        };
        err(name, "looking it up", hint)
    })?;
    nl.link_up(index, iface.mtu)
        .map_err(|e| err(name, "setting it up", e))?;
    if let Some(net) = iface.ipv4 {
        nl.add_address(index, IpAddr::V4(net.addr), net.prefix)
            .map_err(|e| err(name, format!("adding address {net}"), e))?;
    }
    if let Some(net) = iface.ipv6 {
        nl.add_address(index, IpAddr::V6(net.addr), net.prefix)
            .map_err(|e| err(name, format!("adding address {net}"), e))?;
    }
    if let Some(gw) = iface.gateway4 {
        nl.add_default_route(index, IpAddr::V4(gw))
            .map_err(|e| err(name, format!("adding the default route via {gw}"), e))?;
    }
    if let Some(gw) = iface.gateway6 {
        nl.add_default_route(index, IpAddr::V6(gw))
            .map_err(|e| err(name, format!("adding the default route via {gw}"), e))?;
    }
    Ok(())
}

struct Netlink {
    sock: std::fs::File,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Self> {
        Ok(Netlink {
            sock: sys::netlink_route_socket()?,
            seq: 0,
        })
    }

    fn link_up(&mut self, index: u32, mtu: Option<u32>) -> io::Result<()> {
        let mut body = Vec::with_capacity(32);
        // struct ifinfomsg: family, pad, type, index, flags, change
        body.extend_from_slice(&[AF_UNSPEC, 0]);
        body.extend_from_slice(&0u16.to_ne_bytes());
        body.extend_from_slice(&(index as i32).to_ne_bytes());
        body.extend_from_slice(&IFF_UP.to_ne_bytes());
        body.extend_from_slice(&IFF_UP.to_ne_bytes());
        if let Some(mtu) = mtu {
            push_attr(&mut body, IFLA_MTU, &mtu.to_ne_bytes());
        }
        self.request(RTM_NEWLINK, 0, &body)
    }

    fn add_address(&mut self, index: u32, addr: IpAddr, prefix: u8) -> io::Result<()> {
        let (family, bytes) = family_bytes(addr);
        // IPv6 duplicate address detection would leave the address "tentative" for a second or
        // two after boot; the addresses are assigned by the installer, so skip it.
        let flags = if family == AF_INET6 { IFA_F_NODAD } else { 0 };
        let mut body = Vec::with_capacity(48);
        // struct ifaddrmsg: family, prefixlen, flags, scope, index
        body.extend_from_slice(&[family, prefix, flags, RT_SCOPE_UNIVERSE]);
        body.extend_from_slice(&index.to_ne_bytes());
        push_attr(&mut body, IFA_LOCAL, &bytes);
        push_attr(&mut body, IFA_ADDRESS, &bytes);
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    fn add_default_route(&mut self, index: u32, gateway: IpAddr) -> io::Result<()> {
        let (family, bytes) = family_bytes(gateway);
        let mut body = Vec::with_capacity(40);
        // struct rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
        body.extend_from_slice(&[
            family,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
        ]);
        body.extend_from_slice(&0u32.to_ne_bytes());
        push_attr(&mut body, RTA_GATEWAY, &bytes);
        push_attr(&mut body, RTA_OIF, &index.to_ne_bytes());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &body)
    }

    /// Sends one request with NLM_F_ACK and waits for its acknowledgement.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        self.seq += 1;
        let mut msg = Vec::with_capacity(16 + body.len());
        // struct nlmsghdr: len, type, flags, seq, pid (0: the kernel assigns ours)
        msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&kind.to_ne_bytes());
        msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(body);
        self.sock.write_all(&msg)?;
        self.wait_ack()
    }

    fn wait_ack(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = self.sock.read(&mut buf)?;
            let mut rest = &buf[..n];
            while rest.len() >= 16 {
                let len = u32::from_ne_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(rest[4..6].try_into().expect("2 bytes"));
                let seq = u32::from_ne_bytes(rest[8..12].try_into().expect("4 bytes"));
                if len < 16 || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed netlink reply",
                    ));
                }
                if kind == NLMSG_ERROR && seq == self.seq {
                    // struct nlmsgerr starts with a negative errno, or 0 for the ACK.
                    let code = rest
                        .get(16..20)
                        .map(|b| i32::from_ne_bytes(b.try_into().expect("4 bytes")));
                    return match code {
                        Some(0) => Ok(()),
                        Some(e) => Err(io::Error::from_raw_os_error(-e)),
                        None => Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "short netlink error reply",
                        )),
                    };
                }
                rest = &rest[align4(len).min(rest.len())..];
            }
        }
    }
}

fn family_bytes(addr: IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Appends one `struct rtattr` (len, type, payload, padding to 4 bytes).
fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + align4(len) - len, 0);
}
