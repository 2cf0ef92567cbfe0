//! A small synchronous rtnetlink client: one request, its replies, its ACK.
//! Blocking calls on a plain socket need no async runtime, which keeps the
//! library callable from any thread (a tokio worker included) and each
//! request at one sendto plus one or two recvs.
//!
//! A socket works in the network namespace it was created in; see
//! `netns.rs` for sockets in a container's namespace.

use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_MULTIPART, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    #[error("{op}: {source}")]
    Kernel { op: String, source: io::Error },
    #[error("netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("netlink reply to {op} could not be decoded: {msg}")]
    Decode { op: String, msg: String },
}

impl Error {
    /// The kernel's errno for a refused request.
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// What ADD/DEL/CHECK need to know about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub promisc: bool,
    /// `IFLA_MASTER`: the bridge a port belongs to.
    pub master: Option<u32>,
    /// `IFLA_LINK`: for a veth, the peer's index (in the peer's netns).
    pub peer: Option<u32>,
    /// `IFLA_LINK_NETNSID`: set when the peer is in another netns.
    pub peer_netnsid: Option<i32>,
    /// `IFLA_INFO_KIND` ("bridge", "veth"...).
    pub kind: Option<String>,
}

/// A route as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KernelRoute {
    pub dst: IpNet,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
}

/// A veth pair whose container end is created directly in another netns.
pub(crate) struct VethRequest<'a> {
    pub host_name: &'a str,
    pub host_mac: [u8; 6],
    pub peer_name: &'a str,
    pub peer_mac: [u8; 6],
    pub peer_netns: std::os::fd::BorrowedFd<'a>,
    pub master: u32,
    pub mtu: Option<u32>,
}

pub(crate) fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A NETLINK_ROUTE socket and its request sequence.
pub(crate) struct Netlink {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn open() -> Result<Netlink, Error> {
        Ok(Netlink::from_socket(new_socket().map_err(Error::Socket)?))
    }

    pub(crate) fn from_socket(sock: Socket) -> Netlink {
        Netlink {
            sock,
            seq: 0,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// Send one request and collect its replies until the ACK (or the end
    /// of a dump).
    fn exchange(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<Vec<RouteNetlinkMessage>, Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.sock
            .send_to(&out, &SocketAddr::new(0, 0), 0)
            .map_err(|e| Error::Kernel {
                op: op.into(),
                source: e,
            })?;

        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut replies = Vec::new();
        loop {
            self.buf.clear();
            let n = self.sock.recv(&mut self.buf, 0).map_err(|e| Error::Kernel {
                op: op.into(),
                source: e,
            })?;
            if n > self.buf.len() {
                return Err(Error::Decode {
                    op: op.into(),
                    msg: format!("reply of {n} bytes truncated"),
                });
            }
            let mut off = 0;
            while off < n {
                let len = NetlinkBuffer::new_checked(&self.buf[off..n])
                    .map_err(|e| Error::Decode {
                        op: op.into(),
                        msg: e.to_string(),
                    })?
                    .length() as usize;
                let chunk = &self.buf[off..off + len];
                off += (len + 3) & !3;
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(chunk).map_err(|e| Error::Decode {
                    op: op.into(),
                    msg: e.to_string(),
                })?;
                if msg.header.sequence_number != seq {
                    continue; // a late reply to an earlier request
                }
                let multipart = msg.header.flags & NLM_F_MULTIPART != 0;
                match msg.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(replies),
                        Some(code) => {
                            return Err(Error::Kernel {
                                op: op.into(),
                                source: io::Error::from_raw_os_error(-code.get()),
                            })
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => {
                        replies.push(m);
                        if !dump && !multipart && flags & NLM_F_ACK == 0 {
                            return Ok(replies);
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn ack(&mut self, op: &str, msg: RouteNetlinkMessage, flags: u16) -> Result<(), Error> {
        self.exchange(op, msg, NLM_F_ACK | flags).map(drop)
    }

    /// The link called `name`, if any.
    pub(crate) fn link_by_name(&mut self, name: &str) -> Result<Option<Link>, Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        self.get_link(&format!("look up link {name}"), msg)
    }

    /// The link with index `index`, if any.
    pub(crate) fn link_by_index(&mut self, index: u32) -> Result<Option<Link>, Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(&format!("look up link #{index}"), msg)
    }

    fn get_link(&mut self, op: &str, msg: LinkMessage) -> Result<Option<Link>, Error> {
        match self.exchange(op, RouteNetlinkMessage::GetLink(msg), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Create a bridge (down; bringing it up is a separate request).
    pub(crate) fn create_bridge(&mut self, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes
            .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.ack(
            &format!("create bridge {name}"),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Set flags and/or MTU of an existing link.
    pub(crate) fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        promisc: Option<bool>,
        mtu: Option<u32>,
    ) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        for (want, flag) in [(up, LinkFlags::Up), (promisc, LinkFlags::Promisc)] {
            if let Some(on) = want {
                msg.header.change_mask |= flag;
                if on {
                    msg.header.flags |= flag;
                }
            }
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.ack(&format!("set link #{index}"), RouteNetlinkMessage::SetLink(msg), 0)
    }

    /// Create a veth pair: the host end here, attached to `master`, the
    /// peer directly in `peer_netns` under its final name (no move and
    /// rename afterwards). Both ends are left down: asking for IFF_UP in
    /// the creating message fails with ENOTCONN on this kernel.
    pub(crate) fn create_veth(&mut self, req: &VethRequest<'_>) -> Result<(), Error> {
        use std::os::fd::AsRawFd;
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(req.peer_name.into()));
        peer.attributes.push(LinkAttribute::Address(req.peer_mac.to_vec()));
        peer.attributes.push(LinkAttribute::NetNsFd(req.peer_netns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(req.host_name.into()));
        msg.attributes.push(LinkAttribute::Address(req.host_mac.to_vec()));
        msg.attributes.push(LinkAttribute::Controller(req.master));
        if let Some(mtu) = req.mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            peer.attributes.push(LinkAttribute::Mtu(mtu));
        }
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ]));
        self.ack(
            &format!("create veth {} (peer {})", req.host_name, req.peer_name),
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Bring a bridge port up, setting its hairpin mode in the same request.
    pub(crate) fn set_port_up(&mut self, index: u32, hairpin: bool) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if hairpin {
            msg.attributes.push(LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
            ]));
        }
        // RTM_NEWLINK on an existing link (no NLM_F_CREATE) is a change
        // request that, unlike RTM_SETLINK, also applies port settings.
        self.ack(&format!("set up port #{index}"), RouteNetlinkMessage::NewLink(msg), 0)
    }

    pub(crate) fn delete_link(&mut self, index: u32) -> Result<(), Error> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack(&format!("delete link #{index}"), RouteNetlinkMessage::DelLink(msg), 0)
    }

    /// Add `addr` (address with prefix) to a link; `Ok(false)` if it was
    /// there. No duplicate address detection: the allocator guarantees
    /// uniqueness, and DAD would leave an IPv6 address unusable for a second.
    pub(crate) fn add_address(&mut self, index: u32, addr: IpNet) -> Result<bool, Error> {
        let ip = addr.addr();
        let mut msg = AddressMessage::default();
        msg.header.family = family(&ip);
        msg.header.prefix_len = addr.prefix_len();
        msg.header.index = index;
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if let IpNet::V4(v4) = addr {
            if v4.prefix_len() < 31 {
                msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
            }
        }
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
        match self.ack(
            &format!("add address {addr} to link #{index}"),
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Addresses of link `index`.
    pub(crate) fn addresses(&mut self, index: u32) -> Result<Vec<IpNet>, Error> {
        let msg = AddressMessage::default();
        let replies = self.exchange("list addresses", RouteNetlinkMessage::GetAddress(msg), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for m in replies {
            let RouteNetlinkMessage::NewAddress(a) = m else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            let ip = a.attributes.iter().find_map(|attr| match attr {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let ip = ip.or_else(|| {
                a.attributes.iter().find_map(|attr| match attr {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(net) = ip.and_then(|ip| IpNet::new(ip, a.header.prefix_len).ok()) {
                out.push(net);
            }
        }
        Ok(out)
    }

    /// Add a route in the main table.
    pub(crate) fn add_route(&mut self, dst: IpNet, gw: Option<IpAddr>, oif: u32) -> Result<(), Error> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(&dst.addr());
        msg.header.destination_prefix_length = dst.prefix_len();
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Boot;
        msg.header.scope = if gw.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        msg.header.kind = RouteType::Unicast;
        if dst.prefix_len() > 0 {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(dst.network())));
        }
        if let Some(gw) = gw {
            msg.attributes.push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        msg.attributes.push(RouteAttribute::Oif(oif));
        let via = gw.map(|g| format!(" via {g}")).unwrap_or_default();
        self.ack(
            &format!("add route {dst}{via}"),
            RouteNetlinkMessage::NewRoute(msg),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Routes of the main table, both families.
    pub(crate) fn routes(&mut self) -> Result<Vec<KernelRoute>, Error> {
        let mut out = Vec::new();
        for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = fam;
            for m in self.exchange("list routes", RouteNetlinkMessage::GetRoute(msg), NLM_F_DUMP)? {
                let RouteNetlinkMessage::NewRoute(r) = m else { continue };
                let mut table = u32::from(r.header.table);
                let (mut dst, mut gw, mut oif) = (None, None, None);
                for attr in &r.attributes {
                    match attr {
                        RouteAttribute::Destination(a) => dst = route_ip(a),
                        RouteAttribute::Gateway(a) => gw = route_ip(a),
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Table(t) => table = *t,
                        _ => {}
                    }
                }
                if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
                    continue;
                }
                let unspecified = if fam == AddressFamily::Inet {
                    IpAddr::from([0u8; 4])
                } else {
                    IpAddr::from([0u8; 16])
                };
                let Ok(dst) = IpNet::new(dst.unwrap_or(unspecified), r.header.destination_prefix_length) else {
                    continue;
                };
                out.push(KernelRoute { dst, gw, oif });
            }
        }
        Ok(out)
    }
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up),
        promisc: l.header.flags.contains(LinkFlags::Promisc),
        ..Default::default()
    };
    for attr in &l.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(a) => link.mac = format_mac(a),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Controller(m) => link.master = Some(*m),
            LinkAttribute::Link(p) => link.peer = Some(*p),
            LinkAttribute::LinkNetNsId(id) => link.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(k) = info {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// A bound NETLINK_ROUTE socket in the calling thread's netns.
pub(crate) fn new_socket() -> io::Result<Socket> {
    let mut sock = Socket::new(NETLINK_ROUTE)?;
    sock.bind_auto()?;
    // Extended ACKs make the kernel's refusals carry a reason; best effort.
    let _ = sock.set_ext_ack(true);
    Ok(sock)
}
